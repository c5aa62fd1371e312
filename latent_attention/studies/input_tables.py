"""The input-pipeline page's tables (docs/results/input_pipeline.md) from the raw JSON files of
scripts/benchmark_input.py, as studies/pages.py table files.

A raw file is {"command", "machine", "date", "wall_s", "rows"}: `rows` as bench/input.py's
`benchmark` (with ceilings) or `loop_vs_step` return them, one per case or config.
"""

import json
import statistics

TARGET = 10  # the target: the pipeline at >= 10x what one v5e chip consumes.
LOOP_TARGET = 1.03  # and the training loop within 3% of the blocked step.


def load(path: str) -> dict:
  with open(path) as f:
    raw = json.load(f)
  if not isinstance(raw, dict) or "rows" not in raw:
    raise ValueError(f"{path} is not a raw file of scripts/benchmark_input.py --output: "
                     "expected an object with 'rows'")
  return raw


def _meta(raw: dict, provenance: str) -> dict:
  return {"command": raw["command"], "machine": raw["machine"], "date": raw["date"],
          "provenance": f"{provenance}; wall time {raw['wall_s'] / 60:.1f} min"}


def _bound(row) -> str:
  """'yes' where the pipeline reaches the target, else the lower of this host's two ceilings
  where it is below the target (and the other where it is too)."""
  need = TARGET * row["v5e_examples_per_s"]
  if row["examples_per_s"] >= need:
    return "yes"
  below = sorted((row[key], label) for key, label in (
      ("grain_ceiling_examples_per_s", "Grain's per-record floor, at one record per batch"),
      ("gather_ceiling_examples_per_s", "the batch's bytes alone (this host's memory traffic)"))
      if row[key] < need)
  if not below:
    return "no: the pipeline's own work (within both ceilings)"
  return "no: " + "; and ".join(label for _, label in below)


def ceiling_table(raw: dict) -> dict:
  """Per case: the pipeline's rate against 10x a v5e chip's consumption and this host's two
  ceilings (bench/input.py `ceilings`), and what bounds it."""
  rows = [r for r in raw["rows"] if r["worker_count"] == 0]
  if not rows or "gather_ceiling_examples_per_s" not in rows[0]:
    raise ValueError("the raw file has no ceilings: run scripts/benchmark_input.py "
                     "--ceilings --output=FILE")
  return {
      **_meta(raw, "the rows of scripts/benchmark_input.py --output (worker_count 0), "
                   "docs/results/input_pipeline/raw/pipeline.json, by studies/input_tables.py"),
      "columns": ["case", "batch (per host)", "bytes / example", "pipeline (ex/s)",
                  "10 x one v5e chip (est., ex/s)", "Grain ceiling, a record per batch (ex/s)",
                  "gather-alone ceiling, all cores (ex/s)", "pipeline / v5e chip",
                  ">= 10x? (what bounds it)"],
      "align": ["left", "left", "right", "right", "right", "right", "right", "right", "left"],
      "format": [None, None, "{:,}", "{:,.0f}", "{:,.0f}", "{:,.0f}", "{:,.0f}", "{:.2f}x",
                 None],
      "rows": [[f"`{r['case']}`", " x ".join(map(str, r["batch"])), r["bytes_per_example"],
                r["examples_per_s"], TARGET * r["v5e_examples_per_s"],
                r["grain_ceiling_examples_per_s"], r["gather_ceiling_examples_per_s"],
                r["v5e_headroom"], _bound(r)] for r in rows]}


def loop_table(raw: dict) -> dict:
  """Per config: the loop's time per step over the blocked step's, round by round
  (bench/input.py `loop_vs_step`), their median, and whether it is within 3%."""
  out = []
  for r in raw["rows"]:
    rounds = r["rounds"]
    out.append([f"`{r['config']}`", len(rounds),
                ", ".join(f"{x['loop_over_blocked']:.3f}" for x in rounds),
                statistics.median(x["loop_step_ms"] for x in rounds),
                statistics.median(x["blocked_step_ms"] for x in rounds),
                r["loop_over_blocked"],
                ", ".join(f"{x['load_average']:.1f}" for x in rounds),
                "yes" if r["loop_over_blocked"] <= LOOP_TARGET else "no"])
  return {
      **_meta(raw, "the rows of scripts/benchmark_input.py --loop ... --output, "
                   "docs/results/input_pipeline/raw/loop.json, by studies/input_tables.py"),
      "columns": ["config", "rounds", "loop / blocked, per round", "loop ms/step (median)",
                  "blocked step ms (median)", "loop / blocked (median)",
                  "load average (1 min) per round", "<= 1.03?"],
      "align": ["left", "right", "left", "right", "right", "right", "left", "left"],
      "format": [None, None, None, "{:.1f}", "{:.1f}", "{:.3f}", None, None],
      "rows": out}
