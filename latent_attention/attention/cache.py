"""The per-layer decode cache: a Flax `cache` collection written one chunk at a time.

Flax convention (as in the lm1b example): `model.init(..., decode=True)` creates zero buffers
sized for the init input's length; each later `apply(..., decode=True, mutable=['cache'])`
writes the new chunk at the current position. All rows of a batch share one position.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention.core import causal_mask


def update(module: nn.Module, pos_BT: jax.Array, **chunks):
  """Writes each `name=array_BT...` chunk into `module`'s cache at position pos_BT[0, 0].

  Returns (cached arrays by name, causal mask_BTS over the whole buffer), or None while the
  cache is being created (model.init), when the caller runs its plain forward pass.
  """
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
        buf.value, chunk.astype(buf.value.dtype), start, axis=1)
    out[name] = buf.value
  s = next(iter(out.values())).shape[1]
  mask_BTS = causal_mask(pos_BT, jnp.arange(s)[None, :])
  return out, mask_BTS
