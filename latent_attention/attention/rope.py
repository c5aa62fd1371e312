"""Rotary position embedding (Su et al., RoFormer), half-split convention."""

import jax
import jax.numpy as jnp
import numpy as np


def apply_rope(x_BTNH: jax.Array, pos_BT: jax.Array, theta: float = 10_000.0, *,
               heads_major: bool = False) -> jax.Array:
  """Rotates pairs (x[..., i], x[..., i + H/2]) by angle pos · theta^(-2i/H).

  x is [B, T, N, H], or [B, N, T, H] with heads_major (a decode cache's layout).
  """
  h = x_BTNH.shape[-1]
  if h % 2:
    raise ValueError(f"RoPE needs an even head dim, got {h}")
  inv_freq_H2 = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angle_BTH2 = pos_BT[..., None].astype(jnp.float32) * inv_freq_H2
  head_axis = 1 if heads_major else 2
  sin_BT1H2 = jnp.expand_dims(jnp.sin(angle_BTH2), head_axis)
  cos_BT1H2 = jnp.expand_dims(jnp.cos(angle_BTH2), head_axis)
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1H2 - x2 * sin_BT1H2, x2 * cos_BT1H2 + x1 * sin_BT1H2], -1)
  return out.astype(x_BTNH.dtype)


def lowrank_key_logits(q_BTNH: jax.Array, c_BNSC: jax.Array, w_CH: jax.Array,
                       theta: float = 10_000.0) -> jax.Array:
  """q_t · RoPE_s(c_s W) for keys kept as rank-C latents c_s in cache slots s = 0..S-1.

  Equal to rotating the expanded keys, without forming the [B, N, S, H] keys: with
  u = c W split in halves (u1, u2), q · RoPE_s(u) = Σ_i cos_i(s) (q1 u1 + q2 u2)_i +
  sin_i(s) (q2 u1 − q1 u2)_i, so each query first folds W into two [H/2, C] maps, one GEMM
  with the [S, H] cos|sin table gives a [S, C] map per query, and a product with the latents
  gives the logits. Per slot that is T·N·C numbers to N·H for expanding: cheaper while T·C < H.
  Returns logits_BNTS in float32 (q should already be rotated to its own positions).
  """
  h2 = q_BTNH.shape[-1] // 2
  q1_BTNI, q2_BTNI = jnp.split(q_BTNH.astype(jnp.float32), 2, axis=-1)
  w1_IC, w2_IC = w_CH[:, :h2].T.astype(jnp.float32), w_CH[:, h2:].T.astype(jnp.float32)
  fold_BTNJC = jnp.concatenate([
      q1_BTNI[..., None] * w1_IC + q2_BTNI[..., None] * w2_IC,  # cos terms.
      q2_BTNI[..., None] * w1_IC - q1_BTNI[..., None] * w2_IC], axis=3)  # sin terms.
  # The table is a constant of the cache length: numpy at trace time, not sin/cos every step.
  angle_SI = np.arange(c_BNSC.shape[2])[:, None] * theta ** (-np.arange(0, 2 * h2, 2) / (2 * h2))
  trig_SJ = np.concatenate([np.cos(angle_SI), np.sin(angle_SI)], axis=-1).astype(np.float32)
  map_SBTNC = jnp.einsum("SJ,BTNJC->SBTNC", trig_SJ, fold_BTNJC)
  return jnp.einsum("BNSC,SBTNC->BNTS", c_BNSC.astype(jnp.float32), map_SBTNC)
