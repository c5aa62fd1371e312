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


def decode_read_bytes(model_config, context: int, batch: int, dtype=jnp.float32) -> int:
  """Cache bytes one decode step reads with `context` tokens cached: all of them, except with
  DSA (attention.index_topk > 0, latent or absorbed), whose step reads every indexer key and the
  c_KV and k_R of index_topk positions only (attention/mla.py), per layer and row."""
  att = getattr(model_config, "attention", None)
  if att is None or not att.index_topk or att.mla_decode_mode == "naive":
    return kv_cache_formula_bytes(model_config, context, batch, dtype)
  per_layer = (context * att.index_head_dim
               + min(att.index_topk, context) * (att.kv_lora_rank + att.qk_rope_head_dim))
  return model_config.num_layers * per_layer * batch * jnp.dtype(dtype).itemsize
