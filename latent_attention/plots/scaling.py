"""The log-log figure of time against input length (bench/scaling.py).

Built on `matplotlib.figure.Figure` (Agg canvas), so it never touches pyplot's global state or a
display.
"""

from matplotlib.figure import Figure


def time_vs_length(lengths, results: dict, exponents: dict, title: str, path: str) -> None:
  """`results[(encoder, mode)]` = seconds per length (None = skipped); `exponents` the same keys'
  fitted k. Solid lines are forward, dashed forward+backward."""
  fig = Figure(figsize=(6, 4.5))
  ax = fig.subplots()
  for (name, mode), seconds in results.items():
    pts = [(n, s) for n, s in zip(lengths, seconds) if s is not None]
    ax.loglog(*zip(*pts), marker="o", linestyle="-" if mode == "fwd" else "--",
              label=f"{name} {mode} (k={exponents[(name, mode)]:.2f})")
  ax.set_xlabel("input length N")
  ax.set_ylabel("seconds (median)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
