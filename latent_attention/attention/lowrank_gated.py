"""Low-rank per-head K/V with a per-token softmax gate over heads (this project's variant;
docs/design.md).

Each head i has its own rank-r key latent U_k,i x and value latent U_v,i x (U_k, U_v: D -> N·r);
one up-projection V_k (V_v): r -> H, shared by all heads, expands them to head width. Queries are
the usual per-head W_Q x. A gate g = softmax(W_g x) over the N heads (per token) weights each
head's output. The cache holds the rank-r latents heads-major, 2·N·r elements per token per
layer. Decoding applies V_v after the attention-weighted sum of the value latents (it is linear
and shared by the heads). RoPE sits between V_k and the score, so V_k cannot be folded into the
query as MLA's absorbed mode does; `rope.lowrank_key_logits` instead takes the logits straight
from the key latents with a cos|sin table, never forming the [B, N, S, H] keys.

Fixes to the seed's code:
  - It sums the gated heads to width H, then reshapes [B, T, H] to [B, T, D] and crashes
    ("shape '[4, 128, 512]' is invalid for input of size 32768"). `lowrank_combine='concat'`
    (default) scales each head by its gate and concatenates, then W_O: N·H -> D, so the heads
    keep separate subspaces; `'sum'` keeps the seed's gate-weighted sum of heads and projects
    it with a correct W_O: H -> D.
  - Its per-head "latent bias" L_i adds one constant to every score of head i; softmax is
    invariant to that, so it is left out (tests/test_variants.py proves it).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import cache, projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.core import cached_attention, dot_product_attention, plan_masks
from latent_attention.attention.rope import (apply_rope, inv_frequencies, lowrank_key_logits,
                                             softmax_scale)


class LowRankGatedAttention(nn.Module):
  """Seed-003 attention; see the module docstring."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    return 2 * cfg.num_heads * cfg.lowrank_rank

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False):
    """See `latent_attention.attention` for the shared call signature."""
    cfg = self.cfg
    n, h, r = cfg.num_heads, cfg.head_dim, cfg.lowrank_rank
    dense = functools.partial(projection.dense, dtype=self.dtype)
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    q_BTNH = dense(x_BTD, (n, h), name="query")
    ck_BSNC = dense(kv_BSD, (n, r), name="k_down")
    cv_BSNC = dense(kv_BSD, (n, r), name="v_down")
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS)
    inv_freq, scale = inv_frequencies(h, cfg), softmax_scale(h, cfg)
    if decode and (cached := cache.update(self, pos_BT, seq_axis=2,
                                          cached_k_latent=ck_BSNC.transpose(0, 2, 1, 3),
                                          cached_v_latent=cv_BSNC.transpose(0, 2, 1, 3))):
      buffers, mask_BTS = cached
      ck_BNSC, cv_BNSC = buffers["cached_k_latent"], buffers["cached_v_latent"]
      q_BTNH = apply_rope(q_BTNH, pos_BT, inv_freq)
      if x_BTD.shape[1] * r < h:  # Decoding: logits straight from the latents.
        w_CH = self.variables["params"]["k_up"]["kernel"].astype(self.dtype)
        o_BTNC = cached_attention((), (), cv_BNSC, mask_BTS=mask_BTS, scale=scale,
                                  logits_BNTS=lowrank_key_logits(q_BTNH, ck_BNSC, w_CH,
                                                                 inv_freq))
      else:  # A long chunk (prefill): expanding the keys once is cheaper.
        b, _, s = ck_BNSC.shape[:3]
        k_BNSH = apply_rope(dense(ck_BNSC, h, name="k_up"),
                            jnp.broadcast_to(jnp.arange(s), (b, s)), inv_freq,
                            heads_major=True)
        o_BTNC = cached_attention((q_BTNH,), (k_BNSH,), cv_BNSC, mask_BTS=mask_BTS,
                                  scale=scale)
      # V_v is linear and shared by the heads: applied after the weighted sum of the latents.
      out_BTNH = dense(o_BTNC, h, name="v_up")
    else:
      k_BSNH = dense(ck_BSNC, h, name="k_up")
      v_BSNH = dense(cv_BSNC, h, name="v_up")
      if pos_BT is not None:
        q_BTNH = apply_rope(q_BTNH, pos_BT, inv_freq)
        k_BSNH = apply_rope(k_BSNH, kv_pos_BS, inv_freq)
      out_BTNH = dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask_BTS=mask_BTS,
                                       is_causal=is_causal, scale=scale,
                                       implementation=cfg.implementation)
    gate_logits_BTN = nn.Dense(n, dtype=self.dtype, name="gate")(x_BTD)
    gate_BTN = jax.nn.softmax(gate_logits_BTN.astype(jnp.float32), axis=-1).astype(self.dtype)
    if cfg.lowrank_combine == "sum":
      mixed_BTH = jnp.einsum("BTNH,BTN->BTH", out_BTNH, gate_BTN)
      return dense(mixed_BTH, self.d_model, name="out")
    return dense(out_BTNH * gate_BTN[..., None], self.d_model, axis=(-2, -1), name="out")
