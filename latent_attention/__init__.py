"""latent_attention: MHA, GQA, MQA, MLA, Perceiver and related attention in JAX/Flax.

Einsum letters used in every array name (e.g. `q_BTNH`), defined once here:

  B batch               T query length          S key/value length
  D model width         N query heads           K key/value heads
  G query heads per kv head (N / K)             H head dim
  C latent rank (MLA's d_c, or the low-rank r)  R RoPE dim (MLA's d_R)
  M latents             V vocabulary            F MLP hidden width
"""

from latent_attention.kv_cache import kv_cache_bytes, kv_cache_formula_bytes

__all__ = ["kv_cache_bytes", "kv_cache_formula_bytes"]
