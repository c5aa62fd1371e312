"""Low-rank per-head K/V with a per-token softmax gate over heads (this project's variant;
docs/design.md).

Each head i has its own rank-r key latent U_k,i x and value latent U_v,i x (U_k, U_v: D -> N·r);
one up-projection V_k (V_v): r -> H, shared by all heads, expands them to head width. Queries are
the usual per-head W_Q x. A gate g = softmax(W_g x) over the N heads (per token) weights each
head's output. The cache holds the rank-r latents, 2·N·r elements per token per layer, and V_k,
V_v are re-applied to the whole cache every step (RoPE sits between V_k and the score, so V_k
cannot be folded into the query as MLA's absorbed mode does).

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
from latent_attention.attention.core import dot_product_attention, plan_masks
from latent_attention.attention.rope import apply_rope


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
    if decode and (cached := cache.update(self, pos_BT, cached_k_latent=ck_BSNC,
                                          cached_v_latent=cv_BSNC)):
      buffers, mask_BTS = cached
      ck_BSNC, cv_BSNC, is_causal = buffers["cached_k_latent"], buffers["cached_v_latent"], False
      b, s = ck_BSNC.shape[:2]
      kv_pos_BS = jnp.broadcast_to(jnp.arange(s), (b, s))
    k_BSNH = dense(ck_BSNC, h, name="k_up")
    v_BSNH = dense(cv_BSNC, h, name="v_up")
    if pos_BT is not None:
      q_BTNH = apply_rope(q_BTNH, pos_BT, cfg.rope_theta)
      k_BSNH = apply_rope(k_BSNH, kv_pos_BS, cfg.rope_theta)
    out_BTNH = dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask_BTS=mask_BTS,
                                     is_causal=is_causal, implementation=cfg.implementation)
    gate_logits_BTN = nn.Dense(n, dtype=self.dtype, name="gate")(x_BTD)
    gate_BTN = jax.nn.softmax(gate_logits_BTN.astype(jnp.float32), axis=-1).astype(self.dtype)
    if cfg.lowrank_combine == "sum":
      mixed_BTH = jnp.einsum("BTNH,BTN->BTH", out_BTNH, gate_BTN)
      return dense(mixed_BTH, self.d_model, name="out")
    return dense(out_BTNH * gate_BTN[..., None], self.d_model, axis=(-2, -1), name="out")
