"""The one way this codebase times jitted work: warm up, then time blocked calls.

JAX dispatches asynchronously, so a call returns before the device finishes; each timed call is
therefore followed by `jax.block_until_ready` on what it returned. The warm-up calls absorb
compilation and first-touch allocation (docs/design.md, Measurements).
"""

import time

import jax


def time_calls(call, *, repeats: int, warmup: int = 1) -> list[float]:
  """Seconds of each of `repeats` calls of `call()`, each blocked until its result is ready,
  after `warmup` calls that are not timed. `call` may close over state it updates (a train
  step threading its state), so successive calls need not repeat the same work."""
  if repeats < 1 or warmup < 0:
    raise ValueError(f"repeats={repeats}, warmup={warmup} are invalid: need repeats >= 1, "
                     "warmup >= 0")
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times
