"""Tensor product attention (Zhang et al. 2025, "Tensor Product Attention Is All You Need",
arXiv 2501.06425; reference code tensorgi/T6).

Each token's queries, keys and values [N, H] are means of R rank-one products of a head factor
a (length N) and a feature factor b (length H): Q = (1/R_Q) Σ_r a_r^Q ⊗ b_r^Q, and likewise K
(rank R_K) and V (rank R_V), all factors linear in the token. RoPE rotates the query and key
feature factors (rotation is linear, so this rotates Q and K). The cache holds the key and value
factors: (R_K + R_V)·(N + H) elements per token per layer. A decode step contracts them without
forming K or V: q_n · k_n(s) = (1/R_K) Σ_r a_r,n^K(s) (q_n · b_r^K(s)), and the weighted sum of
values is (1/R_V) Σ_{s,r} p_n(s) a_r,n^V(s) b_r^V(s), handed to the core as a function of the
probabilities. A long chunk (a prefill) expands K and V once instead, where that takes fewer FLOPs
(`factors_are_cheaper`).
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import (QUERY_CHUNK, cached_attention, dot_product_attention,
                                             plan_masks)
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale


def _product(a_BTRN, b_BTRH):
  """(1/R) Σ_r a_r ⊗ b_r: [B, T, N, H]."""
  return jnp.einsum("BTRN,BTRH->BTNH", a_BTRN, b_BTRH) / a_BTRN.shape[2]


class TensorProductAttention(nn.Module):
  """Self- or cross-attention with factorised Q, K, V; see the module docstring."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    return (cfg.tpa_k_rank + cfg.tpa_v_rank) * (cfg.num_heads + cfg.head_dim)

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False, shared_kv=None, return_kv=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    n, h = cfg.num_heads, cfg.head_dim
    dense = functools.partial(projection.dense, dtype=self.dtype)
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS, shared_kv=shared_kv)
    inv_freq = inv_frequencies(h, cfg)
    aq_BTRN = dense(x_BTD, (cfg.tpa_q_rank, n), name="q_head")
    bq_BTRH = dense(x_BTD, (cfg.tpa_q_rank, h), name="q_feature")
    if pos_BT is not None:
      bq_BTRH = apply_rope(bq_BTRH, pos_BT, inv_freq)
    q_BTNH, scale = _product(aq_BTRN, bq_BTRH), softmax_scale(h, cfg)
    if shared_kv is None:  # this layer computes (and caches) its own key and value factors.
      factors = {"k_head": dense(kv_BSD, (cfg.tpa_k_rank, n), name="k_head"),
                 "k_feature": dense(kv_BSD, (cfg.tpa_k_rank, h), name="k_feature"),
                 "v_head": dense(kv_BSD, (cfg.tpa_v_rank, n), name="v_head"),
                 "v_feature": dense(kv_BSD, (cfg.tpa_v_rank, h), name="v_feature")}
      if pos_BT is not None:
        factors["k_feature"] = apply_rope(factors["k_feature"], kv_pos_BS, inv_freq)
      cached = decode and cache.update(
          self, pos_BT, **{f"cached_{name}": f for name, f in factors.items()})
      shared_kv = {"cache": cached} if cached else factors
    if "cache" in shared_kv:
      buffers, mask_BTS = shared_kv["cache"]
      ak, bk = buffers["cached_k_head"], buffers["cached_k_feature"]
      av, bv = buffers["cached_v_head"], buffers["cached_v_feature"]
      t = x_BTD.shape[1]
      if factors_are_cheaper(cfg, t) and t <= QUERY_CHUNK:
        logits_BNTS = jnp.einsum("BTNH,BSRH,BSRN->BNTS", q_BTNH.astype(jnp.float32), bk,
                                 ak) / cfg.tpa_k_rank

        def weighted_values(p_BNTS):
          return jnp.einsum("BNTS,BSRN,BSRH->BTNH", p_BNTS, av, bv) / cfg.tpa_v_rank

        out_BTNH = cached_attention((), (), weighted_values, mask_BTS=mask_BTS, scale=scale,
                                    logits_BNTS=logits_BNTS).astype(q_BTNH.dtype)
      else:  # A prefill: expanding K and V once is cheaper (and the query blocks need arrays).
        k_BNSH = _product(ak, bk).transpose(0, 2, 1, 3)
        out_BTNH = cached_attention((q_BTNH,), (k_BNSH,),
                                    _product(av, bv).transpose(0, 2, 1, 3),
                                    mask_BTS=mask_BTS, scale=scale)
    else:
      f = shared_kv
      out_BTNH = dot_product_attention(
          q_BTNH, _product(f["k_head"], f["k_feature"]), _product(f["v_head"], f["v_feature"]),
          mask_BTS=mask_BTS, is_causal=is_causal, scale=scale,
          implementation=cfg.implementation)
    y_BTD = dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
    return (y_BTD, shared_kv) if return_kv else y_BTD


def factors_are_cheaper(cfg: AttentionConfig, t: int) -> bool:
  """Contracting the cached factors for t queries takes fewer FLOPs than expanding K and V.

  Per cached token: contracting costs t·N·(R_K·H + R_V·(H + 1)) (scores through each key
  factor, then the value factors); expanding costs N·H·(R_K + R_V) once, then t·2·N·H. With
  R_K = R_V = 2 only single-token steps contract: what decoding does.
  """
  h, rk, rv = cfg.head_dim, cfg.tpa_k_rank, cfg.tpa_v_rank  # N is a factor of both sides.
  return t * (rk * h + rv * (h + 1)) < h * (rk + rv) + 2 * t * h
