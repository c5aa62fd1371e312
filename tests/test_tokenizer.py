"""Sub-word tokenization (data/tokenizer.py): exact round trips, bytes per token, and the model
saved with the checkpoint and reused on resume and by eval."""

import os

import numpy as np
import pytest

from latent_attention.data import tokenizer
from latent_attention.data.text import split_text
from latent_attention.training import evaluate, loop

from conftest import runlocal


@pytest.fixture(scope="module")
def vocab():
  return tokenizer.SubwordVocab.train([split_text("tiny_shakespeare", "train")], 384, 100_000)


def test_round_trip_and_bytes_on_the_validation_text(vocab):
  text = split_text("tiny_shakespeare", "validation")
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  assert ids.size < 0.8 * len(text)  # sub-words (~60 merges at this size), not characters.
  # Each id's bytes are its piece's: together, the text's UTF-8 bytes.
  assert vocab.token_bytes()[ids].sum() == len(text.encode("utf-8"))
  odd = "naïve café — 東京\n\n  two  spaces"  # unseen characters: byte fallback.
  assert vocab.decode(vocab.encode(odd)) == odd
  assert vocab.token_bytes()[vocab.encode(odd)].sum() == len(odd.encode("utf-8"))
  assert tokenizer.SubwordVocab.from_metadata(vocab.metadata()).proto == vocab.proto


def test_too_small_a_vocabulary_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"^data.vocab_size=100 is invalid: a sub-word"):
    tokenizer.SubwordVocab.train(["some text"], 100, 1000)
  with pytest.raises(ValueError, match=r"^data.vocab_size=262 is invalid for this text: "):
    tokenizer.SubwordVocab.train(["abcdefghij" * 50], 262, 1000)


def test_tokenizer_travels_with_the_checkpoint_and_is_reused(tmp_path, monkeypatch):
  config = runlocal("mla,sentencepiece", num_steps=10)
  config.data.token_cache_dir = str(tmp_path / "cache")
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "tokenizer.model"), "rb") as f:
    saved = f.read()

  def no_training(*args, **kwargs):
    raise AssertionError("the saved tokenizer must be reused, not retrained")

  monkeypatch.setattr(tokenizer.SubwordVocab, "train", no_training)
  exp, _, step = evaluate.restore_experiment(workdir)
  assert step == 10 and exp.dataset.vocab.proto == saved
  text = split_text("tiny_shakespeare", "validation")
  config.train.num_steps = 20
  result = loop.train_and_evaluate(config, workdir)  # resumes at step 10.
  resumed, _, _ = evaluate.restore_experiment(workdir)
  assert result["step"] == 20 and resumed.dataset.vocab.proto == saved
  np.testing.assert_array_equal(resumed.dataset.vocab.encode(text),
                                exp.dataset.vocab.encode(text))
  # tiny_shakespeare's validation split is one document: its ids, then EOD. Every target is
  # scored once (count), and bits per byte divide the same NLL by the targets' bytes.
  stream = np.append(exp.dataset.vocab.encode(text), tokenizer.EOD)
  ev = result["eval"]
  assert ev["count"] == stream.size - 1
  nbytes = exp.dataset.token_bytes[stream[1:]].sum()  # the text's bytes - the first + EOD's 1.
  assert nbytes == len(text.encode("utf-8")) - len(text[0].encode("utf-8")) + 1
  # The same float32 sums divided in another order: a few float32 roundings apart at most.
  assert ev["bits_per_byte"] == pytest.approx(ev["bits_per_token"] * ev["count"] / nbytes,
                                              rel=4 * float(np.finfo(np.float32).eps))
