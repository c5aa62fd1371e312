"""Grain random-access sources and the loader shared by every dataset.

TFDS datasets are read with `tfds.data_source` (ArrayRecord, random access); no TensorFlow is
imported on the input path. Training loaders shuffle with a seeded `grain.IndexSampler` and each
JAX process reads its slice of every global batch (`BatchSlices`), so the stream is
deterministic, the same on any number of processes, and its position is checkpointed with the
model. Grain handles one record per *batch* (`ArrayBatches`, gathered with one vectorised numpy
index where the source has one), which keeps that stream at a fraction of the per-record cost.
"""

import functools

import grain.python as grain
import jax
import numpy as np

from latent_attention.data import prepare


def tfds_source(name: str, split: str, data_dir=None):
  """`tfds.data_source(name, split)`, preparing the dataset first when it is missing."""
  import tensorflow_datasets as tfds  # heavy import, only for TFDS-backed datasets.
  builder = prepare.ensure_prepared(name, data_dir)
  return tfds.data_source(name, split=split, data_dir=builder.data_dir_root, download=False)


class WindowSource(grain.RandomAccessDataSource):
  """Record i = tokens[i * stride : i * stride + length] of a 1-D token array."""

  def __init__(self, tokens: np.ndarray, length: int, stride: int = 1):
    if tokens.size < length:
      raise ValueError(f"text of {tokens.size} tokens is shorter than one window of {length}")
    self._tokens, self._length, self._stride = tokens, length, stride
    self._n = (tokens.size - length) // stride + 1

  def __len__(self):
    return self._n

  def __repr__(self):
    # Grain compares reprs to check a restored iterator belongs to this source.
    return (f"WindowSource(tokens={self._tokens.size}, length={self._length}, "
            f"stride={self._stride})")

  def __getitem__(self, i):
    start = int(i) * self._stride
    return self._tokens[start:start + self._length]

  def gather(self, keys: np.ndarray) -> np.ndarray:
    """Windows `keys` as one [len(keys), length] array: one fancy index into the tokens."""
    return np.asarray(self._tokens[keys[:, None] * self._stride + np.arange(self._length)])


class ArrayRecords(grain.RandomAccessDataSource):
  """Record i = {name: array[i]} of equal-length in-memory arrays (decoded once, indexed)."""

  def __init__(self, arrays: dict):
    self.arrays = arrays
    self._n = len(next(iter(arrays.values())))

  def __len__(self):
    return self._n

  def __repr__(self):
    return f"ArrayRecords({self._n} x {sorted(self.arrays)})"

  def __getitem__(self, i):
    return {name: array[i] for name, array in self.arrays.items()}

  def gather(self, keys: np.ndarray) -> dict:
    return {name: array[keys] for name, array in self.arrays.items()}


class BatchSlices:
  """A grain sampler: this process's slice of every global batch of one endless shuffle.

  Global batch j is positions j*B .. j*B+B-1 of a seeded shuffle of the records, whatever the
  process count; process i reads rows i*b .. i*b+b-1 of it (b = B / processes), which
  `jax.make_array_from_process_local_data` puts back together. A run thus trains on the same
  batches on one process or many (grain's ShardByJaxProcess would shuffle a contiguous share
  of the records per process instead: another stream for every process count).
  """

  def __init__(self, num_records: int, batch_size: int, seed: int):
    self._shuffle = grain.IndexSampler(num_records=num_records, shuffle=True, num_epochs=None,
                                       seed=seed, shard_options=grain.NoSharding())
    self._n, self._seed = num_records, seed
    self._batch, self._local = batch_size, per_process_batch(batch_size)
    self._first = jax.process_index() * self._local
    # On one process the stream is the one grain's ShardByJaxProcess sampler gave before
    # BatchSlices existed: its description lets checkpoints saved then resume.
    self._single = grain.IndexSampler(
        num_records=num_records, shuffle=True, num_epochs=None, seed=seed,
        shard_options=grain.ShardByJaxProcess(drop_remainder=True)
    ) if jax.process_count() == 1 else None

  def __len__(self):
    return len(self._shuffle)

  def __repr__(self):
    # Grain checks a restored iterator's sampler by its repr: another process count refuses.
    if self._single is not None:
      return repr(self._single)
    return (f"BatchSlices({self._shuffle!r}, batch={self._batch}, "
            f"rows={self._first}..{self._first + self._local - 1})")

  def __getitem__(self, i):
    return self._shuffle[self._global_index(i)]

  def record_keys(self, first: int, count: int) -> np.ndarray:
    """`self[i].record_key` for i in first .. first + count - 1, as int64.

    The permutation IndexSampler's shuffle draws (tests/test_multiprocess.py compares them past
    the first epoch): epoch e is Grain's `index_shuffle` keyed by seed + e, called here once per
    record (~3 us) without `MapDataset.shuffle`'s per-record bookkeeping (~10 us) or
    IndexSampler's metadata (~100 us).
    """
    keys = np.empty(count, np.int64)
    for r in range(count):
      epoch, k = divmod(self._global_index(first + r), self._n)
      keys[r] = grain.experimental.index_shuffle(k, max_index=self._n - 1,
                                                 seed=(self._seed + epoch) % 2 ** 32, rounds=4)
    return keys

  def _global_index(self, i):
    j, r = divmod(int(i), self._local)
    return j * self._batch + self._first + r


class ArrayBatches(grain.RandomAccessDataSource):
  """Record j = this process's j-th batch of an endless shuffled pass over `records`.

  Batch j holds the records a per-record Grain loader (`BatchSlices` sampler, then
  `grain.Batch`) would batch as its j-th batch, so the stream is the same, at one Python call
  and one vectorised `gather(records, keys)` per batch instead of Grain's per-record path
  (~0.5 ms a record: 120-140 ms for lm1b's 256 windows; docs/results/input_pipeline.md).
  """

  def __init__(self, records, batch_size: int, seed: int):
    self._records, self._seed = records, seed
    self._local = per_process_batch(batch_size)
    self._sampler = BatchSlices(len(records), batch_size, seed)

  def __len__(self):
    return 2 ** 62  # endless; a step count, not an epoch, ends training.

  def __repr__(self):
    return f"ArrayBatches({self._records!r}, batch={self._local}, seed={self._seed})"

  def __getitem__(self, j):
    return gather(self._records, self._sampler.record_keys(int(j) * self._local, self._local))


def gather(records, keys: np.ndarray):
  """Records `keys` of `records` as one batch: its own vectorised `gather` where it has one
  (an array of windows, a dict of arrays), else its records stacked."""
  if hasattr(records, "gather"):
    return records.gather(keys)
  rows = [records[k] for k in keys]
  return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def batch_train_loader(records, batch_size: int, seed: int, operations=(),
                       worker_count: int = 0, read_ahead: int = 8):
  """Infinite shuffled loader of this process's share of each global batch, one Grain record
  per batch (`ArrayBatches`); `operations` map whole batches. Grain's reader threads keep
  `read_ahead` batches ready (its default, 500 records, would hold 750 MB of lm1b batches),
  one thread per batch in flight (more could not run: Grain warns)."""
  return batch_loader(ArrayBatches(records, batch_size, seed), operations, worker_count,
                      read_ahead)


def batch_loader(batches, operations=(), worker_count: int = 0, read_ahead: int = 8):
  """Grain's `DataLoader` over `batches` (record j = batch j), in order, endlessly."""
  sampler = grain.IndexSampler(num_records=len(batches), shuffle=False, num_epochs=None,
                               shard_options=grain.NoSharding())
  return grain.DataLoader(data_source=batches, sampler=sampler, operations=operations,
                          worker_count=worker_count,
                          read_options=grain.ReadOptions(num_threads=read_ahead,
                                                         prefetch_buffer_size=read_ahead))


def eval_batches(source, batch_size: int, operations=()):
  """Every record of `source` exactly once, in order, in fixed-size padded batches.

  Each process reads its own contiguous shard; all processes yield the same number of batches
  (padded with weight-0 rows) so the sharded eval step stays in lockstep.
  """
  local_batch = per_process_batch(batch_size)
  n, p, i = len(source), jax.process_count(), jax.process_index()
  per_proc = -(-n // p)
  indices = range(i * per_proc, min(n, (i + 1) * per_proc))
  num_batches = -(-per_proc // local_batch)
  for b in range(num_batches):
    rows = [source[j] for j in indices[b * local_batch:(b + 1) * local_batch]]
    for op in operations:
      rows = [op.map(r) for r in rows]
    if not rows:  # the last shard is the shortest: the others may still fill this batch.
      first = functools.reduce(lambda row, op: op.map(row), operations, source[0])
      rows = [{k: np.zeros_like(v) for k, v in first.items()}]  # weight 0, like the padding.
    yield pad_batch(rows, local_batch)


def pad_batch(rows, size):
  """Stacks dict rows into a batch of `size`, padding with copies whose weights are 0."""
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  missing = size - len(rows)
  if missing:
    batch = {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
             for k, v in batch.items()}
  return batch


def per_process_batch(batch_size: int) -> int:
  if batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={batch_size} is invalid: must be divisible by the "
                     f"process count {jax.process_count()}")
  return batch_size // jax.process_count()
