"""Figures (PNG): of sweeps, perplexity or accuracy vs KV cache, eval-loss curves, accuracy and
speed bars; of one run, its learning curve.

Built on `matplotlib.figure.Figure` (Agg canvas), so they never touch pyplot's global state or a
display. Each takes the table rows of finished runs (see `studies.sweep`).
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

DPI = 120


def pareto_front(points, lower_is_better=True):
  """The (cost, quality) points that no point of smaller or equal cost beats, by cost."""
  sign = 1 if lower_is_better else -1
  front, best = [], float("inf")
  for x, y in sorted(points, key=lambda p: (p[0], sign * p[1])):  # Equal cost: best first.
    if sign * y < best:
      front.append((x, y))
      best = sign * y
  return front


def quality_vs_cache(rows, path: str, metric: str = "perplexity") -> None:
  """`metric` (perplexity: lower is better; accuracy: higher) vs KV-cache bytes per token (log
  x), points labelled, the Pareto front dashed and ringed; rows with `<metric>_std` (several
  seeds: the metric is their mean) get that standard deviation as error bars."""
  points = sorted((r["kv_bytes_per_token"], r[metric], r["name"]) for r in rows)
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], zorder=3)
  bars = [(r["kv_bytes_per_token"], r[metric], r[f"{metric}_std"]) for r in rows
          if r.get(f"{metric}_std") is not None]
  if bars:
    ax.errorbar(*zip(*bars), fmt="none", ecolor="C0", capsize=3, zorder=3,
                label="± 1 std over seeds")
  front = pareto_front([(x, y) for x, y, _ in points], lower_is_better=metric == "perplexity")
  # Front points ringed: a front of one point (one run dominates) has no line to show.
  ax.plot([x for x, _ in front], [y for _, y in front], "--o", color="gray", zorder=2,
          markersize=11, markerfacecolor="none", label="Pareto front")
  ax.set_xscale("log")
  ax.margins(x=0.15)  # room for the labels of the outermost points.
  ax.set_xlabel("KV-cache bytes per token (measured, all layers)")
  ax.set_ylabel(f"{metric} (eval split)")
  ax.set_title("Quality vs KV cache")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  place_labels(fig, ax, points)
  fig.savefig(path, dpi=DPI)


# Offsets (points) tried in turn for a label: right of the point, above, then below, further
# out, then left of it.
_LABEL_SPOTS = ((4, 4), (4, -12), (4, 14), (4, -22), (-4, 4), (-4, -12), (4, 24), (4, -32))


def place_labels(fig, ax, points) -> list:
  """Labels each (x, y, name) at the first spot of _LABEL_SPOTS whose box overlaps no label
  placed before (points at close cost and quality had overlapping names); returns the texts."""
  renderer, boxes, texts = FigureCanvasAgg(fig).get_renderer(), [], []
  fig.draw_without_rendering()  # the final limits and layout: boxes in display units.
  for x, y, name in points:
    for i, (dx, dy) in enumerate(_LABEL_SPOTS):
      text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points",
                         fontsize=8, ha="left" if dx > 0 else "right")
      box = text.get_window_extent(renderer)
      if i == len(_LABEL_SPOTS) - 1 or not any(box.overlaps(b) for b in boxes):
        break
      text.remove()
    boxes.append(box)
    texts.append(text)
  return texts


def accuracy_per_run(rows, path: str) -> None:
  """Eval accuracy per run (classifier sweeps), in table order: points, not bars, so that the
  y axis can zoom in on differences of tenths of a percent; runs with seeds get their standard
  deviation as error bars."""
  fig = Figure(figsize=(max(5, 0.8 * len(rows) + 2), 4), layout="constrained")
  ax = fig.subplots()
  names, acc = [r["name"] for r in rows], [r["accuracy"] for r in rows]
  ax.errorbar(names, acc, yerr=[r.get("accuracy_std") or 0.0 for r in rows], fmt="o",
              capsize=3)
  for name, a in zip(names, acc):
    ax.annotate(f"{a:.4f}", (name, a), textcoords="offset points", xytext=(0, 7),
                ha="center", fontsize=8)
  ax.margins(y=0.25)
  ax.grid(True, axis="y", alpha=0.3)
  ax.set_ylabel("accuracy (eval split)")
  ax.set_title("Accuracy per run")
  ax.tick_params(axis="x", labelrotation=30)
  fig.savefig(path, dpi=DPI)


def loss_curves(curves: dict, path: str) -> None:
  """Eval loss vs step of every run on one figure; `curves` maps name -> (steps, losses)."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  for name, (steps, losses) in curves.items():
    ax.plot(steps, losses, marker="o", markersize=3, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("eval loss (nats)")
  ax.set_title("Eval loss during training")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=DPI)


def speed_bars(rows, path: str) -> None:
  """Median train-step time and (LMs) decode tokens/s per run, in table order."""
  panels = [("step_time_ms", "train step time (ms)")]
  if any(r.get("decode_tokens_per_s") for r in rows):
    panels.append(("decode_tokens_per_s", "decode tokens/s (batch 1)"))
  fig = Figure(figsize=(max(6, 0.7 * len(rows) + 2) * len(panels), 4), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  names = [r["name"] for r in rows]
  for ax, (key, label) in zip(axes, panels):
    bars = ax.bar(names, [r.get(key) or 0.0 for r in rows])
    ax.bar_label(bars, fmt="%.0f" if key == "decode_tokens_per_s" else "%.1f", fontsize=8)
    ax.set_title(label)
    ax.tick_params(axis="x", labelrotation=30)
  fig.savefig(path, dpi=DPI)


def learning_curve(lines, path: str) -> None:
  """One run's metrics.jsonl lines: loss and accuracy vs step, train windows and evaluations,
  with the wall time since the first line on a second x axis."""
  series = {split: [m for m in lines if m.get("split") == split] for split in ("train", "eval")}
  if not series["train"] and not series["eval"]:
    raise ValueError("no train or eval lines in metrics.jsonl: nothing to plot")
  start = min(m["time"] for m in lines if "time" in m)
  panels = [("loss", "loss (nats)")]
  if any("accuracy" in m for m in series["eval"]):
    panels.append(("accuracy", "accuracy"))
  fig = Figure(figsize=(6 * len(panels), 4.5), layout="constrained")
  for ax, (key, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
    for split, style in (("train", "-"), ("eval", "o-")):
      points = [(m["step"], m[key]) for m in series[split] if key in m]
      if points:
        ax.plot(*zip(*points), style, markersize=4, label=split)
    last = [m for m in series["eval"] if key in m][-1:]
    if last:
      ax.annotate(f"{last[0][key]:.4g}", (last[0]["step"], last[0][key]), fontsize=8,
                  textcoords="offset points", xytext=(-10, 8 if key == "accuracy" else -14))
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    timed = sorted((m["step"], m["time"] - start) for m in lines if "time" in m)
    if len(timed) > 1 and timed[-1][0] > timed[0][0]:
      steps, secs = np.array(timed, dtype=float).T
      top = ax.secondary_xaxis("top", functions=(
          lambda s, steps=steps, secs=secs: np.interp(s, steps, secs) / 60,
          lambda t, steps=steps, secs=secs: np.interp(t * 60, secs, steps)))
      ticks = MaxNLocator(6).tick_values(0, secs[-1] / 60)
      top.set_xticks(ticks[ticks <= secs[-1] / 60])  # past the last line it would clamp.
      top.set_xlabel("minutes since the first metrics line")
  fig.savefig(path, dpi=DPI)


def perplexity_vs_context(rows, path: str) -> None:
  """Perplexity vs evaluation context (log2 x), one colour per run, solid as trained, dashed
  with YaRN scaled to the length; a dotted line at each run's training length."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  runs = list(dict.fromkeys(r["run"] for r in rows))
  for i, run in enumerate(runs):
    for scaling, style in (("none", "-o"), ("yarn", "--s")):
      got = [r for r in rows if r["run"] == run and r["scaling"] == scaling]
      if got:
        rope = got[0]["rope"] if scaling == "none" else "YaRN x length/trained"
        ax.plot(*zip(*sorted((r["length"], r["perplexity"]) for r in got)), style,
                color=f"C{i % 10}", label=f"{run} ({rope})")
  for t in sorted({r["trained_len"] for r in rows}):
    ax.axvline(t, color="grey", linestyle=":", linewidth=1)
  ax.set_xscale("log", base=2)
  ax.set(xlabel="evaluation context (tokens); dotted: training length", ylabel="perplexity",
         title="Perplexity past the training context")
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=DPI)


def perplexity_vs_cache_by_method(rows, path: str) -> None:
  """Perplexity vs KV-cache bytes per token (log-log), a colour per method; points of one method
  and one d_R joined (the d_c series), labelled d_c/d_R; the first row, the original model, as a
  star and a dotted level."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  original = rows[0]
  ax.axhline(original["perplexity"], color="grey", linestyle=":", linewidth=1)
  ax.plot(original["kv_bytes_per_token"], original["perplexity"], "k*", markersize=12,
          label=original["method"])
  styles = {}
  for i, method in enumerate(dict.fromkeys(r["method"] for r in rows[1:])):
    mine = [r for r in rows[1:] if r["method"] == method]
    for j, rope in enumerate(sorted({r["rope_dims"] for r in mine},
                                    key=lambda d: -sum(r["rope_dims"] == d for r in mine))):
      got = sorted((r["kv_bytes_per_token"], r["perplexity"], r["kv_lora_rank"])
                   for r in mine if r["rope_dims"] == rope)
      style = styles.setdefault(rope, ("-", "--", ":", "-.")[len(styles) % 4])
      ax.plot([g[0] for g in got], [g[1] for g in got], style, marker="o", color=f"C{i}",
              label=method if j == 0 else None)
      for x, y, c in got:
        ax.annotate(f"{c}/{rope}", (x, y), xytext=(3, 3), textcoords="offset points",
                    fontsize=7, color=f"C{i}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  lines = ", ".join(f"{style!r} d_R={rope}" for rope, style in styles.items())
  ax.yaxis.set_major_formatter(ScalarFormatter())
  ax.yaxis.set_minor_formatter(ScalarFormatter())
  ax.set(xlabel=f"KV-cache bytes per token (all layers)\npoints d_c/d_R; lines {lines}",
         ylabel="perplexity (eval split, log)", title="Converting MHA to MLA vs training MLA")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=DPI)
