r"""Perceiver classifier on fashion_mnist: test accuracy vs the number of latents M.

  python scripts/sweep.py --sweep=configs/sweeps/perceiver_latents.py --workdir=/tmp/latents
  python scripts/sweep.py --sweep=configs/sweeps/perceiver_latents.py \
      --workdir=/tmp/latents_local --runlocal

Runs: num_latents8 ... num_latents128 (M, the bottleneck the 784 pixels are read into); the rest
is configs/perceiver_fashion_mnist.py (mha, 4500 steps). A classifier has no KV cache and no
perplexity: the table reports accuracy, and those columns stay blank. On 2 CPU cores a train
step takes 0.17 s at M=8, 0.26 s at M=32 and 0.63 s at M=128 (measured), so the sweep takes
about 2 hours there (M=128 alone 48 minutes); minutes on a GPU.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"sweep argument {arg!r} is invalid: this sweep takes none")
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/perceiver_fashion_mnist.py"  # every run: this config, then its M.
  sweep.overrides = ml_collections.ConfigDict()  # nothing else changes.
  sweep.runlocal_overrides = ml_collections.ConfigDict()  # the base's runlocal is enough.
  # One run per M, named num_latents8 ... num_latents128.
  sweep.grid = ml_collections.ConfigDict(
      {"model.num_latents": (8, 16, 32, 64, 128)}, allow_dotted_keys=True)
  sweep.benchmark = ml_collections.ConfigDict()
  sweep.benchmark.steps = 50  # timed train steps per run (median reported).
  sweep.benchmark.warmup = 5  # untimed steps first (compilation included).
  return sweep
