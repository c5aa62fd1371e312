"""Tables of docs/results/preflight.md built from the committed pre-flight reports in
docs/results/preflight/raw/ (scripts/preflight.py --json), as studies/pages.py table files.

  python -c "from latent_attention.studies import preflight_tables as t; \
      t.write_fsdp_table(machine='...', date='...')"
"""

import glob
import json
import os
import re

from latent_attention.bench.preflight import format_collectives
from latent_attention.studies import pages

_PUB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "docs", "results", "preflight")
GIB = 2 ** 30


def fsdp_table(raw_dir: str = os.path.join(_PUB, "raw"), target: str = "v5e:2x4",
               machine: str = "", date: str = "") -> dict:
  """The train step per `train.fsdp` from raw/fsdp<F>_<target>.json: memory per chip, the
  roofline step time and the collectives."""
  name = target.replace(":", "_")
  paths = glob.glob(os.path.join(raw_dir, f"fsdp*_{name}.json"))
  if not paths:
    raise ValueError(f"no raw/fsdp<F>_{name}.json in {raw_dir}: run scripts/preflight.py "
                     f"--target={target} --fsdp=F --json=...")
  rows, meta = [], None
  for fsdp, path in sorted((int(re.search(r"fsdp(\d+)_", p).group(1)), p) for p in paths):
    with open(path) as f:
      raw = json.load(f)
    (train,) = [s for s in raw["steps"] if s["step"] == "train"]
    meta = meta or raw
    rows.append([fsdp, train["argument_bytes"] / GIB, train["temp_bytes"] / GIB,
                 train["peak_bytes"] / GIB, train["est_step_s"] * 1e3,
                 format_collectives(train["collectives"], "{:,.0f}")])
  hbm = f"{meta['steps'][0]['hbm_capacity_bytes'] / GIB:.0f}"
  return {
      "command": f"python scripts/preflight.py --config=configs/lm1b.py:mla,synthetic "
                 f"--target={target} --fsdp=F --json=raw/fsdpF_{name}.json, F = "
                 + ", ".join(str(r[0]) for r in rows),
      "machine": machine, "date": date,
      "provenance": "the train step of each raw file, per chip, global batch "
                    f"{meta['steps'][0]['batch']}; built by studies/preflight_tables.py",
      "columns": ["fsdp", "arguments GiB", "temporaries GiB", f"peak GiB (of {hbm})",
                  "est. ms / step", "collectives (per chip)"],
      "align": ["right", "right", "right", "right", "right", "left"],
      "format": [None, "{:.2f}", "{:.2f}", "{:.2f}", "{:.1f}", None],
      "rows": rows}


def write_fsdp_table(machine: str, date: str, output_dir: str = _PUB) -> list:
  return pages.write_tables(output_dir, {"fsdp_v5e_2x4": fsdp_table(machine=machine,
                                                                    date=date)})
