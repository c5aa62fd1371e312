"""Input-pipeline throughput against the rate a train step consumes (scripts/benchmark_input.py).

The pipeline alone: batches drawn from `dataset.train_loader` (this process's share), timed
after the first; the first batch's latency (loader construction included) on its own. The
consumption side: XLA's FLOPs of the config's train step per example (compiled here at a
small batch; FLOPs are linear in the batch), turned into examples/s of one v5e chip and one
H100 at 50% MFU (an estimate from data-sheet peaks, training/peaks.py), and measured on this
device at that small batch. `ceilings` bounds what any pipeline on this host could reach at one
Grain record per batch, and by the memory traffic of the batch alone. `loop_vs_step` puts
train.py's loop beside the blocked step.
"""

import contextlib
import os
import statistics
import time
from unittest import mock

import grain.python as grain
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
  flops = peaks.step_flops(exp.train_step, compiled, state, batch) / small_batch

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


class _SameBatch(grain.RandomAccessDataSource):
  """Every record is one prebuilt batch: a loader over it measures the loader alone."""

  def __init__(self, batch):
    self._batch = batch

  def __len__(self):
    return 2 ** 62

  def __getitem__(self, j):
    return self._batch


def grain_record_us(batch, records: int = 2000) -> float:
  """Microseconds per record of Grain's `DataLoader` with the training loaders' options
  (sources.batch_train_loader) when reading a record costs nothing: its own floor."""
  it = iter(sources.batch_loader(_SameBatch(batch)))
  next(it)
  start = time.perf_counter()
  for _ in range(records):
    next(it)
  return 1e6 * (time.perf_counter() - start) / records


def gather_examples_per_s(bytes_per_example: int, batch: int, pool_bytes: int = 2 ** 28,
                          seconds: float = 0.5) -> float:
  """Examples/s of the cheapest possible pipeline on one core: gathering each example's bytes
  at random rows of a `pool_bytes` array (a dataset in memory; its size moved the rate by <10%)
  into a preallocated batch, with nothing else: no keys, no transform, no loader."""
  rows = max(batch, pool_bytes // bytes_per_example)
  pool = np.random.default_rng(0).integers(0, 256, (rows, bytes_per_example), np.uint8)
  out = np.empty((batch, bytes_per_example), np.uint8)
  keys = np.random.default_rng(1).integers(0, rows, (64, batch))
  np.take(pool, keys[0], axis=0, out=out)  # fault the output's pages in first.
  done, start = 0, time.perf_counter()
  while (elapsed := time.perf_counter() - start) < seconds:
    for k in keys:
      np.take(pool, k, axis=0, out=out)
    done += keys.size
  return done / elapsed


def ceilings(first_batch, pool_bytes: int = 2 ** 28, seconds: float = 0.5) -> dict:
  """Upper bounds on this host's pipeline rate for batches like `first_batch` (examples/s):
  Grain's per-record floor at one record per batch, and gathering the batch's bytes alone on
  every core of this host (perfect scaling assumed: a bound, not a forecast)."""
  local = len(next(iter(first_batch.values())))
  bytes_per_example = sum(np.asarray(v).nbytes for v in first_batch.values()) // local
  record_us = grain_record_us(first_batch)
  one_core = gather_examples_per_s(bytes_per_example, local, pool_bytes, seconds)
  return {"bytes_per_example": bytes_per_example, "grain_record_us": record_us,
          "grain_ceiling_examples_per_s": local / (1e-6 * record_us),
          "gather_one_core_examples_per_s": one_core,
          "gather_ceiling_examples_per_s": one_core * (os.cpu_count() or 1)}


def benchmark(config, batches: int = 20, small_batch: int = 2, worker_counts=(0,),
              with_ceilings: bool = False) -> list:
  """One row per `data.worker_count`: pipeline rate and the step's consumption rate (and with
  `with_ceilings`, this host's `ceilings` for the config's batch)."""
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
      if with_ceilings:
        step.update(ceilings(first))
    rows.append({"worker_count": workers, "batch": list(np.shape(first["inputs"])),
                 "dataset_setup_s": setup_s, **rate, **step,
                 "v5e_headroom": rate["examples_per_s"] / step["v5e_examples_per_s"]})
  return rows


def loop_vs_step(config, workdir: str, steps: int = 200, windows: int = 4,
                 rounds: int = 1) -> dict:
  """The training loop's time per step beside the blocked step's at the same config, in one
  process, alternating for `rounds` rounds (a machine's load drifts over minutes: alternation
  puts each ratio's two sides close in time).

  Per round: train.py's own loop for `steps` steps from scratch (in workdir/round_<r>), logged
  in `windows` windows with the first dropped (warm-up), its median window; then the blocked
  step's median (bench/step.py) over one window's worth of steps. `loop_over_blocked` is the
  median of the rounds' ratios.
  """
  config = config.copy_and_resolve_references()
  log_every = steps // windows
  config.train.update(num_steps=steps, log_every=log_every, eval_every=0, checkpoint_every=0,
                      warmup_steps=min(config.train.warmup_steps, steps))  # same step time.
  if "eval" in config:
    config.eval.sample_len = 0
  per_round = []
  for r in range(rounds):
    round_dir = os.path.join(workdir, f"round_{r}")
    loop.train_and_evaluate(config, round_dir)
    window_ms = [m["step_ms"] for m in metrics_lib.read_metrics(round_dir)
                 if m.get("split") == "train"][1:]
    blocked = step_bench.benchmark(config, steps=log_every, decode_tokens=0)
    loop_ms, blocked_ms = statistics.median(window_ms), 1e3 * blocked["step_time_s"]
    per_round.append({"loop_step_ms": loop_ms, "loop_windows_ms": window_ms,
                      "blocked_step_ms": blocked_ms,
                      "pipeline_step_ms": 1e3 * blocked["pipeline_step_time_s"],
                      "loop_over_blocked": loop_ms / blocked_ms,
                      "load_average": os.getloadavg()[0]})
  return {"rounds": per_round,
          "loop_over_blocked": statistics.median(r["loop_over_blocked"] for r in per_round)}
