"""Image classification on TFDS `mnist`, `fashion_mnist` and `cifar10` (uint8 pixels).

Each split is decoded once into memory (these datasets are tens of MB) and batches are numpy
gathers, so image decoding never shows up in the step time.
"""

import functools
import time

import numpy as np
from absl import logging

from latent_attention.data import sources

_DECODE_CHUNK = 5000  # records per `__getitems__` call while decoding a split.


@functools.lru_cache(maxsize=4)
def decoded_split(name: str, split: str, data_dir=None) -> sources.ArrayRecords:
  """Every example of a TFDS split as arrays: inputs uint8 [N, H, W, C], targets, weights."""
  start = time.time()
  src = sources.tfds_source(name, split, data_dir)
  images, labels = [], []
  for first in range(0, len(src), _DECODE_CHUNK):
    rows = src.__getitems__(range(first, min(len(src), first + _DECODE_CHUNK)))
    images += [np.asarray(r["image"], np.uint8) for r in rows]
    labels += [r["label"] for r in rows]
  arrays = {"inputs": np.stack(images), "targets": np.asarray(labels, np.int32),
            "weights": np.ones(len(labels), np.float32)}
  logging.info("decoded %s/%s: %d images in %.1f s (%.0f MB in memory)", name, split,
               len(labels), time.time() - start, arrays["inputs"].nbytes / 2 ** 20)
  return sources.ArrayRecords(arrays)


class ImageClassification:
  """Loaders for a TFDS image dataset with `image` and `label` features."""

  task = "classify"

  def __init__(self, data_cfg, metadata=None):
    del metadata  # nothing dataset-specific to restore.
    self.cfg = data_cfg

  input_dtype = np.uint8

  def metadata(self) -> dict:
    return {}

  def input_shape(self):
    src = sources.tfds_source(self.cfg.name, self.cfg.train_split, self.cfg.data_dir)
    return tuple(np.asarray(src[0]["image"]).shape)

  def tokens_per_example(self):
    """Pixels: the length of the sequence a pixel Perceiver attends over."""
    h, w, _ = self.input_shape()
    return h * w

  def _records(self, split):
    return decoded_split(self.cfg.name, split, self.cfg.data_dir)

  def train_loader(self, batch_size, seed):
    return sources.batch_train_loader(self._records(self.cfg.train_split), batch_size, seed, (),
                                      self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    return sources.eval_batches(self._records(split), batch_size)
