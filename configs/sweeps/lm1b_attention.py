r"""Attention ablation at GPU scale: ~110M-parameter LMs on lm1b in bfloat16 (configs/lm1b.py).

  python scripts/sweep.py --sweep=configs/sweeps/lm1b_attention.py --workdir=/tmp/lm1b_attention \
      --seeds=2
  python scripts/sweep.py --sweep=configs/sweeps/lm1b_attention.py --workdir=/tmp/lm1b_local \
      --runlocal --only=mla_c128

Runs: mha, gqa (4 KV heads), mqa, mla with d_c = 256 and 128, gla2_c128 (GLA: two latent heads
of 128, the cache of mla_c256), gta (4 tied KV heads) and tpa (ranks 6/2/2), each 12 layers of
D = 768 with 12 heads of 64, a 32k SentencePiece vocabulary, T = 512, batch 256, 20k steps
(2.6B tokens). As in lm_attention.py, parameter counts match mha's (109.5M) through the MLP
width F (within 0.003%; tests/test_sweep.py checks 1%).

Where it fits (pre-flight, compiled on a CPU: docs/results/preflight.md): every run's train step
fits a v5e:2x4 slice (32 sequences per chip, 11.8-12.7 GiB of 16 per chip) and an h100:1x1x8
node (32 per GPU). mha and mla do not fit a v5e:2x2 (64 per chip: 18.4 and 17.5 GiB of
temporaries, compiled by hand when the pre-flight was proposed). Check another slice first:
`scripts/sweep.py --sweep=configs/sweeps/lm1b_attention.py --workdir=DIR --preflight=v5e:2x4`.

Time per run on one H100 (not measured: no GPU was lent while this was written). XLA counts
~0.75 GFLOP per token for the train step, so 20k steps of 131k tokens are ~2e18 FLOPs: about
1.4 hours at 40% MFU of the H100's 989 bf16 TFLOP/s, plus evaluation. `scripts/benchmark.py
--config=configs/lm1b.py:<kind>,synthetic` measures the step time and MFU first.
"""

import ml_collections

# Run name -> (overrides of config.model.attention, parameter-matched model.mlp_dim).
RUNS = {
    "mha": (dict(kind="mha"), 3072),
    "gqa": (dict(kind="gqa", num_kv_heads=4), 3584),
    "mqa": (dict(kind="mqa"), 3776),
    "mla_c256": (dict(kind="mla", kv_lora_rank=256), 3248),
    "mla_c128": (dict(kind="mla", kv_lora_rank=128), 3440),
    "gla2_c128": (dict(kind="gla", gla_latent_heads=2, kv_lora_rank=128), 3376),
    "gta": (dict(kind="gta", num_kv_heads=4), 3696),
    "tpa": (dict(kind="tpa"), 3844),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"sweep argument {arg!r} is invalid: lm1b_attention.py takes none")
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/lm1b.py:mha"  # every run: this config, then its attention and F.
  sweep.overrides = ml_collections.ConfigDict({"eval.sample_len": 0}, allow_dotted_keys=True)
  # --runlocal: lm1b.py's runlocal, wide enough for d_c = 256, 8 heads over 4 KV heads.
  sweep.runlocal_overrides = ml_collections.ConfigDict(
      {"model.d_model": 256, "model.attention.num_heads": 8}, allow_dotted_keys=True)
  sweep.runs = [
      dict(name=name, overrides={"model.mlp_dim": mlp_dim,
                                 **{f"model.attention.{k}": v for k, v in attention.items()}})
      for name, (attention, mlp_dim) in RUNS.items()
  ]
  # Decode speed of each run's model at one point (scripts/benchmark_decode.py's measurement).
  sweep.decode = ml_collections.ConfigDict()
  sweep.decode.context = 4096  # cache length (prefill = context - steps).
  sweep.decode.batch = 32  # sequences decoded at once.
  sweep.decode.steps = 16  # timed greedy steps.
  return sweep
