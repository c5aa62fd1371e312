"""Input-pipeline throughput against the rate a train step consumes (scripts/benchmark_input.py).

The pipeline alone: batches drawn from `dataset.train_loader` (this process's share), timed
after the first; the first batch's latency (loader construction included) on its own. The
consumption side: XLA's FLOPs of the config's train step per example (compiled here at a
small batch; FLOPs are linear in the batch), turned into examples/s of one v5e chip and one
H100 at 50% MFU (an estimate from data-sheet peaks, training/peaks.py), and measured on this
device at that small batch. `loop_vs_step` puts train.py's loop beside the blocked step.
"""

import contextlib
import statistics
import time
from unittest import mock

import jax
import numpy as np

from latent_attention import timing
from latent_attention.bench import step as step_bench
from latent_attention.data import make_dataset, sources, text
from latent_attention.training import loop, metrics as metrics_lib, peaks

MFU = 0.5  # the utilisation the estimates assume.
CHIPS = {"v5e": "TPU v5 lite", "h100": "NVIDIA H100"}  # data-sheet rows of training/peaks.py.


def pipeline_rate(dataset, batch_size: int, seed: int, batches: int) -> dict:
  """Examples/s and tokens/s of `dataset.train_loader` over `batches` after the first."""
  start = time.perf_counter()
  it = iter(dataset.train_loader(batch_size, seed))
  first = next(it)
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  per_batch = (time.perf_counter() - start) / batches
  local = len(next(iter(batch.values())))
  return {"first_batch_s": first_s, "ms_per_batch": 1e3 * per_batch,
          "examples_per_s": local / per_batch,
          "tokens_per_s": local * dataset.tokens_per_example() / per_batch,
          "first_batch": first}


def step_rate(config, dataset, first_batch, small_batch: int, repeats: int = 3) -> dict:
  """FLOPs per example of the train step at `small_batch`, the examples/s of one v5e chip and
  one H100 at `MFU` (estimates) and of this device (measured, median of `repeats`)."""
  config = config.copy_and_resolve_references()
  config.train.batch_size = small_batch
  exp = loop.setup(config, dataset.metadata())
  state = exp.init_state(jax.random.key(0))
  batch = exp.to_global({k: v[:small_batch] for k, v in first_batch.items()})
  compiled = exp.train_step.lower(state, batch).compile()
  flops = peaks.xla_flops(compiled) / small_batch

  def train_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return state, metrics

  times = timing.time_calls(train_step, repeats=repeats)
  dtype = config.model.get("dtype", "float32")
  out = {"flops_per_example": flops,
         "this_device_examples_per_s": small_batch / statistics.median(times)}
  for chip, kind in CHIPS.items():
    out[f"{chip}_examples_per_s"] = MFU * peaks.known_peak_tflops(kind, dtype) * 1e12 / flops
  return out


@contextlib.contextmanager
def text_as_documents(lines):
  """TFDS text datasets read `lines` as their documents, every split: lm1b's packing path on
  text at hand where lm1b is not prepared (its per-batch cost does not depend on the text)."""
  records = [{"text": line.encode()} for line in lines]

  class Records(list):

    def __getitems__(self, keys):
      return [self[k] for k in keys]

  with mock.patch.object(sources, "tfds_source", lambda *a, **k: Records(records)):
    yield


def shakespeare_lines(data_dir=None) -> list:
  """tiny_shakespeare's lines: ~40k real short documents, lm1b's sentences stand-in."""
  return [line for line in text.split_text("tiny_shakespeare", "train", data_dir).split("\n")
          if line.strip()]


def benchmark(config, batches: int = 20, small_batch: int = 2, worker_counts=(0,)) -> list:
  """One row per `data.worker_count`: pipeline rate and the step's consumption rate."""
  rows, step = [], None
  for workers in worker_counts:
    config.data.worker_count = workers
    start = time.perf_counter()
    dataset = make_dataset(config.data)
    setup_s = time.perf_counter() - start
    rate = pipeline_rate(dataset, config.train.batch_size, config.seed, batches)
    first = rate.pop("first_batch")
    if step is None:
      step = step_rate(config, dataset, first, min(small_batch, config.train.batch_size))
    rows.append({"worker_count": workers, "batch": list(np.shape(first["inputs"])),
                 "dataset_setup_s": setup_s, **rate, **step,
                 "v5e_headroom": rate["examples_per_s"] / step["v5e_examples_per_s"]})
  return rows


def loop_vs_step(config, workdir: str, steps: int = 200, windows: int = 4) -> dict:
  """The training loop's time per step (train.py's own loop, `steps` steps logged in
  `windows` windows, the first dropped: warm-up) beside the blocked step's median
  (bench/step.py) at the same config, in one process."""
  config = config.copy_and_resolve_references()
  log_every = steps // windows
  config.train.update(num_steps=steps, log_every=log_every, eval_every=0, checkpoint_every=0,
                      warmup_steps=min(config.train.warmup_steps, steps))  # same step time.
  if "eval" in config:
    config.eval.sample_len = 0
  loop.train_and_evaluate(config, workdir)
  window_ms = [m["step_ms"] for m in metrics_lib.read_metrics(workdir)
               if m.get("split") == "train"][1:]
  blocked = step_bench.benchmark(config, steps=log_every, decode_tokens=0)
  loop_ms = statistics.median(window_ms)
  return {"loop_step_ms": loop_ms, "loop_windows_ms": window_ms,
          "blocked_step_ms": 1e3 * blocked["step_time_s"],
          "pipeline_step_ms": 1e3 * blocked["pipeline_step_time_s"],
          "loop_over_blocked": loop_ms / (1e3 * blocked["step_time_s"])}
