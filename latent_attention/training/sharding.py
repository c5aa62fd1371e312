"""The device mesh, and where each array of the batch and of the train state lives.

Mesh axes ('data', 'fsdp'). The batch is split over both axes, so every device sees its own
examples. With `train.fsdp = F > 1`, every parameter and optimizer-state array is also split
over the F devices of the 'fsdp' axis along its largest dimension that F divides (ZeRO-3 /
FSDP, Rajbhandari et al. 2020, arXiv 1910.02054; the rule of big_vision's `fsdp` strategy). These
are sharding annotations only: XLA's SPMD partitioner inserts the all-gathers before each use and
reduce-scatters the gradients, so the model code is the same for every layout. An array that F
divides in no dimension (step counters, most norm scales of a tiny model) stays replicated.
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def make_mesh(fsdp: int, devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: every device), F = `fsdp` along 'fsdp'.

  `devices` may be compile-only ones of a TPU slice or GPU node (bench/preflight.py)."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    raise ValueError(f"train.fsdp={fsdp!r} is invalid: choose a divisor of the {n} devices "
                     f"({', '.join(map(str, divisors))}; 1 = replicated parameters)")
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((n // fsdp, fsdp), AXES, axis_types=(auto, auto), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def array_spec(shape, fsdp: int) -> P:
  """The largest dimension that `fsdp` divides goes on 'fsdp' (the first of equal ones)."""
  if fsdp > 1:
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % fsdp == 0:
        return P(*(["fsdp" if d == dim else None for d in range(len(shape))]))
  return P()


def state_sharding(abstract_tree, mesh):
  """A NamedSharding per array of `abstract_tree` (shapes only, e.g. from jax.eval_shape)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, array_spec(x.shape, fsdp)), abstract_tree)
