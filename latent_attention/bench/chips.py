"""The chips a pre-flight compiles for (bench/preflight.py): HBM, its bandwidth and the bf16 peak.

A target is `<chip>:<topology>`: a TPU slice as JAX's topology names it (`v5e:2x4`, `v5p:2x2x1`;
`jax.experimental.topologies.get_topology_desc`), or a GPU node as `<slices>x<hosts>x<gpus per
host>` (`h100:1x1x8`, `h200:1x2x8`), compiled against XLA's target config of that GPU
(gpu_specs/, taken from openxla/xla's xla/backends/gpu/target_config/specs/).
Figures are per chip, dense bf16, from the vendors' pages named in each row.
"""

import dataclasses
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  platform: str  # 'tpu' or 'cuda'.
  hbm_bytes: int  # HBM per chip.
  hbm_bytes_per_s: float  # HBM bandwidth per chip.
  bf16_flops_per_s: float  # dense peak per chip.
  source: str
  spec_file: str = ""  # GPUs: the XLA target config in gpu_specs/.


CHIPS = {c.name: c for c in (
    Chip("v4", "tpu", 32 * GIB, 1200e9, 275e12, "cloud.google.com/tpu/docs/v4"),
    Chip("v5e", "tpu", 16 * GIB, 819e9, 197e12, "cloud.google.com/tpu/docs/v5e"),
    Chip("v5p", "tpu", 95 * GIB, 2765e9, 459e12, "cloud.google.com/tpu/docs/v5p"),
    Chip("v6e", "tpu", 32 * GIB, 1640e9, 918e12, "cloud.google.com/tpu/docs/v6e"),
    # device_memory_size of XLA's target config (80 GB = 79.1 GiB usable by CUDA).
    Chip("h100", "cuda", 84_942_979_072, 3.35e12, 989.4e12,
         "NVIDIA H100 SXM data sheet (989.4 TFLOP/s bf16 dense, 3.35 TB/s)", "h100_sxm.txtpb"),
    Chip("h200", "cuda", 151_397_597_184, 4.8e12, 989.4e12,
         "NVIDIA H200 SXM data sheet (989.4 TFLOP/s bf16 dense, 4.8 TB/s)", "h200.txtpb"),
)}
# JAX's GPU allocator takes this share of device memory unless XLA_PYTHON_CLIENT_MEM_FRACTION
# says otherwise (jax.readthedocs.io, "GPU memory allocation"): what a program may use.
GPU_MEM_FRACTION = 0.75
EXAMPLES = ("v5e:2x2", "v5e:2x4", "v5p:2x2x1", "v6e:2x2", "v4:2x2x1", "h100:1x1x8",
            "h200:1x2x8")


@dataclasses.dataclass(frozen=True)
class Target:
  chip: Chip
  topology: str  # the part after ':'.

  @property
  def name(self) -> str:
    return f"{self.chip.name}:{self.topology}"

  @property
  def usable_bytes(self) -> int:
    """What one program may hold per chip (TPU: the compiler's own check also applies)."""
    if self.chip.platform == "cuda":
      return int(self.chip.hbm_bytes * GPU_MEM_FRACTION)
    return self.chip.hbm_bytes

  def spec_text(self) -> str:
    with open(os.path.join(os.path.dirname(__file__), "gpu_specs", self.chip.spec_file)) as f:
      return f.read()


def parse_target(target: str) -> Target:
  """`v5e:2x4` or `h100:1x1x8` -> Target; a one-line ValueError listing valid ones otherwise."""
  chip, _, topology = target.partition(":")
  pattern = r"\d+x\d+x\d+" if CHIPS.get(chip, CHIPS["v5e"]).platform == "cuda" else (
      r"\d+x\d+(x\d+)?")
  if chip not in CHIPS or not re.fullmatch(pattern, topology):
    raise ValueError(f"--target={target} is invalid: give <chip>:<topology> with chip one of "
                     f"{', '.join(CHIPS)}, e.g. {', '.join(EXAMPLES)} (GPUs: slices x hosts x "
                     "GPUs per host)")
  return Target(CHIPS[chip], topology)
