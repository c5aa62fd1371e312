"""Synthetic sequence tasks generated in memory: nothing to download.

MQAR, multi-query associative recall (Arora et al., Zoology, arXiv 2312.04927): a sequence
starts with `num_kv_pairs` key-value pairs (keys from the lower half of the vocabulary, values
from the upper half), then the keys are queried again at random later positions and the model
must emit the paired value right there. Only the query positions are scored, so accuracy is
recall accuracy. `copy`: random tokens, a separator, then the same tokens again; only the copy
is scored. With `scored_positions`, examples also carry `positions`, the indices of the scored
positions (a fixed number per task), so the LM computes its vocabulary-sized head only there.
Example i is a pure function of (seed, split, i), so the sources are random access and
deterministic like the TFDS ones.
"""

import grain.python as grain
import numpy as np

from latent_attention.data import sources

_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def _example(cfg, seq, weights, scored):
  ex = {"inputs": seq[:-1], "targets": seq[1:], "weights": weights}
  if cfg.get("scored_positions", False):
    ex["positions"] = scored.astype(np.int32)
  return ex


class MqarSource(grain.RandomAccessDataSource):

  def __init__(self, cfg, split, size):
    self.cfg, self._size = cfg, size
    self._seed = (cfg.synthetic_seed, _SPLIT_SEEDS[split])
    t, n, v = cfg.seq_len, cfg.num_kv_pairs, cfg.vocab_size
    if 3 * n > t:
      raise ValueError(f"data.num_kv_pairs={n} is invalid: needs 2*n pairs tokens plus n "
                       f"query slots <= data.seq_len={t}")
    if v < 4 * n:
      raise ValueError(f"data.vocab_size={v} is invalid: must be >= 4 * num_kv_pairs")

  def __len__(self):
    return self._size

  def __repr__(self):
    return f"{type(self).__name__}({self.cfg.to_dict()}, seed={self._seed}, size={self._size})"

  def __getitem__(self, i):
    t, n, v = self.cfg.seq_len, self.cfg.num_kv_pairs, self.cfg.vocab_size
    rng = np.random.default_rng((*self._seed, int(i)))
    keys = rng.choice(np.arange(1, v // 2), n, replace=False)
    values = rng.choice(np.arange(v // 2, v), n, replace=True)
    seq = np.zeros(t + 1, np.int32)
    seq[0:2 * n:2], seq[1:2 * n:2] = keys, values
    # A query key sits at input position p and its value is the target at p, i.e. seq[p + 1].
    slots = rng.choice(np.arange(2 * n, t, 2), n, replace=False)
    order = rng.permutation(n)
    seq[slots], seq[slots + 1] = keys[order], values[order]
    weights = np.zeros(t, np.float32)
    weights[slots] = 1
    return _example(self.cfg, seq, weights, np.sort(slots))


class CopySource(grain.RandomAccessDataSource):

  def __init__(self, cfg, split, size):
    self.cfg, self._size = cfg, size
    self._seed = (cfg.synthetic_seed, _SPLIT_SEEDS[split])

  def __len__(self):
    return self._size

  def __repr__(self):
    return f"{type(self).__name__}({self.cfg.to_dict()}, seed={self._seed}, size={self._size})"

  def __getitem__(self, i):
    t, v = self.cfg.seq_len, self.cfg.vocab_size
    half = t // 2
    rng = np.random.default_rng((*self._seed, int(i)))
    body = rng.integers(1, v, half)
    seq = np.zeros(t + 1, np.int32)
    seq[:half], seq[half + 1:2 * half + 1] = body, body
    weights = np.zeros(t, np.float32)
    weights[half:2 * half] = 1
    return _example(self.cfg, seq, weights, np.arange(half, 2 * half))


class Synthetic:
  """Loaders for `mqar` and `copy` (see module docstring)."""

  task = "lm"
  _SOURCES = {"mqar": MqarSource, "copy": CopySource}

  def __init__(self, data_cfg, metadata=None):
    del metadata
    self.cfg = data_cfg
    self._source_cls = self._SOURCES[data_cfg.name]

  input_dtype = np.int32

  def metadata(self) -> dict:
    return {}

  def input_shape(self):
    return (self.cfg.seq_len,)

  def tokens_per_example(self):
    return self.cfg.seq_len

  def train_loader(self, batch_size, seed):
    src = self._source_cls(self.cfg, "train", self.cfg.num_train_examples)
    return sources.train_loader(src, batch_size, seed, (), self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    return sources.eval_batches(self._source_cls(self.cfg, split, self.cfg.num_eval_examples),
                                batch_size)
