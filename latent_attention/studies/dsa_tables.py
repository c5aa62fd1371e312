"""The DSA study's results tables (configs/sweeps/dsa.py; docs/results/dsa.md) from the sweep's
result.json files and the decode benchmark's decode.json, as studies/pages.py table files.

Perplexity is the mean ± std over seeds with the 95% confidence interval of its difference
from dense MLA (Welch, studies/stats.py) and from the run's control seed by seed (paired: dense
MLA, or for a converted run the dense run trained as many steps more); bytes read per decode
step follow from each run's config (models/kv_cache.py's `decode_read_bytes`: DSA reads every
indexer key and the latents of top_k positions), at the study's context and at 8k.
"""

import dataclasses
import glob
import json
import os

from latent_attention.models import parse_config
from latent_attention.models.kv_cache import decode_read_bytes, kv_cache_formula_bytes
from latent_attention.studies import stats

READ_CONTEXTS = (1024, 8192)  # contexts of the bytes-read columns.


def sweep_rows(workdir: str) -> list[dict]:
  """The sweep's finished rows (each with its config), in run then seed order."""
  rows = []
  for path in sorted(glob.glob(os.path.join(workdir, "*", "seed*", "result.json"))):
    with open(path) as f:
      rows.append(json.load(f))
  order = {"dense": 0, "scratch": 1, "warmup": 2, "continued": 3, "convert": 4}
  return sorted(rows, key=lambda r: (order.get(r["name"].split("_")[0], 9),
                                     -_topk(r), r.get("seed") or 0))


def _topk(row) -> int:
  return row["config"]["model"]["attention"].get("index_topk", 0)


def _training(row) -> str:
  att = row["config"]["model"]["attention"]
  if not att.get("index_topk"):
    return ("dense MLA, the dense run trained on (control of (b))"
            if row["config"]["train"].get("init_from") else "dense MLA")
  if att.get("index_mode") == "dense_warmup":
    return "warm-up: dense attention, main frozen, indexer by KL (a)"
  if row["config"]["train"].get("init_from"):
    return "converted: warm-up, then sparse training (b)"
  return "DSA from scratch"


def _control(name: str, names) -> str | None:
  """The run a run is compared with seed by seed: stage (b)'s control for a converted run (the
  dense run trained as many steps more), dense MLA for the others."""
  if name == "dense":
    return None
  return "continued" if name.startswith("convert") and "continued" in names else "dense"


def _paired_cells(name: str, by_seed: dict) -> list:
  """[control, 'diff [95% CI]'] of `name` against its control over the seeds both ran."""
  control = _control(name, by_seed)
  if control is None or control not in by_seed:
    return ["", ""]
  seeds = sorted(set(by_seed[name]) & set(by_seed[control]))
  cmp = stats.paired([by_seed[name][s] for s in seeds], [by_seed[control][s] for s in seeds])
  return [control, stats.format_diff({**cmp, "name": name, "reference": control}, "{:.3f}")]


def quality_table(workdir: str, command: str, machine: str, date: str) -> dict:
  """Perplexity (with its CI against dense), KV bytes and bytes read per decode step per run."""
  rows = [r for r in sweep_rows(workdir) if r.get("status") == "ok"]
  if not rows:
    raise ValueError(f"{workdir} holds no finished run of the DSA sweep (configs/sweeps/dsa.py)")
  by_name, by_seed = {}, {}
  for r in rows:
    by_name.setdefault(r["name"], r)
    by_seed.setdefault(r["name"], {})[r.get("seed") or 0] = r["perplexity"]
  table_rows = []
  for agg in stats.aggregate(rows, reference="dense", metric="perplexity"):
    first = by_name[agg["name"]]
    cfg = first["config"]
    model = parse_config(cfg["model"])
    t, k = cfg["data"]["seq_len"], _topk(first)
    reads = [decode_read_bytes(model, c, 1) for c in READ_CONTEXTS]
    dense = dataclasses.replace(model, attention=dataclasses.replace(model.attention,
                                                                     index_topk=0))
    dense_reads = [kv_cache_formula_bytes(dense, c, 1) for c in READ_CONTEXTS]
    sparse = k and first["config"]["model"]["attention"].get("index_mode") != "dense_warmup"
    table_rows.append([
        agg["name"], _training(first),
        (f"{k} (T/{t // k})" if k < t else f"{k} (>= T)") if sparse else "all",
        cfg["train"]["num_steps"], agg["n"],
        stats.format_mean_std(agg["perplexity_mean"], agg["perplexity_std"], "{:.3f}"),
        stats.format_diff(agg, "{:.3f}"),
        *_paired_cells(agg["name"], by_seed),
        int(first["kv_formula_bytes_per_token"]),
        *[f"{r / 1024:,.0f} ({r / d:.0%})" if sparse else f"{d / 1024:,.0f}"
          for r, d in zip(reads, dense_reads)],
        agg.get("step_time_ms")])
  return {
      "command": command, "machine": machine, "date": date,
      "provenance": "each run's result.json in the sweep's workdir (scripts/sweep.py; the "
                    "published study's in docs/results/dsa/raw/), aggregated by "
                    "studies/dsa_tables.py",
      "columns": ["run", "training", "top_k of T", "steps", "seeds",
                  "perplexity (mean ± std)", "Δ vs dense [95% CI, Welch]", "control",
                  "Δ vs control, paired by seed [95% CI]", "KV bytes / token",
                  "KiB read / decode step at 1k (of dense MLA's)",
                  "KiB read / decode step at 8k (of dense MLA's)", "train step (ms, median)"],
      "align": ["left", "left", "right", "right", "right", "right", "right", "left", "right",
                "right", "right", "right", "right"],
      "format": [None, None, None, None, None, None, None, None, None, "{:,}", None, None,
                 "{:.0f}"],
      "rows": table_rows}


def decode_table(decode_json: str, command: str, machine: str, date: str) -> dict:
  """Decode speed of dense absorbed MLA and DSA (mla_sparse) from bench/decode.py's JSON."""
  with open(decode_json) as f:
    result = json.load(f)
  rows = [r for r in result["rows"] if r["variant"] in ("mla_absorbed", "mla_sparse")]
  if not rows:
    raise ValueError(f"{decode_json} has no mla_absorbed or mla_sparse row: run "
                     "scripts/benchmark_decode.py --variants=mla_absorbed,mla_sparse")
  return {
      "command": command, "machine": machine, "date": date,
      "provenance": f"{os.path.basename(decode_json)} of scripts/benchmark_decode.py "
                    f"(read bandwidth {result['read_bandwidth_gb_per_s']:.1f} GB/s measured)",
      "columns": ["variant", "context", "batch", "decode ms / step", "tokens / s",
                  "cache bytes / token", "MiB read / step (weights included)", "x bound"],
      "align": ["left", "right", "right", "right", "right", "right", "right", "right"],
      "format": [None, "{:,}", None, "{:.2f}", "{:,.0f}", "{:,.0f}", "{:.1f}", "{:.1f}"],
      "rows": [[r["variant"], r["context"], r["batch"], r["decode_ms_per_step"],
                r["decode_tokens_per_s"], r["cache_bytes_per_token"],
                r["bytes_read_per_step"] / 2**20, r["times_bound"]] for r in rows]}
