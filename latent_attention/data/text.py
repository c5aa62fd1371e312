"""Character-level language modelling on TFDS `tiny_shakespeare`.

The vocabulary is every character of the train split, sorted (65 for tiny_shakespeare), and is
saved with each checkpoint. Training draws random windows of T+1 characters; evaluation covers a
whole split in fixed non-overlapping windows, so its number is deterministic.
"""

import dataclasses

import grain.python as grain
import numpy as np

from latent_attention.data import sources


@dataclasses.dataclass(frozen=True)
class CharVocab:
  chars: str

  @property
  def size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    table = {c: i for i, c in enumerate(self.chars)}
    unknown = sorted(set(text) - set(table))
    if unknown:
      raise ValueError(f"characters {unknown[:5]} are not in the vocabulary built from train")
    return np.array([table[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids)


def split_text(name: str, split: str, data_dir=None) -> str:
  """The text of a split; 'a+b' concatenates splits in order (e.g. 'validation+test')."""
  parts = []
  for s in split.split("+"):
    src = sources.tfds_source(name, s, data_dir)
    parts.extend(src[i]["text"].decode("utf-8") for i in range(len(src)))
  return "".join(parts)


class ToExample(grain.MapTransform):
  """A window of T+1 tokens -> inputs, next-token targets and weights."""

  def map(self, window):
    window = np.asarray(window, np.int32)
    return {"inputs": window[:-1], "targets": window[1:],
            "weights": np.ones(window.size - 1, np.float32)}


class CharLM:
  """Loaders for a char-level TFDS text dataset (see module docstring)."""

  task = "lm"

  def __init__(self, data_cfg, metadata: dict | None = None):
    self.cfg = data_cfg
    if metadata and "vocab" in metadata:
      self.vocab = CharVocab(metadata["vocab"])
    else:
      self.vocab = CharVocab("".join(sorted(set(
          split_text(data_cfg.name, data_cfg.train_split, data_cfg.data_dir)))))

  input_dtype = np.int32

  def metadata(self) -> dict:
    return {"vocab": self.vocab.chars}

  def input_shape(self):
    return (self.cfg.seq_len,)

  def tokens_per_example(self):
    return self.cfg.seq_len

  def _tokens(self, split):
    return self.vocab.encode(split_text(self.cfg.name, split, self.cfg.data_dir))

  def train_loader(self, batch_size, seed):
    src = sources.WindowSource(self._tokens(self.cfg.train_split), self.cfg.seq_len + 1)
    return sources.train_loader(src, batch_size, seed, [ToExample()], self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    return sources.eval_batches(
        EvalWindows(self._tokens(split), self.cfg.seq_len, self.cfg.get("eval_window_targets", 0)),
        batch_size)


class EvalWindows(grain.RandomAccessDataSource):
  """Windows of T inputs whose last `scored` targets tile the split, each scored exactly once.

  scored = T (0 means T) gives non-overlapping windows. A model that scores only its last M
  positions (Perceiver AR) uses scored = M: windows then overlap by T - M, and the split is
  left-padded with T - M zeros so its first targets are scored too (with a shorter context).
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, scored: int = 0):
    self._t, self._scored = seq_len, scored or seq_len
    if not 0 < self._scored <= seq_len:
      raise ValueError(f"data.eval_window_targets={scored} is invalid: must be in "
                       f"[0, data.seq_len={seq_len}]")
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
