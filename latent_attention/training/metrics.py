"""Metric writers (`metrics.jsonl` and TensorBoard events in the workdir) and training progress."""

import contextlib
import json
import math
import os
import time

import jax
from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars from process 0 only; every line carries the step and wall time."""

  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      cut = _ends_mid_line(path)
      self._jsonl = open(path, "a")
      if cut:  # a crash mid-write: new lines start on a line of their own, after the fragment.
        logging.warning("%s ends in a line cut short (a crash while writing it?); it is kept, "
                        "skipped when read, and new lines start after it", path)
        self._jsonl.write("\n")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, prefix: str, scalars: dict) -> None:
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    line = {"step": int(step), "time": time.time(), "split": prefix, **scalars}
    self._jsonl.write(json.dumps(line) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tb.close()


def _ends_mid_line(path: str) -> bool:
  """Whether the file's last line lacks its newline."""
  try:
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) != b"\n"
  except OSError:  # no file, or an empty one.
    return False


def read_metrics(workdir: str) -> list[dict]:
  """The lines of a workdir's metrics.jsonl (empty if none), one per split and step.

  A run resumed from its checkpoint at step N logs again the steps after N that the stopped run
  had logged: of the lines of one split and step only the last is kept, where it stands, so
  curves do not run back. A line that is not a whole JSON object (one cut short by a crash while
  it was written) is skipped with a warning."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  lines = []
  with open(path, errors="replace") as f:
    for number, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        line = json.loads(text)
      except ValueError:
        line = None
      if isinstance(line, dict):
        lines.append(line)
      else:
        logging.warning("%s line %d is not a whole JSON object (cut short by a crash?); "
                        "skipped: %.60r", path, number, text)
  last = {(m.get("split"), m.get("step")): i for i, m in enumerate(lines)}
  return [m for i, m in enumerate(lines) if last[m.get("split"), m.get("step")] == i]


def format_duration(seconds: float) -> str:
  """1h02m03s / 4m05s / 6s."""
  if not math.isfinite(seconds):
    return "?"
  s = int(round(seconds))
  h, m, s = s // 3600, s // 60 % 60, s % 60
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
  """Throughput and ETA of a training run: the same numbers in log lines and the progress bar.

  Throughput counts training time only (`paused()` around evaluations); the ETA extrapolates the
  whole wall time per step since `start()` (evaluations and checkpoints included).
  """

  def __init__(self, start_step: int, total: int, batch_size: int, tokens_per_example: int,
               task: str):
    self.start_step, self.total, self.batch_size = start_step, total, batch_size
    self.tokens_per_step = batch_size * tokens_per_example
    # Classifiers report examples/s (tokens_per_s is then pixels/s, kept for the sweeps).
    self.unit = "tokens" if task == "lm" else "examples"
    self._rates = {"tokens_per_s": math.nan, "examples_per_s": math.nan, "step_ms": math.nan}
    self._t0 = self._t_last = None
    self._last_step = start_step
    self.flops_per_token = self.peak_flops = math.nan  # set once the step is compiled.

  def start(self) -> None:
    self._t0 = self._t_last = time.perf_counter()
    self._last_step = self.start_step

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    yield
    self._t_last += time.perf_counter() - t

  def update(self, step: int) -> dict:
    """Rates over the steps since the last update."""
    now = time.perf_counter()
    steps, seconds = step - self._last_step, max(now - self._t_last, 1e-9)
    self._last_step, self._t_last = step, now
    self._rates = {"tokens_per_s": steps * self.tokens_per_step / seconds,
                   "examples_per_s": steps * self.batch_size / seconds,
                   "step_ms": 1e3 * seconds / max(steps, 1)}
    # Model FLOPs utilisation (training/peaks.py): achieved FLOP/s over the devices' peak.
    self._rates["mfu"] = (self._rates["tokens_per_s"] * self.flops_per_token
                          / self.peak_flops)
    return dict(self._rates)

  def eta(self, step: int) -> float:
    done = step - self.start_step
    if done <= 0 or self._t0 is None:
      return math.nan
    return (time.perf_counter() - self._t0) / done * (self.total - step)

  def postfix(self, loss: float) -> str:
    return f"loss {loss:.4f}, {self._rates[self.unit + '_per_s']:,.0f} {self.unit}/s"

  def line(self, step: int, loss: float) -> str:
    """`step 200/1500 (13%): loss 1.8234, 14,012 tokens/s, 45.1 ms/step, MFU 2.1%, ETA 1m02s`
    (MFU only once it is known)."""
    mfu = self._rates.get("mfu", math.nan)
    mfu = f"MFU {100 * mfu:.1f}%, " if math.isfinite(mfu) else ""
    return (f"step {step}/{self.total} ({100 * step // max(self.total, 1)}%): "
            f"{self.postfix(loss)}, {self._rates['step_ms']:.1f} ms/step, {mfu}"
            f"ETA {format_duration(self.eta(step))}")
