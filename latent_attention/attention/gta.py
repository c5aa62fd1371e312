"""Grouped-tied attention (Zadouri, Strauss & Dao 2025, "Hardware-Efficient Attention for Fast
Decoding", arXiv 2505.21487, section 3.1).

GQA whose key and value share one projection: each of the K groups has a tied head kv of width
H. The value is all of kv; the key is kv's first H − d_R dims (no RoPE) joined with one RoPE key
of width d_R (H/2 in the paper) that every head shares, and each query's last d_R dims are
rotated to match. The cache holds the tied heads and the one RoPE key: K·H + d_R elements per
token per layer (the reference code, Dao-AILab/grouped-latent-attention, caches the RoPE key once
per head; this one caches what the formula counts). Decoding sums the two score parts in the core
without concatenating them.
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import cached_attention, dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale


class GroupedTiedAttention(nn.Module):
  """Self- or cross-attention with N query heads over K tied kv heads; see the module doc."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    return cfg.kv_heads * cfg.head_dim + cfg.qk_rope_head_dim

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False, shared_kv=None, return_kv=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    n, k, h, r = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.qk_rope_head_dim
    dense = functools.partial(projection.dense, dtype=self.dtype)
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS, shared_kv=shared_kv)
    q_BTNH = dense(x_BTD, (n, h), name="query")
    q_nope_BTNP, q_rope_BTNR = q_BTNH[..., :h - r], q_BTNH[..., h - r:]
    inv_freq = inv_frequencies(r, cfg)
    if pos_BT is not None:
      q_rope_BTNR = apply_rope(q_rope_BTNR, pos_BT, inv_freq)
    scale = softmax_scale(h, cfg)
    if shared_kv is None:  # this layer computes (and caches) its own tied heads and RoPE key.
      kv_BSKH = dense(kv_BSD, (k, h), name="kv")  # the values, and the keys' first H - d_R.
      k_rope_BS1R = dense(kv_BSD, r, name="k_rope")[:, :, None]
      if pos_BT is not None:
        k_rope_BS1R = apply_rope(k_rope_BS1R, kv_pos_BS, inv_freq)
      cached = decode and cache.update_heads(self, pos_BT, cached_kv=kv_BSKH,
                                             cached_k_rope=k_rope_BS1R)
      shared_kv = {"cache": cached} if cached else {"kv": kv_BSKH, "k_rope": k_rope_BS1R}
    if "cache" in shared_kv:
      buffers, mask_BTS = shared_kv["cache"]
      kv = buffers["cached_kv"]  # [B, K, S, H], or [B, S, H] for one group.
      # The query's non-RoPE part, zero-padded to H, scores against the whole tied head: the
      # same logits as against kv[..., :H - d_R], whose slice XLA:CPU copied every step.
      q_pad_BTNH = jnp.pad(q_nope_BTNP, [(0, 0)] * 3 + [(0, r)])
      out_BTNH = cached_attention((q_pad_BTNH, q_rope_BTNR), (kv, buffers["cached_k_rope"]), kv,
                                  mask_BTS=mask_BTS, scale=scale)
    else:
      kv_BSKH = shared_kv["kv"]
      k_rope_BSKR = jnp.broadcast_to(shared_kv["k_rope"], (*kv_BSKH.shape[:3], r))
      k_BSKH = jnp.concatenate([kv_BSKH[..., :h - r], k_rope_BSKR], axis=-1)
      out_BTNH = dot_product_attention(
          jnp.concatenate([q_nope_BTNP, q_rope_BTNR], axis=-1), k_BSKH, kv_BSKH,
          mask_BTS=mask_BTS, is_causal=is_causal, scale=scale, implementation=cfg.implementation)
    y_BTD = dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
    return (y_BTD, shared_kv) if return_kv else y_BTD
