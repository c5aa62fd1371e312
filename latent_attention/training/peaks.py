"""Device peak FLOP/s, the denominator of model FLOPs utilisation (MFU).

MFU (Chowdhery et al. 2022, PaLM, appendix B) = achieved FLOP/s of the train step / the peak of
the devices it runs on. Achieved FLOP/s is XLA's count of the step's FLOPs (forward, backward
and optimizer: the model's FLOPs plus the elementwise work, and with `model.remat_policy` the
recomputed forward) divided by the step time (docs/design.md, Measurements). The count is of the
compiled program, except on a GPU (`step_flops`).

Peaks are per chip, dense (no 2:4 sparsity), from the vendors' data sheets. On these GPUs a
float32 matmul at JAX's default precision runs on the TF32 tensor cores, and on TPUs as one
bfloat16 pass, so float32 is held to those rates. Any other device (a CPU, say) is held to a
measured jitted matmul of the compute dtype; `--peak_tflops` overrides both.
"""

import functools

import jax
import jax.numpy as jnp

from latent_attention import timing
from latent_attention.attention import core
from latent_attention.models.lm import DTYPES

# (device_kind prefix, bfloat16 TFLOP/s, float32 TFLOP/s), most specific prefix first.
_PEAKS = (
    ("NVIDIA H200", 989.4, 494.7),  # SXM, as the H100 SXM (more and faster memory only).
    ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100", 989.4, 494.7),  # SXM ("NVIDIA H100 80GB HBM3").
    ("NVIDIA A100", 312.0, 156.0),
    ("TPU v4", 275.0, 275.0),
    ("TPU v5 lite", 197.0, 197.0),  # v5e.
    ("TPU v5", 459.0, 459.0),  # v5p.
    ("TPU v6 lite", 918.0, 918.0),  # v6e (Trillium).
)


def known_peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The data-sheet peak of one chip (float16 = bfloat16), or None for an unknown device."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is invalid: choose one of {', '.join(DTYPES)}")
  for prefix, half, single in _PEAKS:
    if device_kind.startswith(prefix):
      return single if dtype == "float32" else half
  return None


@functools.cache
def _measured_tflops(dtype: str) -> float:
  return matmul_flops(1024, 3, dtype) / 1e12


def peak_tflops(dtype: str, override: float = 0.0) -> tuple[float, str]:
  """(peak TFLOP/s of all devices together, where the number comes from) for `dtype` compute:
  `override` per device if set, else the data sheet, else a measured matmul (once a process)."""
  n, kind = jax.device_count(), jax.devices()[0].device_kind
  if override:
    return override * n, "--peak_tflops"
  known = known_peak_tflops(kind, dtype)
  if known is not None:
    return known * n, f"{kind} data sheet, {dtype}"
  return _measured_tflops(dtype) * n, f"measured {dtype} matmul on {kind}"


def xla_flops(compiled) -> float:
  """FLOPs of one call of a program on all its devices. A compiled SPMD program's count is of
  the per-device program, which every device of its shardings runs; a lowered (not yet
  partitioned) program's is already the whole computation's."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  shardings = jax.tree.leaves(getattr(compiled, "input_shardings", ()))
  devices = len(shardings[0].device_set) if shardings else 1
  return devices * float((analysis or {}).get("flops", float("nan")))


def step_flops(jitted, compiled, *args) -> float:
  """FLOPs of one call of `jitted(*args)` on all devices, `compiled` being its compiled program.

  XLA's count of the compiled program, except on a GPU: there the matmuls and attention become
  cuBLAS and cuDNN calls, which XLA's cost analysis does not count (on an H200 it saw ~1/340
  of the step: docs/results/h200.md). There the same step is lowered for the CPU (attention
  through XLA, core.target_platform) and its whole, unpartitioned program counted before
  optimisation: within 2% of the compiled CPU count (tests/test_peaks.py).
  """
  shardings = jax.tree.leaves(compiled.input_shardings)
  platform = next(iter(shardings[0].device_set)).platform if shardings else jax.default_backend()
  return cpu_flops(jitted, *args) if platform == "gpu" else xla_flops(compiled)


def cpu_flops(jitted, *args) -> float:
  """FLOPs of `jitted(*args)` lowered for the CPU, counted by XLA before optimisation."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  token = core.target_platform.set("cpu")
  try:
    lowered = jax.jit(jitted.__wrapped__).trace(*shapes).lower(lowering_platforms=("cpu",))
  finally:
    core.target_platform.reset(token)
  return xla_flops(lowered)


def _fastest(fn, x, repeats: int) -> float:
  """Seconds of the fastest of `repeats` blocked calls of jit(fn)(x), after a warm-up call."""
  f = jax.jit(fn).lower(x).compile()
  return min(timing.time_calls(lambda: f(x), repeats=repeats))


def read_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 10) -> float:
  """Bytes/s of a jitted row-sum over an nbytes float32 array (read once, written ~0)."""
  x = jnp.ones((nbytes // 4 // 4096, 4096), jnp.float32)
  return x.nbytes / _fastest(lambda x: x.sum(axis=1), x, repeats)


def matmul_flops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
  """FLOP/s of a jitted n x n matmul: the compute rate a decode step is held to."""
  return 2 * n ** 3 / _fastest(lambda a: a @ a, jnp.ones((n, n), dtype), repeats)
