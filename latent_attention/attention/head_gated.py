"""Dynamic top-k head selection on an MHA base, with a straight-through gate (this
project's variant; docs/design.md).

A light scorer (Dense D -> N) rates the N heads from a pooled summary of the input; each sequence
keeps its k best heads (`head_gated_top_k`, or round(N · `head_gated_keep_fraction`), at least 1).
The mask is hard 0/1 in the forward pass and straight-through in the backward pass:
mask = hard + (soft - stop_gradient(soft)) with soft = softmax(scores), so its forward value is
exactly 0 or 1 and the scorer still gets a gradient. Skipped heads are never computed: the kept
heads' slices of the Q/K/V/O kernels are gathered per batch row, so FLOPs scale by about k/N.
Because of that, the mask entries of skipped heads (value 0) get no gradient either; the scorer
learns through the softmax coupling of the kept entries. In array names K is the k kept heads.

Pooling (`head_gated_pool`): the seed pools over the whole sequence, which in a causal LM lets
every position see the future through the selection. `first` (default) scores the hidden state
at position 0, which every position can see, so it is causal and the selection is fixed while
decoding (rows must not be left-padded). `mean` pools over all positions and is only allowed
with causal=False.

The cache is the base MHA formula applied to the kept heads, 2·k·H elements per token per layer,
plus the selected head indices (int32 bookkeeping, made when the cache is first written at
position 0 and reused by every later step). The seed's RL gating (policy gradient) is not built.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import cached_attention, dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale


def kept_heads(cfg: AttentionConfig) -> int:
  """k, the heads each sequence keeps."""
  return cfg.head_gated_top_k or max(1, round(cfg.num_heads * cfg.head_gated_keep_fraction))


class HeadGatedAttention(nn.Module):
  """Seed-004 attention; see the module docstring."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    return 2 * kept_heads(cfg) * cfg.head_dim

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    n, h, k = cfg.num_heads, cfg.head_dim, kept_heads(cfg)
    if cfg.head_gated_pool == "mean" and (causal or decode):
      flag = "causal" if causal else "decode"
      raise ValueError(f"model.attention.head_gated_pool='mean' is invalid with {flag}=True: "
                       "the mean over all positions reads future tokens; use 'first'")
    self_attn = kv_BSD is None
    x_BTD = x_BTD.astype(self.dtype)
    kv_BSD = x_BTD if self_attn else kv_BSD.astype(self.dtype)

    pooled_BD = x_BTD[:, 0] if cfg.head_gated_pool == "first" else x_BTD.mean(axis=1)
    scores_BN = nn.Dense(n, dtype=self.dtype, name="scorer")(pooled_BD).astype(jnp.float32)
    heads_BK = jax.lax.top_k(scores_BN, k)[1]
    if decode:
      created = self.has_variable("cache", "cached_heads")
      cached_heads = self.variable("cache", "cached_heads", jnp.zeros, heads_BK.shape, jnp.int32)
      if created:
        cached_heads.value = jnp.where(pos_BT[0, 0] == 0, heads_BK, cached_heads.value)
        heads_BK = cached_heads.value
    soft_BK = jnp.take_along_axis(jax.nn.softmax(scores_BN, axis=-1), heads_BK, axis=1)
    gate_BK = (1.0 + (soft_BK - jax.lax.stop_gradient(soft_BK))).astype(self.dtype)

    d_in, d_kv = x_BTD.shape[-1], kv_BSD.shape[-1]
    in_init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    wq_DNH = self.param("query", in_init, (d_in, n, h))
    wk_DNH = self.param("key", in_init, (d_kv, n, h))
    wv_DNH = self.param("value", in_init, (d_kv, n, h))
    wo_NHD = self.param("out", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                        (n, h, self.d_model))
    q_BTKH = jnp.einsum("BTD,DBKH->BTKH", x_BTD, wq_DNH[:, heads_BK].astype(self.dtype))
    k_BSKH = jnp.einsum("BSD,DBKH->BSKH", kv_BSD, wk_DNH[:, heads_BK].astype(self.dtype))
    v_BSKH = jnp.einsum("BSD,DBKH->BSKH", kv_BSD, wv_DNH[:, heads_BK].astype(self.dtype))
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS)
    if pos_BT is not None:
      inv_freq = inv_frequencies(h, cfg)
      q_BTKH = apply_rope(q_BTKH, pos_BT, inv_freq)
      k_BSKH = apply_rope(k_BSKH, kv_pos_BS, inv_freq)
    if decode and (cached := cache.update(self, pos_BT, **cache.heads_major(
        cached_key=k_BSKH, cached_value=v_BSKH))):
      buffers, mask_BTS = cached
      out_BTKH = cached_attention((q_BTKH,), (buffers["cached_key"],), buffers["cached_value"],
                                  mask_BTS=mask_BTS, scale=softmax_scale(h, cfg))
    else:
      out_BTKH = dot_product_attention(q_BTKH, k_BSKH, v_BSKH, mask_BTS=mask_BTS,
                                       is_causal=is_causal, scale=softmax_scale(h, cfg),
                                       implementation=cfg.implementation)
    out_BTKH = out_BTKH * gate_BK[:, None, :, None]
    return jnp.einsum("BTKH,BKHD->BTD", out_BTKH, wo_NHD[heads_BK].astype(self.dtype))
