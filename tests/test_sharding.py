"""Where the FSDP rule puts each array (training/sharding.py); the equivalence of a sharded run
to a replicated one is tests/test_training.py's four-device test."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from latent_attention.training import sharding


@pytest.mark.parametrize("shape,fsdp,spec", [
    ((64, 128), 4, P(None, "fsdp")),  # the largest dimension.
    ((128, 64), 4, P("fsdp", None)),
    ((4, 32, 6), 4, P(None, "fsdp", None)),
    ((6, 32), 4, P(None, "fsdp")),
    ((96, 6), 4, P("fsdp", None)),
    ((10, 12), 4, P(None, "fsdp")),  # the largest that fsdp divides.
    ((8, 8), 2, P("fsdp", None)),  # ties: the first.
    ((), 4, P()),  # scalars (the step counter) stay whole.
    ((5, 7), 2, P()),  # no dimension divisible.
    ((64, 128), 1, P()),  # fsdp = 1: replicated.
])
def test_array_spec_splits_the_largest_divisible_dimension(shape, fsdp, spec):
  assert sharding.array_spec(shape, fsdp) == spec


def test_bad_fsdp_is_one_line_naming_the_divisors():
  n = jax.device_count()
  with pytest.raises(ValueError, match=rf"^train.fsdp=0 is invalid: choose a divisor of the "
                                       rf"{n} devices \(1"):
    sharding.make_mesh(0)
  with pytest.raises(ValueError, match=r"train.fsdp=" + str(n + 1)):
    sharding.make_mesh(n + 1)
  assert sharding.make_mesh(1).shape == {"data": n, "fsdp": 1}
