"""The one definition of KV-cache bytes (docs/design.md, Measurements)."""

import jax
import jax.numpy as jnp
import numpy as np


def kv_cache_bytes(cache) -> int:
  """Total nbytes of the cached tensors in a `cache` collection (or its eval_shape).

  The int32 decode position counter is bookkeeping, not key/value state, and is not counted.
  """
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(cache) if jnp.issubdtype(x.dtype, jnp.floating))


def kv_cache_formula_bytes(model_config, seq_len: int, batch: int, dtype=jnp.float32) -> int:
  """Analytic cache size (docs/design.md's per-token table), `seq_len` tokens of `batch` rows."""
  from latent_attention.models import build_model  # models import this module's package.
  return build_model(model_config).cache_elements(seq_len, batch) * jnp.dtype(dtype).itemsize
