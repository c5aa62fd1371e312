"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434, section 2.1 and appendix C).

Keys and values are up-projected from one low-rank latent c_KV = RMSNorm(W_DKV h) of rank d_c,
and position enters through a decoupled RoPE key k_R = RoPE(W_KR h) that ONE head shares with
all query heads. The cache therefore needs only c_KV and k_R: d_c + d_R elements per token per
layer. Decode modes (`mla_decode_mode`), equal in exact arithmetic:

  naive     caches the expanded per-head K and V (what MHA would cache), for reference;
  latent    caches c_KV and k_R and re-expands K and V over the whole cache every step;
  absorbed  caches c_KV and k_R and never expands: W_UK is folded into the query, so scores
            are taken against c_KV and k_R directly (one shared "kv head" of width d_c + d_R,
            read from the two buffers), and W_UV is applied after the weighted sum over c_KV.
            A chunk long enough that expanding is cheaper in FLOPs (a prefill;
            `absorb_is_cheaper`) expands instead.

Decoding reads the cache through `core.cached_attention` (naive mode: heads-major [B, N, S, H]).
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import cached_attention, dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale

_init = nn.initializers.lecun_normal()


class MultiHeadLatentAttention(nn.Module):
  """MLA self- or cross-attention; see the module docstring."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    if cfg.mla_decode_mode == "naive":
      return cfg.num_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    return cfg.kv_lora_rank + cfg.qk_rope_head_dim

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    dense = functools.partial(projection.dense, dtype=self.dtype)
    n, c, r = cfg.num_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    nope, dv = cfg.qk_nope_head_dim, cfg.v_head_dim
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS)

    if cfg.q_lora_rank:
      cq_BTC = projection.RMSNorm(dtype=self.dtype, name="q_norm")(
          dense(x_BTD, cfg.q_lora_rank, name="q_down"))
      q_BTNH = dense(cq_BTC, (n, nope + r), name="q_up")
    else:
      q_BTNH = dense(x_BTD, (n, nope + r), name="query")
    q_nope_BTNH, q_rope_BTNR = q_BTNH[..., :nope], q_BTNH[..., nope:]
    ckv_BSC = projection.RMSNorm(dtype=self.dtype, name="kv_norm")(
        dense(kv_BSD, c, name="kv_down"))
    k_rope_BSR = dense(kv_BSD, r, name="k_rope")
    if pos_BT is not None:
      inv_freq = inv_frequencies(r, cfg)
      q_rope_BTNR = apply_rope(q_rope_BTNR, pos_BT, inv_freq)
      k_rope_BSR = apply_rope(k_rope_BSR[:, :, None], kv_pos_BS, inv_freq)[:, :, 0]
    w_uk_CNH = self.param("k_up", _init, (c, n, nope)).astype(self.dtype)
    w_uv_CNH = self.param("v_up", _init, (c, n, dv)).astype(self.dtype)
    scale = softmax_scale(nope + r, cfg)
    q_BTNH = jnp.concatenate([q_nope_BTNH, q_rope_BTNR], axis=-1)

    if not decode or not (cached := self._cache(pos_BT, ckv_BSC, k_rope_BSR, w_uk_CNH,
                                                w_uv_CNH)):
      k_nope_BSNH = projection.apply_kernel(ckv_BSC, w_uk_CNH)
      k_rope_BSNR = jnp.broadcast_to(k_rope_BSR[:, :, None], (*k_rope_BSR.shape[:2], n, r))
      out_BTNH = dot_product_attention(
          q_BTNH, jnp.concatenate([k_nope_BSNH, k_rope_BSNR], axis=-1),
          projection.apply_kernel(ckv_BSC, w_uv_CNH), mask_BTS=mask_BTS,
          is_causal=is_causal, scale=scale, implementation=cfg.implementation)
      return dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
    buffers, mask_BTS = cached
    t = x_BTD.shape[1]
    if cfg.mla_decode_mode == "naive":
      out_BTNH = cached_attention((q_BTNH,), (buffers["cached_key"],), buffers["cached_value"],
                                  mask_BTS=mask_BTS, scale=scale)
    elif cfg.mla_decode_mode == "absorbed" and absorb_is_cheaper(cfg, t):
      q_abs_BTNC = jnp.einsum("BTNH,CNH->BTNC", q_nope_BTNH, w_uk_CNH)
      ckv_BSC = buffers["cached_ckv"]
      o_BTNC = cached_attention((q_abs_BTNC, q_rope_BTNR), (ckv_BSC, buffers["cached_k_rope"]),
                                ckv_BSC, mask_BTS=mask_BTS, scale=scale)
      out_BTNH = jnp.einsum("BTNC,CNH->BTNH", o_BTNC, w_uv_CNH)
    else:  # latent, or a chunk long enough that expanding K and V is cheaper (a prefill).
      ckv_BSC = buffers["cached_ckv"]
      out_BTNH = cached_attention(
          (q_nope_BTNH, q_rope_BTNR),
          (jnp.einsum("BSC,CNH->BNSH", ckv_BSC, w_uk_CNH), buffers["cached_k_rope"]),
          jnp.einsum("BSC,CNH->BNSH", ckv_BSC, w_uv_CNH), mask_BTS=mask_BTS, scale=scale)
    return dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")

  def _cache(self, pos_BT, ckv_BSC, k_rope_BSR, w_uk_CNH, w_uv_CNH):
    """Writes this chunk into the cache (see `cache.update`); naive mode caches expanded heads."""
    if self.cfg.mla_decode_mode != "naive":
      return cache.update(self, pos_BT, cached_ckv=ckv_BSC, cached_k_rope=k_rope_BSR)
    n, r = self.cfg.num_heads, self.cfg.qk_rope_head_dim
    b, s = k_rope_BSR.shape[:2]
    k_nope_BNSH = jnp.einsum("BSC,CNH->BNSH", ckv_BSC, w_uk_CNH)
    k_rope_BNSR = jnp.broadcast_to(k_rope_BSR[:, None], (b, n, s, r))
    return cache.update(self, pos_BT, seq_axis=2,
                        cached_key=jnp.concatenate([k_nope_BNSH, k_rope_BNSR], axis=-1),
                        cached_value=jnp.einsum("BSC,CNH->BNSH", ckv_BSC, w_uv_CNH))


def absorb_is_cheaper(cfg: AttentionConfig, t: int) -> bool:
  """Absorbed attention of t queries takes fewer FLOPs than expanding K and V over the cache.

  Per cached token, absorbed costs t·N·(2·d_c + d_R) (scores and sum against the latent);
  expanding costs N·d_c·(d_nope + d_v) once, then t·N·(d_nope + d_R + d_v). Decoding (t = 1)
  absorbs; a long prefill expands, as a full forward pass does.
  """
  c, nope, dv = cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.v_head_dim
  return t * (2 * c - nope - dv) < c * (nope + dv)

