r"""Train-step and decode speed of a config (a benchmark, not a test).

  python scripts/benchmark.py --config=configs/lm_shakespeare.py:nanogpt_cpu
  python scripts/benchmark.py --config=configs/lm_shakespeare.py:mha,nanogpt_cpu --profile

Prints the median wall time of the jitted train step after warm-up (block_until_ready on
every step), tokens/s, XLA-counted FLOPs per token and model FLOPs utilisation (against
--peak_tflops, else a known GPU/TPU's data sheet, else a measured matmul: training/peaks.py),
the time per step of the whole input pipeline + step loop, and the decode tokens/s of cached
generation. --profile adds where the train step's time goes: per-op times
from a jax.profiler trace of --profile_steps steps, split into forward, backward and optimizer
(bench/step_profile.py), and the top ops. Writes the numbers as JSON with --output.
"""

import json

from absl import flags
from ml_collections import config_flags

from latent_attention import cli
from latent_attention.bench import step_profile
from latent_attention.bench.step import benchmark
from latent_attention.training.config import validate_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps (after --warmup).",
                             lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps first (compilation included).",
                              lower_bound=0)
_PEAK = flags.DEFINE_float(
    "peak_tflops", 0.0, "Peak TFLOP/s of one device for MFU; 0 = the data sheet of a known "
    "GPU/TPU, else a measured matmul (training/peaks.py).", lower_bound=0.0)
_DECODE = flags.DEFINE_integer("decode_tokens", 128, "Tokens generated for decode speed.",
                              lower_bound=1)
_PROFILE = flags.DEFINE_bool("profile", False, "Also print a per-op profile of the train step.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 10, "Train steps traced by --profile.",
                                      lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
flags.mark_flag_as_required("config")


def main(argv):
  del argv
  validate_config(_CONFIG.value)
  out = benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value, _PEAK.value, _DECODE.value,
                  _PROFILE_STEPS.value if _PROFILE.value else 0)
  for k, v in out.items():
    if k != "profile":
      print(f"{k:>24}: {v:.6g}" if isinstance(v, float) else f"{k:>24}: {v}")
  if "profile" in out:
    print(step_profile.format_profile(out["profile"]))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  cli.run(main, config_flag="config")
