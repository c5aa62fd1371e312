"""Packed sub-word documents (data/text.py): EOD between documents, every eval target scored
once, no loss on padding, the tokenized stream cached; lm1b end to end on TFDS mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from latent_attention import config_files
from latent_attention.data import make_dataset, sources, text, tokenizer
from latent_attention.training.loop import train_and_evaluate

from conftest import ROOT

DOCS = ["First document.", "A second, longer document\nwith two lines.", "Third: é and ü."]


class Records(list):
  """Examples with the batched read of a tfds data source (`text.documents` uses it)."""

  def __getitems__(self, keys):
    return [self[k] for k in keys]


@pytest.fixture
def fake_lm1b(monkeypatch, tmp_path):
  """configs/lm1b.py:runlocal's data section over DOCS, with a tokenizer trained elsewhere."""
  vocab = tokenizer.SubwordVocab.train([text.split_text("tiny_shakespeare", "train")], 384,
                                       100_000)
  records = Records({"text": d.encode()} for d in DOCS)
  monkeypatch.setattr(sources, "tfds_source", lambda name, split, data_dir=None: records)
  cfg = config_files.load(f"{ROOT}/configs/lm1b.py:mha,runlocal").data
  cfg.update(seq_len=8, token_cache_dir=str(tmp_path / "cache"))
  return make_dataset(cfg, vocab.metadata()), vocab


def test_documents_are_packed_with_eod_and_every_target_is_scored_once(fake_lm1b):
  dataset, vocab = fake_lm1b
  assert list(text.documents("lm1b", "train+test", chunk=2)) == DOCS * 2  # across chunks.
  stream = np.concatenate([np.append(vocab.encode(d), tokenizer.EOD) for d in DOCS])
  np.testing.assert_array_equal(dataset._tokens("test"), stream)
  scored, weights, nbytes = [], [], 0.0
  for batch in dataset.eval_batches("test", 4):
    w = batch["weights"]
    scored += list(batch["targets"][w > 0])
    weights += list(w.ravel())
    nbytes += float((batch["target_bytes"] * w).sum())
    # Inputs are targets shifted by one, across document boundaries too.
    np.testing.assert_array_equal(batch["inputs"][:, 1:][w[:, :-1] > 0],
                                  batch["targets"][:, :-1][w[:, :-1] > 0])
  assert scored == list(stream[1:])  # in order, each once: EOD, then the next document.
  assert set(weights) <= {0.0, 1.0} and sum(weights) == stream.size - 1  # padding weighs 0.
  # The targets' bytes: every document's UTF-8 bytes, one per EOD, less the first token's.
  first = vocab.token_bytes()[stream[0]]
  assert nbytes == sum(len(d.encode()) + 1 for d in DOCS) - first


def test_the_tokenized_split_is_cached(fake_lm1b, monkeypatch):
  dataset, _ = fake_lm1b
  first = np.asarray(dataset._tokens("train"))
  monkeypatch.setattr(text, "documents", lambda *a: pytest.fail("read the split again"))
  np.testing.assert_array_equal(dataset._tokens("train"), first)


def mock_source(name, split, data_dir=None):
  """tfds.data_source under mock_data, read one by one: its mock binds `__getitem__` but not
  `__getitems__` (MagicMock knows only the former), which `text.documents` calls."""
  src = tfds.data_source(name, split=split)
  return Records(src[i] for i in range(len(src)))


def test_lm1b_runlocal_trains_on_tfds_mock_data(tmp_path, monkeypatch):
  with tfds.testing.mock_data(num_examples=100, policy=tfds.testing.MockPolicy.USE_CODE):
    # The mock serves tfds.data_source only; nothing is prepared on disk to check.
    monkeypatch.setattr(sources, "tfds_source", mock_source)
    config = config_files.load(f"{ROOT}/configs/lm1b.py:mha,runlocal")
    config.data.token_cache_dir = str(tmp_path / "cache")
    config.train.update(num_steps=4, eval_every=0, checkpoint_every=0, log_every=2)
    result = train_and_evaluate(config, str(tmp_path / "run"))
  ev = result["eval"]
  assert result["step"] == 4 and np.isfinite(ev["loss"]) and ev["count"] > 0
  assert 0 < ev["bits_per_byte"] < ev["bits_per_token"]  # words of several letters a token.
  assert (tmp_path / "run" / "tokenizer.model").exists()
