"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434, section 2.1 and appendix C).

Keys and values are up-projected from one low-rank latent c_KV = RMSNorm(W_DKV h) of rank d_c,
and position enters through a decoupled RoPE key k_R = RoPE(W_KR h) that ONE head shares with
all query heads. The cache therefore needs only c_KV and k_R: d_c + d_R elements per token per
layer. Decode modes (`mla_decode_mode`), equal in exact arithmetic:

  naive     caches the expanded per-head K and V (what MHA would cache), for reference;
  latent    caches c_KV and k_R and re-expands K and V over the whole cache every step;
  absorbed  caches c_KV and k_R and never expands: W_UK is folded into the query, so scores
            are taken against c_KV directly (a single shared "kv head" of width d_c + d_R),
            and W_UV is applied after the weighted sum over c_KV.
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope

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
      cq_BTC = nn.RMSNorm(dtype=self.dtype, name="q_norm")(
          dense(x_BTD, cfg.q_lora_rank, name="q_down"))
      q_BTNH = dense(cq_BTC, (n, nope + r), name="q_up")
    else:
      q_BTNH = dense(x_BTD, (n, nope + r), name="query")
    q_nope_BTNH, q_rope_BTNR = q_BTNH[..., :nope], q_BTNH[..., nope:]
    ckv_BSC = nn.RMSNorm(dtype=self.dtype, name="kv_norm")(dense(kv_BSD, c, name="kv_down"))
    k_rope_BSR = dense(kv_BSD, r, name="k_rope")
    if pos_BT is not None:
      q_rope_BTNR = apply_rope(q_rope_BTNR, pos_BT, cfg.rope_theta)
      k_rope_BSR = apply_rope(k_rope_BSR[:, :, None], kv_pos_BS, cfg.rope_theta)[:, :, 0]
    w_uk_CNH = self.param("k_up", _init, (c, n, nope)).astype(self.dtype)
    w_uv_CNH = self.param("v_up", _init, (c, n, dv)).astype(self.dtype)
    scale = (nope + r) ** -0.5
    q_BTNH = jnp.concatenate([q_nope_BTNH, q_rope_BTNR], axis=-1)

    def expand(ckv_BSC, k_rope_BSR):
      k_nope_BSNH = jnp.einsum("BSC,CNH->BSNH", ckv_BSC, w_uk_CNH)
      k_rope_BSNR = jnp.broadcast_to(k_rope_BSR[:, :, None], (*k_rope_BSR.shape[:2], n, r))
      v_BSNH = jnp.einsum("BSC,CNH->BSNH", ckv_BSC, w_uv_CNH)
      return jnp.concatenate([k_nope_BSNH, k_rope_BSNR], axis=-1), v_BSNH

    mode = cfg.mla_decode_mode if decode else "latent"
    if mode == "naive":
      k_BSNH, v_BSNH = expand(ckv_BSC, k_rope_BSR)
      if cached := cache.update(self, pos_BT, cached_key=k_BSNH, cached_value=v_BSNH):
        buffers, mask_BTS = cached
        k_BSNH, v_BSNH, is_causal = buffers["cached_key"], buffers["cached_value"], False
    else:
      if decode and (cached := cache.update(self, pos_BT, cached_ckv=ckv_BSC,
                                            cached_k_rope=k_rope_BSR)):
        buffers, mask_BTS = cached
        ckv_BSC, k_rope_BSR, is_causal = buffers["cached_ckv"], buffers["cached_k_rope"], False
      if mode == "latent":
        k_BSNH, v_BSNH = expand(ckv_BSC, k_rope_BSR)

    if mode == "absorbed":
      q_abs_BTNC = jnp.einsum("BTNH,CNH->BTNC", q_nope_BTNH, w_uk_CNH)
      q_BTNC = jnp.concatenate([q_abs_BTNC, q_rope_BTNR], axis=-1)
      k_BS1C = jnp.concatenate([ckv_BSC, k_rope_BSR], axis=-1)[:, :, None]
      o_BTNC = dot_product_attention(q_BTNC, k_BS1C, ckv_BSC[:, :, None], mask_BTS=mask_BTS,
                                     is_causal=is_causal, scale=scale,
                                     implementation=cfg.implementation)
      out_BTNH = jnp.einsum("BTNC,CNH->BTNH", o_BTNC, w_uv_CNH)
    else:
      out_BTNH = dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask_BTS=mask_BTS,
                                       is_causal=is_causal, scale=scale,
                                       implementation=cfg.implementation)
    return dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
