"""Sweep results: results.csv (one row per run and seed), results.md and the figures.

With several seeds per run, results.md leads with one row per run: the mean ± standard deviation
(and n) of each quality metric over its seeds, the median step time, and the difference of the
mean to a reference run with its 95% confidence interval (Welch's t-test, `stats`).
"""

import csv
import os
import re

from latent_attention.plots import results as plots
from latent_attention.studies import stats
from latent_attention.training import metrics

QUALITIES = ("perplexity", "accuracy")


def check_quality(quality):
  if quality not in QUALITIES:
    raise ValueError(f"sweep quality={quality!r} is invalid: choose from {', '.join(QUALITIES)}")


# (row key = results.csv column, results.md header, format). Units are in the names.
COLUMNS = (
    ("name", "run", "{}"),
    ("seed", "seed", "{}"),
    ("kind", "attention", "{}"),
    ("sizes", "sizes", "{}"),
    ("mlp_dim", "F (MLP)", "{}"),
    ("params", "params", "{:,}"),
    ("eval_loss", "eval loss (nats)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("bits_per_char", "bits/char", "{:.4f}"),
    ("bits_per_token", "bits/token", "{:.4f}"),
    ("bits_per_byte", "bits/byte", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("kv_bytes_per_token", "KV bytes/token (measured)", "{:,.0f}"),
    ("kv_formula_bytes_per_token", "KV bytes/token (formula)", "{:,.0f}"),
    ("kv_vs_mha", "KV vs mha", "{:.3f}x"),
    ("step_time_ms", "step time (ms)", "{:.1f}"),
    ("tokens_per_s", "train tokens/s", "{:,.0f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("decode_tokens_per_s", "decode tokens/s", "{:,.0f}"),
    ("decode_ms_per_step", "decode ms/step (benchmark)", "{:.2f}"),
    ("decode_x_bound", "decode x bound", "{:.1f}x"),
    ("train_wall_s", "train wall (s)", "{:.0f}"),
    ("status", "status", "{}"),
    ("error", "error", "{}"),
)


def _natural(name):
  """Sort key putting m8 before m16."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _sorted_rows(rows) -> list[dict]:
  """Failed runs last, then by measured KV bytes per token, then by name; adds kv_vs_mha (the
  ratio to the run named mha)."""
  ok = [r for r in rows if r["status"] == "ok"]
  ref_kv = next((r.get("kv_bytes_per_token") for r in ok if r["name"] == "mha"), None)
  out = []
  for r in rows:
    r = {k: v for k, v in r.items() if k != "config"}
    kv = r.get("kv_bytes_per_token")
    r["kv_vs_mha"] = kv / ref_kv if kv is not None and ref_kv else None
    out.append(r)
  return sorted(out, key=lambda r: (r["status"] != "ok", r.get("kv_bytes_per_token") is None,
                                    r.get("kv_bytes_per_token") or 0, _natural(r["name"])))


def _eval_curve(run_dirs):
  """(steps, eval losses) of a run, averaged over its seeds' run dirs at the steps all share; a
  re-evaluated final step counts once."""
  by_step = []
  for d in run_dirs:
    by_step.append({m["step"]: m["loss"] for m in metrics.read_metrics(d) if m["split"] == "eval"})
  steps = sorted(set.intersection(*(set(b) for b in by_step))) if by_step else []
  return steps, [sum(b[s] for b in by_step) / len(by_step) for s in steps]


# The per-run table of a multi-seed sweep: (key, header, format); quality keys get mean ± std.
AGGREGATE_COLUMNS = (
    ("name", "run", "{}"),
    ("kind", "attention", "{}"),
    ("sizes", "sizes", "{}"),
    ("params", "params", "{:,}"),
    ("n", "seeds", "{}"),
    ("eval_loss", "eval loss (nats)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("bits_per_char", "bits/char", "{:.4f}"),
    ("bits_per_token", "bits/token", "{:.4f}"),
    ("bits_per_byte", "bits/byte", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("kv_bytes_per_token", "KV bytes/token", "{:,.0f}"),
    ("step_time_ms", "step time (ms, median)", "{:.1f}"),
    ("mfu", "MFU (median)", "{:.1%}"),
)


def _aggregate_lines(aggregated, quality, reference) -> list[str]:
  shown = [c for c in AGGREGATE_COLUMNS if any(
      r.get(c[0]) is not None or r.get(f"{c[0]}_mean") is not None for r in aggregated)]
  fmt = dict((k, f) for k, _, f in AGGREGATE_COLUMNS)[quality]
  lines = [f"## Per run: mean ± standard deviation over seeds", "",
           f"Difference: mean {quality} minus {reference}'s, with the 95% confidence interval of "
           "Welch's t-test (unequal variances); (n.s.): the interval contains 0.", "",
           "| " + " | ".join(h for _, h, _ in shown) + f" | {quality} vs {reference} |",
           "|" + "---|" * (len(shown) + 1)]
  for r in aggregated:
    cells = []
    for k, _, f in shown:
      if k in stats.QUALITY:
        mean = r.get(f"{k}_mean")
        cells.append("" if mean is None else stats.format_mean_std(mean, r.get(f"{k}_std"), f))
      else:
        cells.append("" if r.get(k) is None else f.format(r[k]))
    cells.append(stats.format_diff(r, fmt))
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return lines + [""]


def write_results(rows, workdir: str, title: str, quality: str = "perplexity",
                  reference: str | None = None) -> list[dict]:
  """Writes results.csv, results.md and the plots; returns the rows in table order.

  quality: perplexity or accuracy, the y axis of the KV-cache plot of LM runs and the metric
  runs are compared on when they have several seeds (against `reference`, default the first
  run). A row's `dir` is its run directory relative to `workdir` (default: its name).
  """
  check_quality(quality)
  sweep_order = list(dict.fromkeys(r["name"] for r in rows if r["status"] == "ok"))
  rows = _sorted_rows(rows)
  keys = [k for k, _, _ in COLUMNS]
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if r.get(k) is None else r[k] for k in keys} for r in rows)
  os.replace(tmp, os.path.join(workdir, "results.csv"))

  ok = [r for r in rows if r["status"] == "ok"]
  names = list(dict.fromkeys(r["name"] for r in ok))
  seeded = len(names) < len(ok)  # some run has several seeds.
  per_run = ok
  if seeded:
    if reference not in names:  # none given, or it has no finished seed: the sweep's first.
      reference = sweep_order[0]
    order = [r["name"] for r in rows]  # the table's order, not the sweep file's.
    per_run = stats.aggregate(sorted(ok, key=lambda r: order.index(r["name"])), reference,
                              quality)
    for r in per_run:  # plots read the means, with the standard deviation as error bar.
      for k in stats.QUALITY:
        if r.get(f"{k}_mean") is not None:
          r[k] = r[f"{k}_mean"]
  figures = []
  lm = [r for r in per_run if r.get("perplexity") is not None and r.get("kv_bytes_per_token")]
  if lm:
    figures.append((f"{quality} vs KV cache", "pareto.png"))
    plots.quality_vs_cache(lm, os.path.join(workdir, figures[-1][1]), quality)
  elif ok:
    figures.append(("accuracy", "accuracy.png"))
    plots.accuracy_per_run(per_run, os.path.join(workdir, figures[-1][1]))
  if ok:
    dirs = {}
    for r in ok:
      dirs.setdefault(r["name"], []).append(os.path.join(workdir, r.get("dir", r["name"])))
    curves = {name: _eval_curve(d) for name, d in dirs.items()}
    figures += [("eval loss", "loss_curves.png"), ("speed", "speed.png")]
    plots.loss_curves(curves, os.path.join(workdir, "loss_curves.png"))
    plots.speed_bars(per_run, os.path.join(workdir, "speed.png"))

  # Markdown leaves out the columns that no run fills (e.g. perplexity for a classifier).
  shown = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
  if not seeded:
    shown = [c for c in shown if c[0] != "seed"]
  splits = sorted({r["eval_split"] for r in ok})
  kv = (" KV bytes: the decode cache after prefilling data.seq_len tokens." if lm else "")
  lines = [f"# Sweep {title}", "",
           f"{len(ok)} of {len(rows)} runs finished. Eval split: {', '.join(splits) or '-'}.{kv} "
           "Step time: median jitted train step after warm-up (docs/design.md, Measurements).", ""]
  if seeded:
    lines += _aggregate_lines(per_run, quality, reference) + ["## Per seed", ""]
  lines += ["| " + " | ".join(h for _, h, _ in shown) + " |", "|" + "---|" * len(shown)]
  for r in rows:
    cells = ["" if r.get(k) is None else fmt.format(r[k]).replace("|", "\\|")
             for k, _, fmt in shown]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", *(f"![{what}]({png})" for what, png in figures)]
  tmp = os.path.join(workdir, "results.md.tmp")
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, os.path.join(workdir, "results.md"))
  return rows
