"""Model construction from `config.model` (a ConfigDict)."""

from flax import linen as nn

from latent_attention import config as config_lib
from latent_attention.attention import AttentionConfig
from latent_attention.models.lm import LMConfig, TransformerLM
from latent_attention.models.perceiver import Perceiver, PerceiverConfig
from latent_attention.models.perceiver_ar import PerceiverAR, PerceiverARConfig

_BUILDERS = {
    "lm": (LMConfig, TransformerLM),
    "perceiver": (PerceiverConfig, Perceiver),
    "perceiver_ar": (PerceiverARConfig, PerceiverAR),
}


def parse_config(model_config):
  """config.model -> the model's frozen dataclass (validated)."""
  name = config_lib.to_dict(model_config).get("name", "lm")
  if name not in _BUILDERS:
    raise ValueError(f"model.name={name!r} is invalid: choose one of {', '.join(_BUILDERS)}")
  cfg_cls, _ = _BUILDERS[name]
  nested = {}
  for section in ("attention", "cross_attention"):
    if section in model_config:
      try:
        nested[section] = config_lib.from_config(
            AttentionConfig, model_config[section], f"model.{section}")
      except ValueError as e:  # AttentionConfig names its fields model.attention.*.
        raise ValueError(str(e).replace("model.attention.", f"model.{section}.", 1)) from None
  return config_lib.from_config(cfg_cls, model_config, "model", **nested)


def build_model(model_config) -> nn.Module:
  """The Flax module described by `config.model` (ConfigDict, dict or parsed dataclass)."""
  cfg = model_config if not hasattr(model_config, "keys") else parse_config(model_config)
  for cfg_cls, module_cls in _BUILDERS.values():
    if isinstance(cfg, cfg_cls):
      return module_cls(cfg)
  raise TypeError(f"cannot build a model from {type(model_config).__name__}")


__all__ = ["build_model", "parse_config", "LMConfig", "TransformerLM", "PerceiverConfig",
           "Perceiver", "PerceiverARConfig", "PerceiverAR"]
