"""Rotary position embedding (Su et al., RoFormer), half-split convention."""

import jax
import jax.numpy as jnp


def apply_rope(x_BTNH: jax.Array, pos_BT: jax.Array, theta: float = 10_000.0) -> jax.Array:
  """Rotates pairs (x[..., i], x[..., i + H/2]) by angle pos · theta^(-2i/H)."""
  h = x_BTNH.shape[-1]
  if h % 2:
    raise ValueError(f"RoPE needs an even head dim, got {h}")
  inv_freq_H2 = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angle_BTH2 = pos_BT[..., None].astype(jnp.float32) * inv_freq_H2
  sin_BT1H2 = jnp.sin(angle_BTH2)[:, :, None]
  cos_BT1H2 = jnp.cos(angle_BTH2)[:, :, None]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1H2 - x2 * sin_BT1H2, x2 * cos_BT1H2 + x1 * sin_BT1H2], -1)
  return out.astype(x_BTNH.dtype)
