r"""Decode speed of every attention variant against the memory-bandwidth bound.

  python scripts/benchmark_decode.py --config=configs/lm_decode.py --output_dir=/tmp/decode
  python scripts/benchmark_decode.py --config=configs/lm_decode.py --contexts=4096 --batches=4
  python scripts/benchmark_decode.py --config=configs/lm_decode.py --variants=mla_absorbed \
      --decode_cache=paged --decode_kernel=pallas --output_dir=/tmp/decode_pallas

For each variant x context x batch: the prefill time of one sequence of (context - steps)
tokens, the mean time of the last --steps greedy decode steps (one jitted scan, cache donated),
tokens/s, cache bytes per sequence (measured and formula), bytes read per step (cache +
weights), achieved bandwidth and the ratio to the bound (those bytes / the read bandwidth
measured here), the step's FLOPs against the measured matmul rate, and the largest batch whose
cache and weights fit --memory_gb. Writes decode.json, decode.md and decode.png to --output_dir
with a progress line (and ETA) per point. Defaults: about 5 minutes on a 2-core CPU.
--decode_cache=paged decodes the latent variants (mla_latent, mla_absorbed, gla_absorbed) from
the paged cache; --decode_kernel=pallas their absorbed steps with the Pallas kernel, timed on a
TPU and elsewhere (interpret mode) checked against the XLA path: decode.json's kernel_checks.
Variant mla_sparse is DSA (DeepSeek-V3.2): absorbed MLA whose step reads every indexer key and
the latents of --index_topk positions; its bytes read per step count only those.
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from latent_attention import cli
from latent_attention.bench import decode as decode_benchmark
from latent_attention.training.config import validate_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lm_decode.py",
                                          "Config file[:arg]; only its model section is used.",
                                          lock_config=True)
_VARIANTS = flags.DEFINE_list("variants", list(decode_benchmark.DEFAULT_VARIANTS),
                              f"Variants to time, from: {', '.join(decode_benchmark.VARIANTS)}.")
_CONTEXTS = flags.DEFINE_list("contexts", ["512", "2048", "8192"],
                              "Cache lengths in tokens (prefill = context - steps).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes (sequences decoded at once).")
_STEPS = flags.DEFINE_integer("steps", 16, "Timed decode steps at the end of each context.",
                              lower_bound=1)
_MEMORY_GB = flags.DEFINE_float("memory_gb", 16.0, "Memory budget (GiB) for the largest batch "
                                "whose cache + weights fit (0 = skip).", lower_bound=0.0)
_LATENTS = flags.DEFINE_integer("perceiver_latents", 256, "Perceiver AR's M (num_latents).",
                                lower_bound=1)
_DECODE_CACHE = flags.DEFINE_enum("decode_cache", "contiguous", ["contiguous", "paged"],
                                  "The latent variants' cache (model.decode_cache).")
_DECODE_KERNEL = flags.DEFINE_enum(
    "decode_kernel", "xla", ["xla", "pallas"], "The absorbed variants' paged decode step "
    "(model.decode_kernel); pallas needs --decode_cache=paged and is timed only on a TPU "
    "(elsewhere it runs interpreted and is checked against xla instead).")
_INDEX_TOPK = flags.DEFINE_integer(
    "index_topk", 1024, "Positions the mla_sparse variant (DSA) reads per decode step.",
    lower_bound=1)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where decode.{json,md,png} go.")
flags.mark_flag_as_required("output_dir")


def _ints(name, values):
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)} is invalid: give positive integers") from None
  if not out or min(out) < 1:
    raise ValueError(f"--{name}={','.join(values)} is invalid: give positive integers")
  return out


def main(argv):
  del argv
  validate_config(_CONFIG.value)  # every section it has; only the model is used.
  contexts, batches = _ints("contexts", _CONTEXTS.value), _ints("batches", _BATCHES.value)
  if min(contexts) <= _STEPS.value:
    raise ValueError(f"--contexts={min(contexts)} is invalid: every context must exceed "
                     f"--steps={_STEPS.value}")
  decode_benchmark.check_variants(_VARIANTS.value)
  if _DECODE_KERNEL.value == "pallas" and _DECODE_CACHE.value != "paged":
    raise ValueError("--decode_kernel=pallas is invalid with --decode_cache=contiguous: the "
                     "kernel reads the paged cache")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  result = decode_benchmark.run(
      _CONFIG.value.model, variants=_VARIANTS.value, contexts=contexts, batches=batches,
      steps=_STEPS.value, memory_gb=_MEMORY_GB.value, perceiver_latents=_LATENTS.value,
      decode_cache=_DECODE_CACHE.value, decode_kernel=_DECODE_KERNEL.value,
      index_topk=_INDEX_TOPK.value)
  result["command"] = " ".join(["python", *sys.argv])
  path = os.path.join(_OUTPUT_DIR.value, "decode")
  with open(path + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(path + ".md", "w") as f:
    f.write(decode_benchmark.markdown(result))
  print(decode_benchmark.markdown(result))
  if result["rows"]:  # none when every variant was a kernel check.
    decode_benchmark.plot(result, path + ".png")
    print(f"wrote {path}.json, {path}.md and {path}.png")
  else:
    print(f"wrote {path}.json and {path}.md")


if __name__ == "__main__":
  cli.run(main, config_flag="config")
