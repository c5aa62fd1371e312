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


def test_ceilings_count_the_batch_bytes_and_the_loader_alone():
  from latent_attention.bench import input as input_bench
  batch = {"inputs": np.ones((4, 8), np.int32), "weights": np.ones((4, 8), np.float32),
           "label": np.zeros((4,), np.uint8)}
  # The loader of the record-floor measurement yields the record itself, unchanged.
  assert _same(next(iter(sources.batch_loader(input_bench._SameBatch(batch)))), batch)
  c = input_bench.ceilings(batch, pool_bytes=2 ** 16, seconds=0.01)
  assert c["bytes_per_example"] == 8 * 4 + 8 * 4 + 1
  assert c["grain_ceiling_examples_per_s"] == pytest.approx(4e6 / c["grain_record_us"])
  assert c["gather_ceiling_examples_per_s"] >= c["gather_one_core_examples_per_s"] > 0


@pytest.mark.e2e
def test_loop_vs_step_alternates_rounds(tmp_path):
  from latent_attention.bench import input as input_bench
  from conftest import runlocal
  row = input_bench.loop_vs_step(runlocal(), str(tmp_path), steps=8, windows=2, rounds=2)
  assert len(row["rounds"]) == 2 and all((tmp_path / f"round_{r}").is_dir() for r in (0, 1))
  for r in row["rounds"]:  # the first of the 2 windows is warm-up, dropped.
    assert len(r["loop_windows_ms"]) == 1 and r["loop_step_ms"] == r["loop_windows_ms"][0]
    assert r["loop_over_blocked"] == pytest.approx(r["loop_step_ms"] / r["blocked_step_ms"])
  ratios = sorted(r["loop_over_blocked"] for r in row["rounds"])
  assert row["loop_over_blocked"] == pytest.approx(sum(ratios) / 2)  # median of two.


def test_published_tables_are_rebuilt_from_their_raw_files():
  """docs/results/input_pipeline/{ceiling,loop}.json from the benchmark's files in raw/."""
  import json
  import os
  from latent_attention.studies import input_tables
  from conftest import ROOT
  pub = os.path.join(ROOT, "docs", "results", "input_pipeline")
  for table, raw, build in (("ceiling", "pipeline", input_tables.ceiling_table),
                            ("loop", "loop", input_tables.loop_table)):
    with open(os.path.join(pub, f"{table}.json")) as f:
      published = json.load(f)
    assert build(input_tables.load(os.path.join(pub, "raw", f"{raw}.json"))) == published


def test_the_ceiling_table_names_the_bound_that_binds():
  from latent_attention.studies import input_tables
  row = {"case": "c", "batch": [4, 8], "bytes_per_example": 64, "worker_count": 0,
         "v5e_examples_per_s": 100.0, "v5e_headroom": 0.5, "examples_per_s": 50.0,
         "grain_ceiling_examples_per_s": 5000.0, "gather_ceiling_examples_per_s": 5000.0}
  cases = [({}, "no: the pipeline's own work"), ({"examples_per_s": 1000.0}, "yes"),
           ({"grain_ceiling_examples_per_s": 999.0}, "no: Grain's per-record floor"),
           ({"gather_ceiling_examples_per_s": 999.0}, "no: the batch's bytes alone"),
           ({"grain_ceiling_examples_per_s": 998.0, "gather_ceiling_examples_per_s": 999.0},
            "no: Grain's per-record floor, at one record per batch; and the batch's bytes"),
           ({"grain_ceiling_examples_per_s": 999.0, "gather_ceiling_examples_per_s": 998.0},
            "no: the batch's bytes alone (this host's memory traffic); and Grain's")]
  raw = {"command": "c", "machine": "m", "date": "d", "wall_s": 60.0}
  for change, verdict in cases:
    (cells,) = input_tables.ceiling_table({**raw, "rows": [{**row, **change}]})["rows"]
    assert cells[-1].startswith(verdict) and cells[4] == 1000.0  # 10 x the v5e chip's rate.
  with pytest.raises(ValueError, match="no ceilings"):
    input_tables.ceiling_table({**raw, "rows": [{"worker_count": 0}]})
