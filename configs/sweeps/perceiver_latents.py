r"""Perceiver classifier on fashion_mnist: test accuracy vs the number of latents M.

  python scripts/sweep.py --sweep=configs/sweeps/perceiver_latents.py --workdir=/tmp/latents
  python scripts/sweep.py --sweep=configs/sweeps/perceiver_latents.py \
      --workdir=/tmp/latents_local --runlocal

Runs: num_latents8 ... num_latents128 (M, the bottleneck the 49 conv-stem tokens are read into);
the rest is configs/perceiver_fashion_mnist.py (mha, conv stem) with 3000 steps instead of its
11000, so that the five runs fit in about an hour on 2 CPU cores (the step grows with M).
A classifier has no KV cache and no perplexity: the table reports accuracy, and those columns
stay blank.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"sweep argument {arg!r} is invalid: this sweep takes none")
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/perceiver_fashion_mnist.py"  # every run: this config, then its M.
  sweep.overrides = ml_collections.ConfigDict(  # every run: 3000 steps, evaluated every 1000.
      {"train.num_steps": 3000, "train.eval_every": 1000, "train.checkpoint_every": 1000},
      allow_dotted_keys=True)
  sweep.runlocal_overrides = ml_collections.ConfigDict(  # back to the base's runlocal length.
      {"train.num_steps": 40, "train.eval_every": 20, "train.checkpoint_every": 20},
      allow_dotted_keys=True)
  # One run per M, named num_latents8 ... num_latents128.
  sweep.grid = ml_collections.ConfigDict(
      {"model.num_latents": (8, 16, 32, 64, 128)}, allow_dotted_keys=True)
  return sweep
