"""Input pipelines by `config.data.name`: TFDS (tfds.data_source + Grain) and synthetic."""

from latent_attention.data.images import ImageClassification
from latent_attention.data.prepare import DatasetMissingError
from latent_attention.data.synthetic import Synthetic
from latent_attention.data.text import TextLM
from latent_attention.data.tokenizer import CharVocab

_DATASETS = {
    "tiny_shakespeare": TextLM,
    "lm1b": TextLM,
    "mnist": ImageClassification,
    "fashion_mnist": ImageClassification,
    "cifar10": ImageClassification,
    "mqar": Synthetic,
    "copy": Synthetic,
}


def make_dataset(data_cfg, metadata: dict | None = None):
  """The dataset object for `data_cfg.name`; `metadata` restores e.g. a saved vocabulary."""
  if data_cfg.name not in _DATASETS:
    raise ValueError(f"data.name={data_cfg.name!r} is invalid: choose one of "
                     f"{', '.join(_DATASETS)}")
  return _DATASETS[data_cfg.name](data_cfg, metadata)


__all__ = ["make_dataset", "DatasetMissingError", "CharVocab", "TextLM"]
