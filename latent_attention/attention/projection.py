"""Linear projections on flattened rows.

XLA:CPU runs the weight gradient of a dot whose activation is 2-D as one GEMM, but takes a much
slower path when the activation keeps [B, T, ...] leading dims (measured 1.4-1.6x on the
backward of the LM's projections). Flattening B and T into rows first changes no parameter
shapes and costs nothing on GPU/TPU.
"""

from flax import linen as nn


def dense(x, features, *, name, dtype, axis=-1):
  """`nn.DenseGeneral(features, axis, use_bias=False)` applied to x with leading dims flattened.

  Call from inside an `@nn.compact` method: the layer becomes a submodule named `name`.
  """
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  n_in = len(axes)
  lead = x.shape[:x.ndim - n_in]
  rows = x.reshape(-1, *x.shape[x.ndim - n_in:])
  out = nn.DenseGeneral(features, axis=tuple(range(1, n_in + 1)), use_bias=False, dtype=dtype,
                        name=name)(rows)
  return out.reshape(*lead, *out.shape[1:])
