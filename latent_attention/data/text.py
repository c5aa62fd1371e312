"""Language modelling on a TFDS text dataset (`tiny_shakespeare`, `lm1b`): one token stream.

`data.tokenizer = 'char'`: the vocabulary is every character of the train split, sorted (65 for
tiny_shakespeare), and a split is its examples' text concatenated. `'sentencepiece'`: a
`data.vocab_size` sub-word model (data/tokenizer.py), and a split is every example's ids followed
by the end-of-document id EOD, concatenated: documents are packed back to back, and a window
that spans a boundary predicts EOD, then the next document's first token from EOD. Attention
runs across that boundary (GPT-2's and nanoGPT's packing, not the Flax lm1b example's segment
masks): no attention kind, kernel or decode cache needs segment ids, and the model learns to
read EOD as a reset. The vocabulary travels with each checkpoint.

Training draws random windows of T+1 tokens; evaluation covers a whole split in fixed
non-overlapping windows whose targets are each scored once, so its number is deterministic.

A sub-word split is tokenized once, in batches of documents (SentencePiece's C++ threads), and
cached as a .npy keyed by the tokenizer's digest, then memory-mapped: a random window at any
token offset needs the whole packed stream, which tokenizing on the fly (a Grain MapTransform
per document) cannot index, and lm1b's ~30M sentences take minutes to tokenize, not a restart's
worth. The cache lives outside the workdir so runs sharing a tokenizer (a sweep's) share it.
"""

import hashlib
import itertools
import os

import grain.python as grain
import numpy as np
from absl import logging
from tqdm import tqdm

from latent_attention.data import sources
from latent_attention.data.tokenizer import EOD, CharVocab, SubwordVocab


def documents(name: str, split: str, data_dir=None, chunk: int = 10_000):
  """The texts of a split's examples, in order; 'a+b' chains splits (e.g. 'validation+test').

  Records are read `chunk` at a time (`__getitems__`: parallel ArrayRecord reads, not one
  Python call per record, which counts at lm1b's ~30M sentences).
  """
  for s in split.split("+"):
    src = sources.tfds_source(name, s, data_dir)
    for start in range(0, len(src), chunk):
      for ex in src.__getitems__(range(start, min(start + chunk, len(src)))):
        text = ex["text"]
        yield text if isinstance(text, str) else text.decode("utf-8")  # bytes from ArrayRecord.


def split_text(name: str, split: str, data_dir=None) -> str:
  """The text of a split, its examples concatenated."""
  return "".join(documents(name, split, data_dir))


class ToExample(grain.MapTransform):
  """A window of T+1 tokens (or a [B, T+1] batch of them) -> inputs, next-token targets and
  weights."""

  def map(self, window):
    window = np.asarray(window, np.int32)
    return {"inputs": window[..., :-1], "targets": window[..., 1:],
            "weights": np.ones((*window.shape[:-1], window.shape[-1] - 1), np.float32)}


class TargetBytes(grain.MapTransform):
  """Adds the UTF-8 bytes each target stands for: the eval step sums them for bits per byte."""

  def __init__(self, token_bytes: np.ndarray):
    self._bytes = token_bytes

  def map(self, ex):
    return {**ex, "target_bytes": self._bytes[ex["targets"]]}


class TextLM:
  """A TFDS text dataset as one token stream (see module docstring)."""

  task = "lm"
  input_dtype = np.int32

  def __init__(self, data_cfg, metadata: dict | None = None):
    self.cfg, metadata = data_cfg, metadata or {}
    self.tokenizer = data_cfg.get("tokenizer", "char")
    saved = {"vocab": "char", "sentencepiece": "sentencepiece"}
    for key, kind in saved.items():
      if key in metadata and kind != self.tokenizer:
        raise ValueError(f"data.tokenizer={self.tokenizer!r} is invalid: the checkpoint's "
                         f"vocabulary is {kind!r}")
    if self.tokenizer == "char":
      self.vocab = CharVocab(metadata["vocab"] if "vocab" in metadata else "".join(sorted(set(
          split_text(data_cfg.name, data_cfg.train_split, data_cfg.data_dir)))))
    elif "sentencepiece" in metadata:
      self.vocab = SubwordVocab.from_metadata(metadata)
    else:
      logging.info("Training a %d-piece SentencePiece model on the first %d characters of %s",
                   data_cfg.vocab_size, data_cfg.tokenizer_train_chars, data_cfg.train_split)
      self.vocab = SubwordVocab.train(
          documents(data_cfg.name, data_cfg.train_split, data_cfg.data_dir),
          data_cfg.vocab_size, data_cfg.tokenizer_train_chars)
    self.token_bytes = self.vocab.token_bytes()

  def metadata(self) -> dict:
    return self.vocab.metadata()

  def input_shape(self):
    return (self.cfg.seq_len,)

  def tokens_per_example(self):
    return self.cfg.seq_len

  def _tokens(self, split):
    if self.tokenizer == "char":
      return self.vocab.encode(split_text(self.cfg.name, split, self.cfg.data_dir))
    return self._subword_stream(split)

  def _subword_stream(self, split) -> np.ndarray:
    """Every document's ids then EOD, concatenated; tokenized once per tokenizer and split and
    kept under data.token_cache_dir (memory-mapped: lm1b's train split is ~0.8B tokens)."""
    cache = os.path.expanduser(self.cfg.get("token_cache_dir")
                               or "~/.cache/latent_attention/tokens")
    digest = hashlib.sha256(self.vocab.proto).hexdigest()[:16]
    path = os.path.join(cache, f"{self.cfg.name}-{split}-{digest}.npy")
    if os.path.exists(path):
      return np.load(path, mmap_mode="r")
    dtype = np.uint16 if self.vocab.size <= 2**16 else np.int32
    names = split.split("+")
    total = sum(len(sources.tfds_source(self.cfg.name, s, self.cfg.data_dir)) for s in names)
    docs = documents(self.cfg.name, split, self.cfg.data_dir)
    # One array per batch of documents, not per document: 30M small arrays would take GBs.
    parts = []
    with tqdm(total=total, desc=f"tokenizing {self.cfg.name} {split}", unit="doc",
              disable=total < 10_000) as bar:
      for batch in iter(lambda: list(itertools.islice(docs, 10_000)), []):
        ids = self.vocab.encode_batch(batch)
        parts.append(np.fromiter(itertools.chain.from_iterable((*d, EOD) for d in ids), dtype))
        bar.update(len(batch))
    tokens = np.concatenate(parts)
    os.makedirs(cache, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"  # atomic: other processes may write it too.
    np.save(tmp, tokens)
    os.replace(tmp, path)
    return tokens

  def train_loader(self, batch_size, seed):
    src = sources.WindowSource(self._tokens(self.cfg.train_split), self.cfg.seq_len + 1)
    return sources.batch_train_loader(src, batch_size, seed, [ToExample()],
                                      self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    return sources.eval_batches(
        EvalWindows(self._tokens(split), self.cfg.seq_len, self.cfg.get("eval_window_targets", 0)),
        batch_size, [TargetBytes(self.token_bytes)])


class EvalWindows(grain.RandomAccessDataSource):
  """Windows of T inputs whose last `scored` targets tile the split, each scored exactly once.

  scored = T (0 means T) gives non-overlapping windows. A model that scores only its last M
  positions (Perceiver AR) uses scored = M: windows then overlap by T - M, and the split is
  left-padded with T - M zeros so its first targets are scored too (with a shorter context).
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, scored: int = 0):
    self._t, self._scored = seq_len, scored or seq_len  # data/config.py: scored <= seq_len.
    self._tokens = np.concatenate([np.zeros(seq_len - self._scored, np.int32), tokens])
    self._n = -(-(tokens.size - 1) // self._scored)
    self._num_targets = tokens.size - 1

  def __len__(self):
    return self._n

  def __repr__(self):
    return f"EvalWindows(tokens={self._num_targets + 1}, t={self._t}, scored={self._scored})"

  def __getitem__(self, i):
    t, scored = self._t, self._scored
    chunk = self._tokens[i * scored:i * scored + t + 1]
    window = np.zeros(t + 1, np.int32)
    window[:chunk.size] = chunk
    ex = ToExample().map(window)
    first_target = i * scored  # index among the split's targets of this window's first score.
    valid = min(scored, self._num_targets - first_target)
    ex["weights"][:] = 0
    ex["weights"][t - scored:t - scored + valid] = 1
    return ex
