"""Rotary position embedding (Su et al., RoFormer), half-split convention, with YaRN scaling.

YaRN (Peng et al. 2023, arXiv 2309.00071), as DeepSeek-V3's `inference/model.py` applies it to
MLA's decoupled RoPE: a frequency pair that turns more than beta_fast times over the original
context keeps its frequency, one that turns fewer than beta_slow times is divided by the factor
(position interpolation), and the pairs between follow a linear ramp in the pair index; the
softmax scale is multiplied by mscale² = (0.1 · rope_mscale · ln(factor) + 1)².
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "yarn")


def inv_frequencies(dim: int, cfg) -> np.ndarray:
  """The dim/2 rotation frequencies θ^(-2i/dim) of an AttentionConfig's RoPE, YaRN-scaled
  when cfg.rope_scaling == 'yarn' (float32; a constant at trace time)."""
  inv_freq = cfg.rope_theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  if cfg.rope_scaling == "yarn":
    # Pair i turns L / (2π θ^(2i/dim)) times over the original length L: solved for i at a
    # given number of turns, floor/ceil'ed and clipped as DeepSeek-V3 does.
    def pair_at(turns):
      return dim * math.log(cfg.rope_original_len / (turns * 2 * math.pi)) / (
          2 * math.log(cfg.rope_theta))
    low = max(math.floor(pair_at(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(pair_at(cfg.rope_beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / ((high - low) or 0.001), 0, 1)
    inv_freq = inv_freq * (1 - ramp) + inv_freq / cfg.rope_factor * ramp
  return inv_freq.astype(np.float32)


def softmax_scale(qk_dim: int, cfg) -> float:
  """1/sqrt(qk_dim), times YaRN's mscale² when cfg.rope_scaling == 'yarn'."""
  scale = qk_dim ** -0.5
  if cfg.rope_scaling == "yarn":
    scale *= (0.1 * cfg.rope_mscale * math.log(cfg.rope_factor) + 1.0) ** 2
  return scale


def apply_rope(x_BTNH: jax.Array, pos_BT: jax.Array, inv_freq: np.ndarray, *,
               heads_major: bool = False) -> jax.Array:
  """Rotates pairs (x[..., i], x[..., i + H/2]) by angle pos · inv_freq[i] (`inv_frequencies`).

  x is [B, T, N, H], or [B, N, T, H] with heads_major (a decode cache's layout). inv_freq is
  [H/2] for every head, or [N, H/2] for one set per head (MLA's converted RoPE keys).
  """
  h = x_BTNH.shape[-1]
  if h != 2 * inv_freq.shape[-1]:
    raise ValueError(f"RoPE of head dim {h} needs {h // 2} frequencies, got "
                     f"{inv_freq.shape[-1]}")
  head_axis = 1 if heads_major else 2
  pos = pos_BT.astype(jnp.float32)
  if inv_freq.ndim == 1:
    angle = jnp.expand_dims(pos[..., None] * inv_freq, head_axis)
  else:
    angle = pos[..., None, None] * inv_freq  # [B, T, N, H/2]
    angle = angle.swapaxes(1, 2) if heads_major else angle
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return out.astype(x_BTNH.dtype)


def lowrank_key_logits(q_BTNH: jax.Array, c_BNSC: jax.Array, w_CH: jax.Array,
                       inv_freq_H2: np.ndarray) -> jax.Array:
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
  angle_SI = np.arange(c_BNSC.shape[2])[:, None] * np.asarray(inv_freq_H2, np.float64)
  trig_SJ = np.concatenate([np.cos(angle_SI), np.sin(angle_SI)], axis=-1).astype(np.float32)
  map_SBTNC = jnp.einsum("SJ,BTNJC->SBTNC", trig_SJ, fold_BTNJC)
  return jnp.einsum("BNSC,SBTNC->BNTS", c_BNSC.astype(jnp.float32), map_SBTNC)
