"""Input pipelines by `config.data.name`: TFDS (tfds.data_source + Grain) and synthetic."""

from latent_attention import config as config_lib
from latent_attention.data.config import IMAGE_CLASSES, SYNTHETIC, TEXT, DataConfig
from latent_attention.data.images import ImageClassification
from latent_attention.data.prepare import DatasetMissingError
from latent_attention.data.synthetic import Synthetic
from latent_attention.data.text import TextLM
from latent_attention.data.tokenizer import CharVocab

_DATASETS = {**dict.fromkeys(TEXT, TextLM), **dict.fromkeys(IMAGE_CLASSES, ImageClassification),
             **dict.fromkeys(SYNTHETIC, Synthetic)}


def make_dataset(data_cfg, metadata: dict | None = None):
  """The dataset object for `data_cfg.name`; `metadata` restores e.g. a saved vocabulary."""
  config_lib.from_config(DataConfig, data_cfg, "data")  # every field checked before any read.
  return _DATASETS[data_cfg.name](data_cfg, metadata)


__all__ = ["make_dataset", "DatasetMissingError", "CharVocab", "TextLM"]
