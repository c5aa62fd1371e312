r"""Attention ablation on tiny_shakespeare: one LM with every attention kind, parameter-matched.

  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py --workdir=/tmp/lm_attention
  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py --workdir=/tmp/lm_attention_local \
      --runlocal --only=mha,mla_c32
  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py:large --workdir=/tmp/lm_attention_l

Runs: mha, gqa (2 KV heads), mqa, mla at three kv_lora_rank values (d_c), gla2 (GLA with two
latent heads sharing the largest MLA's latent width), gta (2 tied KV heads, RoPE key H/2),
tpa (ranks 6/2/2), lowrank_gated, head_gated and perceiver_ar. Sizes (the argument):

  (default) nanoGPT's CPU shakespeare_char recipe (lm_shakespeare.py:nanogpt_cpu): 4 layers,
            D=128, 4 heads of 32, T=64, batch 12, 2000 steps. On 2 CPU cores shared with other
            jobs the mha run took 4 min 21 s (training 3 min 51 s, of which 92 ms per step;
            evaluation and benchmark 30 s), so the 12 runs take about 55 minutes.
  large     for one GPU or TPU: nanoGPT's GPU shakespeare_char model (6 layers, D=384, 6 heads
            of 64, T=256, batch 64) in bfloat16, without dropout, so 2500 steps rather than
            5000 (not measured here).

--runlocal keeps the runs' mlp_dim values at a smaller width, so it checks that every run works,
not that parameters match.

Parameter counts are matched to mha's: only attention differs between runs, and the MLP width F
absorbs the difference in attention parameters, F_run = F + round((P_mha - P_run) / (2·D·L)) with
P the parameters of one layer's attention (the MLP has 2·D·F weights per layer, no biases). That
puts every run within 0.1% of mha's total; tests/test_sweep.py checks the claim (within 1%) with
jax.eval_shape on the built models. `perceiver_ar` (a 256-character window, its last 64
positions the latents) uses one cross-attention plus L-1 latent layers: the same parameters.
"""

import ml_collections

# Run name -> (overrides of config.model.attention, parameter-matched model.mlp_dim), per size.
RUNS = {
    "default": {  # D=128, L=4, N=4, H=32; MLA d_nope=d_v=32, d_R=16.
        "mha": (dict(kind="mha"), 512),
        "gqa": (dict(kind="gqa", num_kv_heads=2), 576),
        "mqa": (dict(kind="mqa"), 608),
        "mla_c16": (dict(kind="mla", kv_lora_rank=16), 576),
        "mla_c32": (dict(kind="mla", kv_lora_rank=32), 552),
        "mla_c64": (dict(kind="mla", kv_lora_rank=64), 504),
        # GLA-2 splits mla_c64's latent in two heads (arXiv 2505.21487); GTA ties gqa's K and V.
        "gla2_c32": (dict(kind="gla", gla_latent_heads=2, kv_lora_rank=32), 536),
        "gta": (dict(kind="gta", num_kv_heads=2), 600),
        "tpa": (dict(kind="tpa"), 524),  # T6's ranks: R_Q = 6, R_K = R_V = 2.
        "lowrank_gated": (dict(kind="lowrank_gated", lowrank_rank=8), 604),
        "head_gated": (dict(kind="head_gated", head_gated_top_k=2), 510),
    },
    "large": {  # D=384, L=6, N=6, H=64; MLA d_nope=d_v=64, d_R=32.
        "mha": (dict(kind="mha"), 1536),
        "gqa": (dict(kind="gqa", num_kv_heads=2), 1792),
        "mqa": (dict(kind="mqa"), 1856),
        "mla_c64": (dict(kind="mla", kv_lora_rank=64), 1712),
        "mla_c128": (dict(kind="mla", kv_lora_rank=128), 1616),
        "mla_c256": (dict(kind="mla", kv_lora_rank=256), 1424),
        "gla2_c64": (dict(kind="gla", gla_latent_heads=2, kv_lora_rank=64), 1680),
        "gta": (dict(kind="gta", num_kv_heads=2), 1840),
        "tpa": (dict(kind="tpa"), 1762),
        "lowrank_gated": (dict(kind="lowrank_gated", lowrank_rank=16), 1818),
        "head_gated": (dict(kind="head_gated", head_gated_top_k=3), 1533),
    },
}

# `large` on top of lm_shakespeare.py:mha (every key below is also undone by --runlocal).
LARGE = {
    "model.d_model": 384,
    "model.num_layers": 6,
    "model.dtype": "bfloat16",
    "model.attention.num_heads": 6,
    "model.attention.num_kv_heads": 6,
    "model.attention.head_dim": 64,
    "model.attention.qk_nope_head_dim": 64,
    "model.attention.qk_rope_head_dim": 32,
    "model.attention.v_head_dim": 64,
    "data.seq_len": 256,
    "train.batch_size": 64,
    "train.num_steps": 2500,
    "train.learning_rate": 1e-3,
    "train.end_learning_rate": 1e-4,
    "train.eval_every": 250,
    "train.eval_batch_size": 256,
    "train.checkpoint_every": 500,
}

# --runlocal on `large`: the base's runlocal sizes again, with D and H still >= every run's
# kv_lora_rank and lowrank_rank (run overrides come after these and must stay valid).
LARGE_RUNLOCAL = {
    "model.d_model": 256,
    "model.num_layers": 2,
    "model.dtype": "float32",
    "model.attention.head_dim": 16,
    "model.attention.qk_nope_head_dim": 16,
    "model.attention.qk_rope_head_dim": 4,
    "model.attention.v_head_dim": 16,
    "data.seq_len": 32,
    "train.batch_size": 8,
    "train.num_steps": 20,
    "train.eval_every": 10,
    "train.checkpoint_every": 10,
}


def _dotted(overrides: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(overrides, allow_dotted_keys=True)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  size = arg or "default"
  if size not in RUNS:
    raise ValueError(f"sweep argument {arg!r} is invalid: choose from '' (default) or large")

  sweep = ml_collections.ConfigDict()
  # Every run: this config plus the overrides below, then its own attention kind and mlp_dim.
  sweep.base = ("configs/lm_shakespeare.py:mha,nanogpt_cpu" if size == "default"
                else "configs/lm_shakespeare.py:mha")
  # nanogpt_cpu validates on validation+test (nanoGPT's split); keep test held out for eval.py.
  common = {"data.eval_split": "validation"}
  sweep.overrides = _dotted({**common, **(LARGE if size == "large" else {})})
  # --runlocal (base + ',runlocal'): width 64 at the default size, so kv_lora_rank=64 stays valid.
  sweep.runlocal_overrides = _dotted(LARGE_RUNLOCAL if size == "large" else {"model.d_model": 64})
  sweep.runs = [  # name + dotted overrides; applied last.
      dict(name=name, overrides={"model.mlp_dim": mlp_dim,
                                 **{f"model.attention.{k}": v for k, v in attention.items()}})
      for name, (attention, mlp_dim) in RUNS[size].items()
  ]
  # Perceiver AR: cross-attention + L-1 latent layers has exactly the LM's L attention + MLP
  # blocks, so its parameters match mha's; its window is 256 with the last 64 as latents.
  layers = LARGE["model.num_layers"] if size == "large" else 4
  sweep.runs.append(dict(name="perceiver_ar",
                         base=sweep.base.replace(":mha", ":mha,perceiver_ar"),
                         overrides={"model.num_layers": layers - 1,
                                    "model.mlp_dim": RUNS[size]["mha"][1]}))
  # Decode speed of each run's model (scripts/benchmark_decode.py's measurement) at one point.
  sweep.decode = ml_collections.ConfigDict()
  sweep.decode.context = 2048  # cache length (prefill = context - steps).
  sweep.decode.batch = 8  # sequences decoded at once.
  sweep.decode.steps = 16  # timed greedy steps.
  return sweep
