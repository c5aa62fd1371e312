"""`config.train` and `config.eval` as frozen dataclasses, and `validate_config`: every section
of a config and the relations between sections, checked before anything is built or written."""

import dataclasses
import math
from typing import Mapping

from latent_attention import config as config_lib, models
from latent_attention.config import check_fields, fail
from latent_attention.data.config import IMAGE_CLASSES, SYNTHETIC, TEXT, DataConfig

SECTIONS = ("seed", "model", "data", "train", "eval")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Fields of `config.train`: AdamW with linear warm-up and cosine decay (training/state.py)."""

  batch_size: int = 16  # global batch (sequences or images), split over devices and hosts.
  fsdp: int = 1  # devices each parameter is split over (1 = replicated; sharding.py).
  num_steps: int = 1500  # optimizer steps.
  learning_rate: float = 2e-3  # peak AdamW learning rate.
  end_learning_rate: float = 2e-4  # cosine decay floor.
  warmup_steps: int = 100  # linear warm-up from 0.
  decay_steps: int = 0  # cosine length in steps; 0 = num_steps.
  b1: float = 0.9  # AdamW beta1.
  b2: float = 0.99  # AdamW beta2.
  weight_decay: float = 0.1  # decoupled, on matrices and embeddings only.
  grad_clip_norm: float = 1.0  # global-norm clipping.
  log_every: int = 50  # steps between train metric lines.
  eval_every: int = 500  # steps between evaluations (0 = only at the end).
  eval_batch_size: int = 64  # sequences or images per eval batch.
  checkpoint_every: int = 500  # steps between checkpoints (0 = only at the end).
  keep_checkpoints: int = 3  # newest checkpoints kept.
  init_from: str = ""  # a workdir whose newest parameters start a fresh run ("" = random init).
  # Only DSA's indexer learns (model.attention.index_topk > 0), from its KL to the frozen main
  # attention: DeepSeek-V3.2's dense warm-up (with attention.index_mode=dense_warmup).
  freeze_main: bool = False

  def __post_init__(self):
    check_fields(self, "train",
                 positive=("batch_size", "fsdp", "num_steps", "log_every", "eval_batch_size",
                           "keep_checkpoints"),
                 non_negative=("warmup_steps", "decay_steps", "eval_every", "checkpoint_every"),
                 positive_numbers=("learning_rate", "grad_clip_norm"),
                 non_negative_numbers=("end_learning_rate", "weight_decay"))
    for f in ("b1", "b2"):
      if not 0 <= getattr(self, f) < 1:
        fail(f"train.{f}", getattr(self, f), "must be in [0, 1)")
    if self.end_learning_rate > self.learning_rate:
      fail("train.end_learning_rate", self.end_learning_rate,
           f"the cosine decays to it: must be <= train.learning_rate={self.learning_rate}")
    if self.warmup_steps > self.num_steps:
      fail("train.warmup_steps", self.warmup_steps,
           f"must be <= train.num_steps={self.num_steps}")
    if self.decay_steps and self.decay_steps <= self.warmup_steps:
      fail("train.decay_steps", self.decay_steps,
           f"must be 0 (= num_steps) or > train.warmup_steps={self.warmup_steps}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Fields of `config.eval`: the text sample after training and in eval.py (text LMs)."""

  prompt: str = ""  # the text the sample continues.
  sample_len: int = 0  # tokens sampled (0 = no sample).
  temperature: float = 0.8  # sampling temperature (0 = greedy).
  top_k: int = 0  # sample among the top k (0 = all).

  def __post_init__(self):
    check_fields(self, "eval", non_negative=("sample_len", "top_k"),
                 non_negative_numbers=("temperature",))


def validate_config(config: Mapping) -> None:
  """Checks every section `config` has (a ConfigDict or its dict) as its dataclass, then the
  relations between sections; raises one ValueError naming `section.field=value` and what is
  allowed. Builds and reads nothing: call it before any directory or file is made."""
  unknown = sorted(set(config) - set(SECTIONS))
  if unknown:
    raise ValueError(f"the config has no section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")
  seed = config.get("seed", 0)
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    fail("seed", seed, "must be a non-negative integer")
  model = models.parse_config(config["model"]) if "model" in config else None
  data = config_lib.from_config(DataConfig, config["data"], "data") if "data" in config else None
  if "train" in config:
    config_lib.from_config(TrainConfig, config["train"], "train")
  sample = config_lib.from_config(EvalConfig, config["eval"], "eval") if "eval" in config else None
  if model and data:
    _check_model_data(model, data)
  if "train" in config and config["train"].get("freeze_main") and model and not getattr(
      getattr(model, "attention", None), "index_topk", 0):
    fail("train.freeze_main", True, "it trains DSA's indexer alone: set "
         "model.attention.index_topk > 0 (kind mla), or False")
  if sample and sample.sample_len:
    if data and data.name not in TEXT:
      fail("eval.sample_len", sample.sample_len,
           f"data.name={data.name!r} has no text to sample: set 0")
    if not sample.prompt:
      fail("eval.prompt", sample.prompt, f"eval.sample_len={sample.sample_len} continues a "
           "prompt: give some text (or set eval.sample_len=0)")
    if model and sample.top_k > getattr(model, "vocab_size", math.inf):
      fail("eval.top_k", sample.top_k, f"must be <= model.vocab_size={model.vocab_size}")


def _check_model_data(model, data) -> None:
  """The relations between `config.model` and `config.data`."""
  if model.name == "perceiver":
    if data.name not in IMAGE_CLASSES:
      fail("data.name", data.name, f"model.name='perceiver' classifies images: choose one of "
           f"{', '.join(IMAGE_CLASSES)}")
    if model.num_classes < IMAGE_CLASSES[data.name]:
      fail("model.num_classes", model.num_classes,
           f"{data.name} has {IMAGE_CLASSES[data.name]} classes")
    return
  if data.name not in (*TEXT, *SYNTHETIC):
    fail("data.name", data.name, f"model.name={model.name!r} models token sequences: choose "
         f"one of {', '.join(TEXT + SYNTHETIC)}")
  if data.name in SYNTHETIC and data.vocab_size > model.vocab_size:
    fail("model.vocab_size", model.vocab_size,
         f"must be >= data.vocab_size={data.vocab_size}, the task's tokens")
  if data.name in TEXT and data.tokenizer == "sentencepiece" and (
      data.vocab_size != model.vocab_size):
    fail("model.vocab_size", model.vocab_size,
         f"must equal data.vocab_size={data.vocab_size}, the sentencepiece vocabulary")
  if model.name == "perceiver_ar":
    if data.scored_positions:
      fail("data.scored_positions", True, "model.name='perceiver_ar' scores its last M "
           "positions: set False")
    scored = data.eval_window_targets or data.seq_len
    if data.name in TEXT and scored > model.num_latents:
      fail("data.eval_window_targets", data.eval_window_targets,
           f"model.name='perceiver_ar' scores only its last model.num_latents="
           f"{model.num_latents} positions: give 1..{min(model.num_latents, data.seq_len)} "
           "(0 means data.seq_len)")
