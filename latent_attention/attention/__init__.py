"""Attention mechanisms, selected by `AttentionConfig.kind`.

Every module shares one call signature:

  module(x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None, causal=True,
         decode=False) -> y_BTD

  kv_BSD     keys/values source; None = self-attention on x_BTD.
  pos_BT     positions for RoPE (and the decode write index); None = no RoPE (Perceiver).
  kv_pos_BS  positions of kv_BSD (cross-attention only).
  mask_BTS   boolean, True where query t may see key s (padding); ANDed with causal.
  causal     lower-triangular masking by position.
  decode     read/extend the `cache` collection (see `attention.cache`).

and a static `cache_elements_per_token(cfg)`: the analytic decode cache size of one layer.
"""

from latent_attention.attention.config import KINDS, AttentionConfig, check_width
from latent_attention.attention.gqa import GroupedQueryAttention
from latent_attention.attention.gta import GroupedTiedAttention
from latent_attention.attention.head_gated import HeadGatedAttention
from latent_attention.attention.lowrank_gated import LowRankGatedAttention
from latent_attention.attention.mla import MultiHeadLatentAttention
from latent_attention.attention.tpa import TensorProductAttention

_MODULES = {
    "mha": GroupedQueryAttention,
    "gqa": GroupedQueryAttention,
    "mqa": GroupedQueryAttention,
    "mla": MultiHeadLatentAttention,
    "gla": MultiHeadLatentAttention,
    "gta": GroupedTiedAttention,
    "tpa": TensorProductAttention,
    "lowrank_gated": LowRankGatedAttention,
    "head_gated": HeadGatedAttention,
}


def module_class(cfg: AttentionConfig):
  if cfg.kind not in _MODULES:
    raise ValueError(f"model.attention.kind={cfg.kind!r} is not built yet; available: "
                     f"{', '.join(_MODULES)}")
  return _MODULES[cfg.kind]


def make_attention(cfg: AttentionConfig, d_model: int, dtype, name=None):
  """The attention module of `cfg.kind` for model width `d_model`."""
  check_width(cfg, d_model)
  return module_class(cfg)(cfg=cfg, d_model=d_model, dtype=dtype, name=name)


def cache_elements_per_token(cfg: AttentionConfig) -> int:
  """Cached elements per token per layer (docs/design.md's table)."""
  return module_class(cfg).cache_elements_per_token(cfg)


__all__ = ["KINDS", "AttentionConfig", "make_attention", "cache_elements_per_token"]
