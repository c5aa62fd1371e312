"""Multi-head, grouped-query and multi-query attention (Shazeer 2019; Ainslie et al. 2023).

One module: N query heads share K key/value heads in groups of G = N / K. `mha` is K = N,
`mqa` is K = 1 (Shazeer 2019). The cache holds K and V, heads-major [B, K, S, H]: 2·K·H elements
per token per layer.
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import cached_attention, dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale


class GroupedQueryAttention(nn.Module):
  """Self- or cross-attention with N query heads over K kv heads."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    return 2 * cfg.kv_heads * cfg.head_dim

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False, shared_kv=None, return_kv=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    n, k, h = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    dense = functools.partial(projection.dense, dtype=self.dtype)
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    q_BTNH = dense(x_BTD, (n, h), name="query")
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS, shared_kv=shared_kv)
    inv_freq = inv_frequencies(h, cfg)
    if pos_BT is not None:
      q_BTNH = apply_rope(q_BTNH, pos_BT, inv_freq)
    if shared_kv is None:  # this layer computes (and caches) its own keys and values.
      k_BSKH = dense(kv_BSD, (k, h), name="key")
      v_BSKH = dense(kv_BSD, (k, h), name="value")
      if pos_BT is not None:
        k_BSKH = apply_rope(k_BSKH, kv_pos_BS, inv_freq)
      cached = decode and cache.update(self, pos_BT, **cache.heads_major(
          cached_key=k_BSKH, cached_value=v_BSKH))
      shared_kv = {"cache": cached} if cached else {"key": k_BSKH, "value": v_BSKH}
    if "cache" in shared_kv:
      buffers, mask_BTS = shared_kv["cache"]
      out_BTNH = cached_attention((q_BTNH,), (buffers["cached_key"],), buffers["cached_value"],
                                  mask_BTS=mask_BTS, scale=softmax_scale(h, cfg))
    else:
      out_BTNH = dot_product_attention(q_BTNH, shared_kv["key"], shared_kv["value"],
                                       mask_BTS=mask_BTS, is_causal=is_causal,
                                       scale=softmax_scale(h, cfg),
                                       implementation=cfg.implementation)
    y_BTD = dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
    return (y_BTD, shared_kv) if return_kv else y_BTD
