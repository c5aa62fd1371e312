"""Linear projections and RMSNorm, written for XLA:CPU's train step.

A projection's kernel keeps its named axes ([D, N, H] for a query, [N, H, D] for an output,
[C, N, H] for MLA's up-projections), but the product is taken on flattened rows against the
kernel viewed as [in, out]: XLA:CPU then computes the weight gradient as one GEMM reading the
activations in place. With the [B, T, ...] leading dims kept it took a 1.4-1.6x slower path,
and with a 3-D kernel it first copied each activation and weight gradient into a transposed
layout (docs/design.md, "CPU train step"). Reshapes are free on GPU/TPU.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

_KERNEL_INIT = nn.initializers.lecun_normal()


def apply_kernel(x, kernel, n_in: int = 1):
  """x's trailing n_in dims contracted with kernel's leading n_in dims, as one 2-D product."""
  k_in = math.prod(kernel.shape[:n_in])
  lead, out = x.shape[:x.ndim - n_in], kernel.shape[n_in:]
  y = jnp.dot(x.reshape(-1, k_in), kernel.reshape(k_in, -1))
  return y.reshape(*lead, *out)


class Dense(nn.Module):
  """`nn.DenseGeneral(features, axis=(-n_in, .., -1), use_bias=False)`: the same kernel name,
  shape and initial values (LeCun normal on the flattened [in, out] matrix)."""

  features: tuple[int, ...]
  n_in: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.n_in:]
    n_in, n_out = math.prod(in_shape), math.prod(self.features)

    def init(rng, shape, dtype=jnp.float32):
      return _KERNEL_INIT(rng, (n_in, n_out), dtype).reshape(shape)

    kernel = self.param("kernel", init, (*in_shape, *self.features), jnp.float32)
    dtype = self.dtype or jnp.result_type(x, kernel)
    return apply_kernel(x.astype(dtype), kernel.astype(dtype), self.n_in)


def dense(x, features, *, name, dtype, axis=-1):
  """A bias-free projection of x's trailing `axis` dims to `features` (int or tuple).

  Call from inside an `@nn.compact` method: the layer becomes a submodule named `name`.
  """
  n_in = 1 if isinstance(axis, int) else len(axis)
  features = (features,) if isinstance(features, int) else tuple(features)
  return Dense(features, n_in, dtype=dtype, name=name)(x)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x²) + ε) · scale (Zhang & Sennrich 2019), statistics in float32.

  `nn.RMSNorm`'s parameter ('scale', ones) and ε, but x is multiplied by the rsqrt first and by
  the scale second: flax forms rsqrt · scale over the whole [.., D] tensor, an elementwise pass
  more in the forward and the backward (about 5% of the nanogpt_cpu train step on XLA:CPU).
  """

  dtype: Any = None
  epsilon: float = 1e-6
  groups: int = 1  # statistics per equal slice of the last axis (GLA's latent heads).

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    if self.groups > 1:
      x32 = x32.reshape(*x.shape[:-1], self.groups, x.shape[-1] // self.groups)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (y.reshape(x.shape) * scale).astype(self.dtype or jnp.result_type(x, scale))
