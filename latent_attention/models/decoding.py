"""Autoregressive generation on the KV-cached decode path.

A decode chunk past the cache's end is refused (attention/cache.py): a ValueError where the
lengths or the position are static, a checkify check where the position is traced (jit), which
`checked_apply` turns on. `generate` sizes its cache for every position it decodes, never
overflows, and runs unchecked: the check compiles to nothing there.
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental import checkify


def init_cache(model: nn.Module, batch: int, max_len: int):
  """A zeroed `cache` collection for `max_len` positions, without running the model."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch, max_len), jnp.int32),
                         decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_logits(rng, logits_BV, temperature: float, top_k: int):
  """Greedy when temperature == 0, else softmax(logits / temperature) over the top_k (0 = all)."""
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def generate(model, params, prompt_BT, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0):
  """Prefills the prompt in one chunk, then samples `max_new_tokens` one at a time.

  Returns the new tokens [B, max_new_tokens].
  """
  b, t = prompt_BT.shape
  cache = init_cache(model, b, t + max_new_tokens)
  logits_BTV, mutated = model.apply({"params": params, "cache": cache}, prompt_BT, decode=True,
                                    mutable=["cache"])
  rng, step_rng = jax.random.split(rng)
  first_B = sample_logits(step_rng, logits_BTV[:, -1], temperature, top_k)

  def step(carry, rng):
    cache, tok_B = carry
    logits_B1V, mutated = model.apply({"params": params, "cache": cache}, tok_B[:, None],
                                      decode=True, mutable=["cache"])
    nxt_B = sample_logits(rng, logits_B1V[:, -1], temperature, top_k)
    return (mutated["cache"], nxt_B), tok_B

  (_, last_B), toks_NB = jax.lax.scan(step, (mutated["cache"], first_B),
                                       jax.random.split(rng, max_new_tokens - 1))
  return jnp.concatenate([toks_NB.T, last_B[:, None]], axis=1)


def checked_apply(model: nn.Module):
  """A jitted decode call `apply(variables, tokens_BT) -> (logits, mutated)` whose cache-overflow
  check is on: a chunk past the end of the cache raises `checkify.JaxRuntimeError` naming the
  position and both lengths, instead of clamping the write. It takes decode_chunks' keywords
  (`decode=True, mutable=("cache",)`), the only ones it runs."""
  run = jax.jit(checkify.checkify(functools.partial(model.apply, decode=True, mutable=["cache"]),
                                  errors=checkify.user_checks))

  def apply(variables, tokens_BT, *, decode=True, mutable=("cache",)):
    if decode is not True or list(mutable) != ["cache"]:
      raise ValueError(f"checked_apply decodes with the cache mutable; got decode={decode!r}, "
                       f"mutable={mutable!r}")
    err, out = run(variables, tokens_BT)
    err.throw()
    return out

  return apply


def decode_chunks(model: nn.Module, params, tokens_BT, chunks, apply=None):
  """Feeds tokens_BT through the decode path in chunks of the given sizes (prefill, steps).

  Returns the concatenated logits of every chunk and the final cache; `apply` defaults to
  `model.apply` (pass a jitted one to test under jit).
  """
  apply = apply or model.apply
  cache = init_cache(model, tokens_BT.shape[0], tokens_BT.shape[1])
  outs, start = [], 0
  for size in chunks:
    logits, mutated = apply({"params": params, "cache": cache},
                            tokens_BT[:, start:start + size], decode=True, mutable=("cache",))
    cache, start = mutated["cache"], start + size
    outs.append(logits)
  return jnp.concatenate(outs, axis=1), cache
