"""Input pipelines: deterministic, resumable, complete evaluation coverage."""

import pathlib

import grain.python as grain
import ml_collections
import numpy as np
import pytest

from latent_attention.data import (DatasetMissingError, images, make_dataset, prepare, sources,
                                   synthetic)

RAW = pathlib.Path(__file__).resolve().parents[2] / "shared" / "raw"


def _text_cfg(**kw):
  return ml_collections.ConfigDict(dict(name="tiny_shakespeare", seq_len=16, train_split="train",
                                        eval_split="validation", test_split="test",
                                        data_dir=None, worker_count=0, **kw))


@pytest.fixture(scope="module")
def shakespeare():
  return make_dataset(_text_cfg())


def test_vocab_from_train_split(shakespeare):
  assert shakespeare.vocab.size == 65
  assert shakespeare.vocab.chars[0] == "\n"
  text = "ROMEO:\nHark!"
  assert shakespeare.vocab.decode(shakespeare.vocab.encode(text)) == text
  restored = make_dataset(_text_cfg(), shakespeare.metadata())
  assert restored.vocab == shakespeare.vocab


def test_eval_windows_cover_every_target_once(shakespeare):
  batches = list(shakespeare.eval_batches("validation", 64))
  tokens = shakespeare._tokens("validation")
  weights = np.concatenate([b["weights"].reshape(-1) for b in batches])
  targets = np.concatenate([b["targets"].reshape(-1) for b in batches])
  inputs = np.concatenate([b["inputs"].reshape(-1) for b in batches])
  assert weights.sum() == tokens.size - 1
  np.testing.assert_array_equal(targets[weights > 0], tokens[1:])
  np.testing.assert_array_equal(inputs[weights > 0], tokens[:-1])
  assert all(b["inputs"].shape == (64, 16) for b in batches)


def test_train_windows_are_shifted_text_and_resume_exactly(shakespeare):
  loader = shakespeare.train_loader(batch_size=4, seed=3)
  it = iter(loader)
  first = next(it)
  np.testing.assert_array_equal(first["inputs"][:, 1:], first["targets"][:, :-1])
  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(3)]
  it2 = iter(shakespeare.train_loader(batch_size=4, seed=3))
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["inputs"], e)
  other = next(iter(shakespeare.train_loader(batch_size=4, seed=4)))
  assert not np.array_equal(other["inputs"], first["inputs"])


class _Identity(grain.MapTransform):

  def map(self, record):
    return record


def per_record_loader(source, batch_size, seed, operations=(_Identity(),)):
  """The loader before `sources.ArrayBatches`: Grain reads, maps and batches one record at a
  time in `BatchSlices` order (the reference the batch-level loader must equal)."""
  return grain.DataLoader(data_source=source, sampler=sources.BatchSlices(len(source),
                                                                          batch_size, seed),
                          operations=[*operations, grain.Batch(batch_size, drop_remainder=True)],
                          shard_options=grain.NoSharding())


def test_in_memory_batches_equal_the_per_record_loader_and_resume():
  """Same batches in the same order as Grain batching one record at a time, across epochs."""
  rng = np.random.default_rng(0)
  records = sources.ArrayRecords({"inputs": rng.integers(0, 256, (50, 3, 3, 1), np.uint8),
                                  "targets": np.arange(50, dtype=np.int32)})
  old = iter(per_record_loader(records, 8, 3))
  new = iter(sources.batch_train_loader(records, 8, 3))
  for _ in range(4):
    a, b = next(old), next(new)
    assert all(np.array_equal(a[k], b[k]) for k in a)
  state = new.get_state()  # what a checkpoint stores (grain's CheckpointHandler).
  later = [next(new) for _ in range(5)]  # 9 batches of 8 > the 50 records: a second epoch.
  resumed = iter(sources.batch_train_loader(records, 8, 3))
  resumed.set_state(state)
  for batch, a in zip(later, [next(old) for _ in range(5)]):
    b = next(resumed)
    assert all(np.array_equal(batch[k], b[k]) and np.array_equal(a[k], b[k]) for k in a)
  epoch = next(iter(sources.batch_train_loader(records, 48, 3)))["targets"]
  assert len(set(epoch.tolist())) == 48  # 48 of the 50 records, none twice.


def test_images_are_decoded_once_into_the_tfds_records():
  src = sources.tfds_source("mnist", "test[:64]")
  decoded = images.decoded_split("mnist", "test[:64]")
  assert decoded is images.decoded_split("mnist", "test[:64]")  # cached, not decoded again.
  for i in (0, 63):
    np.testing.assert_array_equal(decoded[i]["inputs"], src[i]["image"])
    assert decoded[i]["targets"] == src[i]["label"] and decoded[i]["weights"] == 1.0


def test_mqar_queries_ask_for_the_paired_value():
  cfg = ml_collections.ConfigDict(dict(name="mqar", seq_len=64, vocab_size=256, num_kv_pairs=8,
                                       num_train_examples=100, num_eval_examples=10,
                                       synthetic_seed=0, worker_count=0, eval_split="validation"))
  ds = make_dataset(cfg)
  batch = next(iter(ds.eval_batches("validation", 10)))
  for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
    pairs = dict(zip(inputs[0:16:2], inputs[1:16:2]))
    queried = np.flatnonzero(weights)
    assert len(queried) == 8
    for p in queried:
      assert targets[p] == pairs[inputs[p]]
  again = next(iter(ds.eval_batches("validation", 10)))
  np.testing.assert_array_equal(again["inputs"], batch["inputs"])
  with pytest.raises(ValueError, match="data.num_kv_pairs=30 is invalid"):
    make_dataset(ml_collections.ConfigDict({**cfg.to_dict(), "num_kv_pairs": 30})).eval_batches(
        "validation", 2).__next__()


def _mqar_batch(n=500, **options):
  cfg = ml_collections.ConfigDict(dict(name="mqar", seq_len=64, vocab_size=256, num_kv_pairs=4,
                                       num_train_examples=100, num_eval_examples=n,
                                       synthetic_seed=0, worker_count=0, eval_split="validation",
                                       scored_positions=True, **options))
  return next(iter(make_dataset(cfg).eval_batches("validation", n)))


def test_mqar_follows_zoology_distribution_by_default():
  batch = _mqar_batch()
  first_quarter = []
  for inputs, targets, weights, positions in zip(
      batch["inputs"], batch["targets"], batch["weights"], batch["positions"]):
    np.testing.assert_array_equal(positions, np.flatnonzero(weights))  # scored = queried.
    assert len(set(inputs[1:8:2])) == 4  # an example's values are distinct.
    first_quarter += list((positions - 8) // 2 < 7)  # slot index among the 28 after the pairs.
  # Random filler: the only zeros left are random draws of token 0 (1/256 of the filler).
  assert (batch["inputs"] == 0).mean() < 0.02
  # Gap law k^(0.01 - 1): the first 7 of 28 slots take most queries (uniform: 25%).
  assert np.mean(first_quarter) > 0.45
  uniform = _mqar_batch(mqar_power_a=1.0)
  share = np.mean((uniform["positions"] - 8) // 2 < 7)
  assert abs(share - 0.25) < 0.05, share


def test_mqar_trains_on_a_fixed_set_disjoint_from_the_test_set(monkeypatch):
  """Zoology cycles one training set for epochs; held-out examples are new sequences. The set
  is generated once into memory, and the stream equals the one generated on demand."""
  cfg = ml_collections.ConfigDict(dict(name="mqar", seq_len=32, vocab_size=256, num_kv_pairs=4,
                                       num_train_examples=48, num_eval_examples=48,
                                       synthetic_seed=0, worker_count=0, scored_positions=True))
  ds = make_dataset(cfg)
  stream = iter(ds.train_loader(16, seed=1))
  batches = [next(stream) for _ in range(6)]  # two epochs of 48 examples.
  epochs = [{tuple(row) for b in batches[e:e + 3] for row in b["inputs"]} for e in (0, 3)]
  assert len(epochs[0]) == 48 and epochs[0] == epochs[1]  # the same 48 examples, reshuffled.
  assert [b["inputs"].tolist() for b in batches[:3]] != [b["inputs"].tolist()
                                                         for b in batches[3:]]
  monkeypatch.setattr(synthetic, "_MATERIALIZE_TOKENS", 0)  # the on-demand path.
  on_demand = iter(ds.train_loader(16, seed=1))
  for batch in batches:
    expected = next(on_demand)
    assert all(np.array_equal(batch[k], expected[k]) for k in expected)
  test = next(iter(ds.eval_batches("test", 48)))
  assert not epochs[0] & {tuple(row) for row in test["inputs"]}
  for b in batches:  # scored = queried: positions, weights and targets agree.
    np.testing.assert_array_equal(b["weights"].nonzero()[1].reshape(16, 4), b["positions"])
    assert (np.take_along_axis(b["targets"], b["positions"], 1) >= 128).all()  # values.


def test_mqar_answer_is_shown_only_when_asked():
  for show in (False, True):
    batch = _mqar_batch(50, mqar_random_filler=False, mqar_show_answer=show)
    for inputs, targets, positions in zip(batch["inputs"], batch["targets"], batch["positions"]):
      after = inputs[positions + 1]
      if show:
        np.testing.assert_array_equal(after, targets[positions])
      else:  # the position after a query is filler (0 here) or the next query's key.
        assert set(after) <= {0} | set(inputs[0:8:2])


def test_missing_dataset_offline_says_how_to_prepare(tmp_path, monkeypatch):
  tried = []
  monkeypatch.setattr(prepare, "reachable", lambda urls: tried.append(urls) or False)
  cfg = _text_cfg()
  cfg.data_dir = str(tmp_path)
  with pytest.raises(DatasetMissingError, match=(
      f"TFDS dataset 'tiny_shakespeare' is not prepared in {tmp_path} and cannot be downloaded "
      r"\(no answer from https://\S+/input.txt\); prepare it from the raw download files with "
      f"`python scripts/prepare_data.py --datasets=tiny_shakespeare --data_dir={tmp_path} "
      "--manual_dir=DIR`")):
    make_dataset(cfg)
  assert len(tried) == 1


@pytest.mark.skipif(not (RAW / "tiny_shakespeare").is_dir(), reason=f"needs {RAW}")
def test_missing_dataset_is_prepared_when_its_source_answers(tmp_path, monkeypatch):
  # Stands in for the download: TFDS takes the raw file from a manual dir instead (same checks
  # of size and SHA-256), so the test reads no network.
  real_prepare = prepare.prepare
  monkeypatch.setattr(prepare, "reachable", lambda urls: True)
  monkeypatch.setattr(prepare, "prepare", lambda builders, download_dir, manual_dir=None, **kw:
                      real_prepare(builders, download_dir, str(RAW / "tiny_shakespeare"), **kw))
  cfg = _text_cfg()
  cfg.data_dir = str(tmp_path)
  dataset = make_dataset(cfg)
  assert dataset.vocab.size == 65
  assert (tmp_path / "tiny_shakespeare").is_dir()


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="data.name='imagenet' is invalid: choose one of"):
    make_dataset(ml_collections.ConfigDict({**_text_cfg().to_dict(), "name": "imagenet"}))
