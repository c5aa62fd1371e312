"""The per-layer decode cache: a Flax `cache` collection written one chunk at a time.

Flax convention (as in the lm1b example): `model.init(..., decode=True)` creates zero buffers
sized for the init input's length; each later `apply(..., decode=True, mutable=['cache'])`
writes the new chunk at the current position. All rows of a batch share one position.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention.core import causal_mask


def heads_major(**chunks_BTKH):
  """Chunks [B, T, K, H] in the decode layout, as `update` keyword arguments.

  [B, K, T, H] (seq_axis 2), or [B, T, H] (seq_axis 1) when K = 1: with a unit head axis,
  XLA:CPU fused the cache write into a reshape and copied the whole cache every step
  (measured 2x on an MQA layer's decode step).
  """
  if all(c.shape[2] == 1 for c in chunks_BTKH.values()):
    return dict(seq_axis=1, **{name: c[:, :, 0] for name, c in chunks_BTKH.items()})
  return dict(seq_axis=2, **{name: c.transpose(0, 2, 1, 3) for name, c in chunks_BTKH.items()})


def update_heads(module: nn.Module, pos_BT: jax.Array, **chunks_BSKX):
  """`update` for chunks [B, S, K_i, X] of any head counts, each kept in the layout
  `core.cached_attention` reads: [B, S, X] when K_i = 1, heads-major [B, K_i, S, X] otherwise
  (e.g. GTA's tied kv heads beside its one RoPE key). Same return value as `update`."""
  one = {name: c[:, :, 0] for name, c in chunks_BSKX.items() if c.shape[2] == 1}
  many = {name: c.transpose(0, 2, 1, 3) for name, c in chunks_BSKX.items() if c.shape[2] > 1}
  results = [update(module, pos_BT, seq_axis=axis, **chunks)
             for axis, chunks in ((1, one), (2, many)) if chunks]
  if not all(results):
    return None
  return {name: buf for r in results for name, buf in r[0].items()}, results[0][1]


def update(module: nn.Module, pos_BT: jax.Array, *, seq_axis: int = 1, **chunks):
  """Writes each `name=array` chunk into `module`'s cache at position pos_BT[0, 0].

  Each chunk's positions lie along `seq_axis` (1 for [B, T, C]; 2 for heads-major [B, K, T, H],
  the layout `core.cached_attention` reads). Returns (cached arrays by name, causal mask_BTS over
  the whole buffer), or None while the cache is being created (model.init), when the caller
  runs its plain forward pass.
  """
  # One sequence: the buffers drop the unit batch axis. With it, XLA:CPU fused the write into
  # the reshape its readers need and copied the whole cache every step (mha, context 8192:
  # 45 ms per step, 7.7x the bandwidth bound).
  single = pos_BT.shape[0] == 1
  if single:
    chunks, seq_axis = {name: c[0] for name, c in chunks.items()}, seq_axis - 1
  created = all(module.has_variable("cache", name) for name in chunks)
  buffers = {name: module.variable("cache", name, jnp.zeros, c.shape, c.dtype)
             for name, c in chunks.items()}
  if not created:
    return None
  start = pos_BT[0, 0]
  out = {}
  for name, chunk in chunks.items():
    buf = buffers[name]
    buf.value = jax.lax.dynamic_update_slice_in_dim(
        buf.value, chunk.astype(buf.value.dtype), start, axis=seq_axis)
    out[name] = buf.value[None] if single else buf.value
  s = next(iter(buffers.values())).value.shape[seq_axis]
  return out, causal_mask(pos_BT, jnp.arange(s)[None, :])
