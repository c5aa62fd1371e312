"""Image classification on TFDS `mnist`, `fashion_mnist` and `cifar10` (uint8 pixels)."""

import grain.python as grain
import numpy as np

from latent_attention.data import sources


class ToExample(grain.MapTransform):

  def map(self, record):
    return {"inputs": np.asarray(record["image"], np.uint8),
            "targets": np.asarray(record["label"], np.int32),
            "weights": np.ones((), np.float32)}


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
    """Pixels: the length of the sequence a Perceiver attends over."""
    h, w, _ = self.input_shape()
    return h * w

  def train_loader(self, batch_size, seed):
    src = sources.tfds_source(self.cfg.name, self.cfg.train_split, self.cfg.data_dir)
    return sources.train_loader(src, batch_size, seed, [ToExample()], self.cfg.worker_count)

  def eval_batches(self, split, batch_size):
    src = sources.tfds_source(self.cfg.name, split, self.cfg.data_dir)
    return sources.eval_batches(src, batch_size, [ToExample()])
