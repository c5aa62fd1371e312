"""`scripts/sweep.py --preflight=TARGET`: every run of a sweep compiled for a TPU slice or GPU node
on this CPU (bench/preflight.py) instead of trained, in one table beside the usual results.

Per run: whether its train step fits, its peak HBM per chip, the roofline step time and MFU
estimates and, with `find_batch`, the largest global batch whose train step fits. The table goes
to <workdir>/preflight_<target>.json (rows and the command's facts) and .md.
"""

import json
import os
import time

from absl import logging

from latent_attention import config_files
from latent_attention.bench import preflight
from latent_attention.studies import sweep as sweep_lib
from latent_attention.studies.pages import render_table

COLUMNS = ("run", "kind", "global batch", "fits", "peak GiB / chip", "HBM GiB / chip",
           "est. ms / step", "est. MFU (%)", "max batch")


def run(sweep_spec: str, target: str, workdir: str, runlocal: bool = False,
        only: list[str] | None = None, find_batch: bool = False) -> dict:
  """Compiles each run's train step for `target`; returns and writes the table."""
  sweep = config_files.load(sweep_spec)
  runs, _, jobs = sweep_lib.plan(sweep, runlocal, only)
  os.makedirs(workdir, exist_ok=True)
  rows, start = [], time.perf_counter()
  for name, _ in jobs:
    config = sweep_lib.make_config(sweep, runs[name], runlocal)
    (report,) = preflight.compile_config(config, target, steps=("train",))
    best = preflight.find_batch(config, target)[0] if find_batch else None
    logging.info("%s: %s", name, report.line())
    rows.append([
        name, config.model.attention.kind, report.batch, "yes" if report.fits else "no",
        report.peak_bytes / 2**30, report.hbm_capacity_bytes / 2**30,
        report.est_step_s * 1e3 if report.fits else None,
        report.est_mfu * 100 if report.fits else None,
        best if find_batch else (None if report.fits else report.message)])
  table = {
      "command": f"scripts/sweep.py --sweep={sweep_spec} --preflight={target}"
                 + (" --runlocal" if runlocal else "") + (" --find_batch" if find_batch else ""),
      "machine": os.uname().nodename + f", {os.cpu_count()} CPU cores (compile only)",
      "date": time.strftime("%Y-%m-%d"),
      "provenance": f"bench/preflight.py: train steps compiled for {target}; wall "
                    f"{time.perf_counter() - start:.0f} s",
      "columns": list(COLUMNS), "align": [None, None] + ["right"] * 7,
      "format": [None, None, "{:,}", None, "{:.2f}", "{:.2f}", "{:.1f}", "{:.1f}", "{:,}"],
      "rows": rows,
  }
  path = os.path.join(workdir, f"preflight_{target.replace(':', '_')}")
  with open(path + ".json", "w") as f:
    json.dump(table, f, indent=1)
  with open(path + ".md", "w") as f:
    f.write(markdown(table))
  return table


def markdown(table: dict) -> str:
  return f"{table['command']}\n\n{render_table(table)}\n"
