"""Synthetic sequence tasks generated in memory: nothing to download.

MQAR, multi-query associative recall (Arora et al., Zoology, arXiv 2312.04927): a sequence
starts with `num_kv_pairs` key-value pairs (distinct keys from the lower half of the vocabulary,
values from the upper half), then every key is queried once at a later even position and the
model must emit the paired value right there. Only the query positions are scored, so accuracy
is recall accuracy. The defaults follow Zoology's generator (`zoology/data/multiquery_ar.py`):
distinct values, query slots drawn from a power law over the slots after the context
(`mqar_power_a`, mostly short gaps; 1.0 = uniform), every other input position filled with
random tokens of the whole vocabulary (`mqar_random_filler`), and the answer never shown in the
input (`mqar_show_answer`: the older variant put each value after its query key).

`copy`: random tokens, a separator, then the same tokens again; only the copy is scored. With
`scored_positions`, examples also carry `positions`, the indices of the scored positions (a
fixed number per task), so the LM computes its vocabulary-sized head only there.
Example i is a pure function of (seed, split, i), so the sources are random access and
deterministic like the TFDS ones. A training set of at most `_MATERIALIZE_TOKENS` tokens (MQAR's
100k examples) is generated once into memory and batched by numpy gathers, the same stream at a
fraction of the per-step cost (Zoology's recipe cycles a fixed set for epochs); larger ones
(`lm1b.py:synthetic`) are generated on demand, a batch per Grain record.
"""

import time

import grain.python as grain
import numpy as np
from absl import logging

from latent_attention.data import sources

_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_MATERIALIZE_TOKENS = 2 ** 25  # ~400 MB of int32 inputs and targets plus float32 weights.


def _scores_positions(cfg) -> bool:
  # Read once per source, not per example: ConfigDict.get of an absent field builds a
  # did-you-mean message with difflib, 90 us an example (93 of 137 s for 1M examples).
  return bool(cfg.get("scored_positions", False))


def _example(scored_positions, inputs, targets, weights, scored):
  ex = {"inputs": inputs, "targets": targets, "weights": weights}
  if scored_positions:
    ex["positions"] = scored.astype(np.int32)
  return ex


class MqarSource(grain.RandomAccessDataSource):

  def __init__(self, cfg, split, size):
    self.cfg, self._size = cfg, size
    self._seed = (cfg.synthetic_seed, _SPLIT_SEEDS[split])
    self._scored_positions = _scores_positions(cfg)
    t, n = cfg.seq_len, cfg.num_kv_pairs  # their relations: data/config.py.
    power_a = cfg.get("mqar_power_a", 0.01)
    # Zoology's gap law: slot k (1-based, after the context) has probability ~ a * k^(a - 1).
    k = np.arange(1, (t - 2 * n) // 2 + 1, dtype=np.float64)
    self._slot_p = power_a * k ** (power_a - 1)
    self._slot_p /= self._slot_p.sum()

  def __len__(self):
    return self._size

  def __repr__(self):
    return f"{type(self).__name__}({self.cfg.to_dict()}, seed={self._seed}, size={self._size})"

  def __getitem__(self, i):
    t, n, v = self.cfg.seq_len, self.cfg.num_kv_pairs, self.cfg.vocab_size
    cfg = self.cfg
    rng = np.random.default_rng((*self._seed, int(i)))
    keys = rng.choice(np.arange(1, v // 2), n, replace=False)
    values = rng.choice(np.arange(v // 2, v), n, replace=not cfg.get("mqar_distinct_values", True))
    inputs = np.zeros(t, np.int32)
    inputs[0:2 * n:2], inputs[1:2 * n:2] = keys, values
    # Query j asks for keys[j] at input position slots[j]; its target there is values[j].
    slots = 2 * n + 2 * rng.choice(len(self._slot_p), n, replace=False, p=self._slot_p)
    inputs[slots] = keys
    if cfg.get("mqar_show_answer", False):  # slots <= t - 2: the answer fits after each.
      inputs[slots + 1] = values
    if cfg.get("mqar_random_filler", True):
      filler = inputs == 0
      inputs[filler] = rng.integers(0, v, int(filler.sum()))
    targets = np.zeros(t, np.int32)
    targets[slots] = values
    weights = np.zeros(t, np.float32)
    weights[slots] = 1
    return _example(self._scored_positions, inputs, targets, weights, np.sort(slots))


class CopySource(grain.RandomAccessDataSource):

  def __init__(self, cfg, split, size):
    self.cfg, self._size = cfg, size
    self._seed = (cfg.synthetic_seed, _SPLIT_SEEDS[split])
    self._scored_positions = _scores_positions(cfg)

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
    return _example(self._scored_positions, seq[:-1], seq[1:], weights,
                    np.arange(half, 2 * half))


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
    if len(src) * self.cfg.seq_len <= _MATERIALIZE_TOKENS:
      src = _materialize(src)
    return sources.batch_train_loader(src, batch_size, seed, (), self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    return sources.eval_batches(self._source_cls(self.cfg, split, self.cfg.num_eval_examples),
                                batch_size)


def _materialize(src) -> sources.ArrayRecords:
  """Every example of `src` stacked into arrays (example i stays row i)."""
  start = time.time()
  records = sources.ArrayRecords(sources.gather(src, np.arange(len(src))))
  logging.info("generated %d %s training examples in %.1f s", len(src), src.cfg.name,
               time.time() - start)
  return records
