r"""MQAR recall vs KV-cache bytes (Zoology, arXiv 2312.04927, figure 2 scaled to a CPU budget).

  python scripts/sweep.py --sweep=configs/sweeps/mqar.py --workdir=/tmp/mqar
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:t128 --workdir=/tmp/mqar_t128
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:full --workdir=/tmp/mqar_full
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py --workdir=/tmp/mqar_local --runlocal
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:zoology --workdir=/tmp/mqar_zoology
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:zoology_lr --workdir=/tmp/mqar_lr
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:zoology_heads --workdir=/tmp/mqar_heads
  python scripts/sweep.py --sweep=configs/sweeps/mqar.py:zoology_lr_tight --workdir=/tmp/mqar_lr_tight

2-layer LMs on multi-query associative recall (configs/lm_mqar.py: vocabulary 8192) with every
attention kind: mha, gqa (2 KV heads), mqa, mla with a tight and a loose latent (d_c = 8, 64),
gla (the loose latent in two heads), gta (2 tied KV heads), tpa (ranks 6/2/2),
lowrank_gated, head_gated (2 of 4 heads), perceiver_ar with few latents (M = 16, so only the
queries among the last 16 positions are scored) and mha with CLA (layer 2 reuses layer 1's
keys and values). The `accuracy` column is recall accuracy.
Expectation to check, not to force: full attention solves the task, tight bottlenecks (small
d_c, few latents, few kept heads) lose recall as the number of key-value pairs grows.

Sizes (the argument): default = (T, pairs) = (64, 4) at d_model 64, 12 runs of 3000 steps
(about 75 minutes on 2 CPU cores); `t128` = (128, 8) at d_model 64 (twice that); `full` =
Zoology's {(64, 4), (128, 8), (256, 16)} x d_model {64, 128}, 72 runs (GPU-sized);
`zoology` = lm_mqar.py's `zoology` recipe at (64, 4) (one head, attention-only blocks, batch
512, 5 epochs; ~9 minutes a run) for the kinds that exist with one head (mha, mla at d_c = 8 and
64, tpa, lowrank_gated, perceiver_ar with M = 16, mha with CLA), seeds 0 and 1; `zoology_lr` =
Zoology's learning-rate grid logspace(1e-4, 1e-2, 4) for mha under that recipe (seed 0; 2.2e-3
is `zoology`'s mha);
`zoology_heads` = the same recipe with 4 heads of 16 (lm_mqar.py's `multihead`)
for mha and the kinds that need several heads (gqa, mqa, gta, gla, head_gated), seeds 0 and 1;
`zoology_lr_tight` = the tight one-head bottlenecks (mla d_c = 8, tpa, lowrank_gated) at mha's
best rate of the grid, 1e-2 (seed 0): is their gap to mha a matter of their rate?
"""

import ml_collections

KINDS = {  # run name prefix -> (config argument, dotted overrides)
    "mha": ("mha", {}),
    "gqa": ("gqa", {}),
    "mqa": ("mqa", {}),
    "mla_c8": ("mla", {"model.attention.kv_lora_rank": 8}),
    "mla_c64": ("mla", {"model.attention.kv_lora_rank": 64}),
    "gla2_c32": ("gla", {"model.attention.kv_lora_rank": 32}),  # mla_c64's latent in 2 heads.
    "gta": ("gta", {}),
    "tpa": ("tpa", {}),
    "lowrank_gated": ("lowrank_gated", {}),
    "head_gated": ("head_gated", {}),
    "perceiver_ar_m16": ("mha,perceiver_ar", {"model.num_latents": 16}),
    # CLA (arXiv 2405.12981): the second layer reuses the first's keys and values.
    "mha_cla2": ("mha", {"model.kv_share_every": 2}),
}
ZOOLOGY_KINDS = ("mha", "mla_c8", "mla_c64", "tpa", "lowrank_gated", "perceiver_ar_m16",
                 "mha_cla2")
MULTIHEAD_KINDS = ("mha", "gqa", "mqa", "gta", "gla2_c32", "head_gated")
TIGHT_KINDS = ("mla_c8", "tpa", "lowrank_gated")
ZOOLOGY_LRS = (1e-4, 4.6e-4, 2.2e-3, 1e-2)  # np.logspace(-4, -2, 4), rounded to 2 digits.
SIZES = {
    "": ([(64, 4)], [64]),
    "t128": ([(128, 8)], [64]),
    "full": ([(64, 4), (128, 8), (256, 16)], [64, 128]),
    "zoology": ([(64, 4)], [64]),
    "zoology_lr": ([(64, 4)], [64]),
    "zoology_heads": ([(64, 4)], [64]),
    "zoology_lr_tight": ([(64, 4)], [64]),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in SIZES:
    raise ValueError(f"sweep argument {arg!r} is invalid: choose from '' (default), t128, full, "
                     "zoology, zoology_lr, zoology_heads, zoology_lr_tight")
  lengths, widths = SIZES[arg]
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/lm_mqar.py:mha"  # runs below name their own variant of lm_mqar.py.
  sweep.overrides = ml_collections.ConfigDict({}, allow_dotted_keys=True)  # none shared.
  # --runlocal: lm_mqar's runlocal sizes; d_model 64 keeps kv_lora_rank=64 valid.
  sweep.runlocal_overrides = ml_collections.ConfigDict(
      {"model.d_model": 64, "data.num_kv_pairs": 4}, allow_dotted_keys=True)
  sweep.runs = []
  recipe = {"zoology": ",zoology", "zoology_lr": ",zoology", "zoology_lr_tight": ",zoology",
            "zoology_heads": ",zoology,multihead"}.get(arg, "")
  kinds = {"zoology": ZOOLOGY_KINDS, "zoology_lr": ("mha",), "zoology_lr_tight": TIGHT_KINDS,
           "zoology_heads": MULTIHEAD_KINDS}.get(arg, tuple(KINDS))
  lrs = {"zoology_lr": ZOOLOGY_LRS, "zoology_lr_tight": (1e-2,)}.get(arg, (None,))
  for (seq_len, pairs), width in ((lp, w) for lp in lengths for w in widths):
    for prefix in kinds:
      variant, overrides = KINDS[prefix]
      for lr in lrs:
        lr_overrides, lr_name = ({"train.learning_rate": lr}, f"_lr{lr:.1e}") if lr else ({}, "")
        sweep.runs.append(dict(
            name=f"{prefix}{lr_name}_T{seq_len}_D{width}",
            # per-run base: perceiver_ar is another model.
            base=f"configs/lm_mqar.py:{variant}{recipe}",
            overrides={"data.seq_len": seq_len, "data.num_kv_pairs": pairs,
                       "model.d_model": width, **overrides, **lr_overrides}))
  sweep.quality = "accuracy"  # pareto.png: recall accuracy vs KV-cache bytes per token.
  if arg in ("zoology", "zoology_heads"):
    sweep.seeds = (0, 1)  # init and data order; the examples themselves stay the same.
  sweep.benchmark = ml_collections.ConfigDict()
  sweep.benchmark.steps = 20  # timed train steps per run (median reported).
  sweep.benchmark.warmup = 3  # untimed steps first.
  return sweep
