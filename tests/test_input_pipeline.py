"""The batch-level input pipeline (data/sources.py ArrayBatches): the batches of the per-record
Grain loader it replaced, exact resume with worker processes, a worker crash an error."""

import ml_collections
import numpy as np
import pytest
from absl import flags

from latent_attention.data import make_dataset, sources, synthetic, text

from test_data import per_record_loader


@pytest.fixture(autouse=True)
def _parsed_flags():
  """Grain's worker processes read absl flags (train.py parses them; pytest does not)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_text_windows_equal_the_per_record_loader():
  tokens = np.random.default_rng(0).integers(0, 300, 500).astype(np.uint16)
  windows = sources.WindowSource(tokens, 17)
  old = iter(per_record_loader(windows, 8, 3, [text.ToExample()]))
  new = iter(sources.batch_train_loader(windows, 8, 3, [text.ToExample()]))
  for _ in range(70):  # 70 batches of 8 > the 484 windows: past the first epoch.
    a, b = next(old), next(new)
    assert _same(a, b) and b["inputs"].dtype == np.int32


@pytest.mark.parametrize("name", ["copy", "mqar"])
def test_synthetic_on_demand_equals_the_per_record_loader(name, monkeypatch):
  cfg = ml_collections.ConfigDict(dict(name=name, seq_len=32, vocab_size=64, num_kv_pairs=4,
                                       num_train_examples=40, num_eval_examples=8,
                                       synthetic_seed=0, worker_count=0))
  monkeypatch.setattr(synthetic, "_MATERIALIZE_TOKENS", 0)  # generated batch by batch.
  ds = make_dataset(cfg)
  src = ds._source_cls(ds.cfg, "train", 40)
  old, new = iter(per_record_loader(src, 8, 1)), iter(ds.train_loader(8, 1))
  for _ in range(7):
    assert _same(next(old), next(new))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_workers_gives_the_uninterrupted_batches(workers):
  cfg = ml_collections.ConfigDict(dict(name="copy", seq_len=16, vocab_size=50,
                                       num_train_examples=100, num_eval_examples=8,
                                       synthetic_seed=0, worker_count=workers))
  ds = make_dataset(cfg)
  reference = [next(it) for it in [iter(ds.train_loader(4, 2))] for _ in range(9)]
  it = iter(ds.train_loader(4, 2))
  for _ in range(4):
    next(it)
  state = it.get_state()  # what a checkpoint stores.
  resumed = iter(ds.train_loader(4, 2))
  resumed.set_state(state)
  for expected in reference[4:]:
    assert _same(next(resumed), expected)
  if workers:  # worker processes read the same stream as the main process.
    cfg.worker_count = 0
    serial = iter(make_dataset(cfg).train_loader(4, 2))
    assert all(_same(next(serial), b) for b in reference)


class _Crash(sources.ArrayRecords):

  def gather(self, keys):
    raise RuntimeError("boom in a worker")


def test_a_worker_crash_is_an_error_not_a_hang():
  records = _Crash({"inputs": np.zeros((16, 2), np.int32)})
  with pytest.raises(Exception, match="boom in a worker"):
    next(iter(sources.batch_train_loader(records, 4, 0, worker_count=1)))


def test_input_benchmark_reports_both_rates():
  from latent_attention import config_files
  from latent_attention.bench import input as input_bench
  from conftest import ROOT
  config = config_files.load(f"{ROOT}/configs/lm1b.py:mla,synthetic,runlocal")
  (row,) = input_bench.benchmark(config, batches=2)
  assert row["batch"] == [config.train.batch_size, 32] and row["examples_per_s"] > 0
  assert row["flops_per_example"] > 0 and row["this_device_examples_per_s"] > 0
  # The same FLOPs against a larger data-sheet peak (float32: 495 against 197 TFLOP/s).
  assert row["h100_examples_per_s"] > row["v5e_examples_per_s"] > 0
