"""Metric writers: JSON lines (`metrics.jsonl`) and TensorBoard event files in the workdir."""

import json
import os
import time

import jax
from absl import logging as absl_logging
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars from process 0 only; every line carries the step and wall time."""

  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
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


def read_metrics(workdir: str) -> list[dict]:
  """All lines of a workdir's metrics.jsonl (empty if none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def quiet_library_logs() -> None:
  """Keeps INFO logs for this package; Orbax's per-save INFO lines only at WARNING and above."""
  import logging as py_logging  # absl's handler sits on the standard logging tree.

  class _Filter(py_logging.Filter):

    def filter(self, record):
      return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname

  absl_logging.get_absl_handler().addFilter(_Filter())
