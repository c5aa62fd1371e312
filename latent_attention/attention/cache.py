"""The per-layer decode cache: a Flax `cache` collection written one chunk at a time.

Flax convention (as in the lm1b example): `model.init(..., decode=True)` creates zero buffers
sized for the init input's length; each later `apply(..., decode=True, mutable=['cache'])`
writes the new chunk at the current position. All rows of a batch share one position.

The cache refuses to overflow (`check_fits`). `dynamic_update_slice` clamps its start index, so
a chunk written past the end would silently overwrite the last slots and every later logit would
be wrong. A chunk longer than the cache is a ValueError at trace time (both lengths are static);
so is a chunk past the end at a concrete position (eager `apply`). Under `jit` the position is
traced: the check is a `jax.experimental.checkify.debug_check`, which callers turn on with
`checkify.checkify(..., errors=checkify.user_checks)` (`models.decoding.checked_apply` does) and
which compiles to nothing otherwise, so `generate`'s loop, which sizes its cache for every
position it decodes, pays nothing (docs/design.md, section 4).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental import checkify

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
  s = next(iter(buffers.values())).value.shape[seq_axis]
  check_fits(start, pos_BT.shape[1], s)
  out = {}
  for name, chunk in chunks.items():
    buf = buffers[name]
    buf.value = jax.lax.dynamic_update_slice_in_dim(
        buf.value, chunk.astype(buf.value.dtype), start, axis=seq_axis)
    out[name] = buf.value[None] if single else buf.value
  return out, causal_mask(pos_BT, jnp.arange(s)[None, :])


def check_fits(start, t: int, s: int) -> None:
  """Refuses a decode chunk of t positions from position `start` that overruns a cache of s.

  t > s: ValueError at trace time. A concrete start (eager apply): ValueError. A traced start
  (jit): a checkify check, reported under `checkify.checkify` and free without it.
  """
  fix = "size the cache for every position decoded (models.decoding.init_cache's max_len)"
  if t > s:
    raise ValueError(f"a decode chunk of {t} tokens overflows the decode cache of {s} "
                     f"positions: {fix}")
  if not isinstance(start, jax.core.Tracer):
    if int(start) + t > s:
      raise ValueError(f"a decode chunk of {t} tokens at position {int(start)} overflows the "
                       f"decode cache of {s} positions ({int(start)} + {t} > {s}): {fix}")
    return
  checkify.debug_check(start + t <= s, f"a decode chunk of {t} tokens at position {{start}} "
                       f"overflows the decode cache of {s} positions: {fix}", start=start)
