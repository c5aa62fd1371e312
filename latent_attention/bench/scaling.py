"""Time against input length N: a Perceiver latent encoder (fixed M) against full self-attention.

For every N both encoders' jitted forward and forward+backward (gradients w.r.t. params and
input) are timed: the median of `repeats` blocked calls after one warm-up call (compilation).
`fit_exponent` fits k of time ∝ N^k by least squares on log-log.
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np

from latent_attention import timing
from latent_attention.attention import AttentionConfig
from latent_attention.attention.induced import AttentionBlock
from latent_attention.models.latent_encoder import LatentEncoder

MODES = ("fwd", "fwd+bwd")


def encoders(cfg: AttentionConfig, d_model: int, num_latents: int, dtype) -> dict:
  """The two encoders compared, of the same width and attention kind, one layer each."""
  return {"perceiver": LatentEncoder(cfg, d_model, num_latents, dtype),
          "full": AttentionBlock(cfg, d_model, 4 * d_model, dtype=dtype)}


def time_encoder(module, n: int, *, batch: int, d_model: int, dtype, repeats: int):
  """(forward, forward+backward) median seconds at input length n."""
  x_BSD = jax.random.normal(jax.random.key(0), (batch, n, d_model), dtype)
  params = jax.jit(module.init)(jax.random.key(1), x_BSD)

  def loss(params, x_BSD):
    return module.apply(params, x_BSD).astype(jnp.float32).sum()

  forward = jax.jit(module.apply)
  backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return tuple(statistics.median(timing.time_calls(lambda f=f: f(params, x_BSD),
                                                   repeats=repeats))
               for f in (forward, backward))


def fit_exponent(lengths, seconds, min_len: int) -> float:
  """Slope of log(time) against log(N), least squares over N >= min_len (NaN under 2 points)."""
  pts = [(n, s) for n, s in zip(lengths, seconds) if n >= min_len and s is not None]
  if len(pts) < 2:
    return float("nan")
  n, s = np.log(np.array(pts)).T
  return float(np.polyfit(n, s, 1)[0])
