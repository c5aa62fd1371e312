"""latent_attention: MHA, GQA, MQA, MLA, Perceiver and related attention in JAX/Flax.

Einsum letters used in every array name (e.g. `q_BTNH`), defined once here:

  B batch               T query length          S key/value length
  D model width         N query heads           K key/value heads
  G query heads per kv head (N / K)             H head dim
  C latent rank (MLA's d_c, or the low-rank r)  R RoPE dim (MLA's d_R)
  M latents             V vocabulary            F MLP hidden width
"""

import importlib

__all__ = ["kv_cache_bytes", "kv_cache_formula_bytes"]


def __getattr__(name):
  """`latent_attention.kv_cache_bytes` etc., loaded on first use (PEP 562) so that importing a
  submodule (the command-line entry points' flag and config parsing) does not import JAX."""
  if name in __all__:
    return getattr(importlib.import_module("latent_attention.models.kv_cache"), name)
  raise AttributeError(f"module 'latent_attention' has no attribute {name!r}")
