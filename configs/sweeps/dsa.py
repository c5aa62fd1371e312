r"""DeepSeek Sparse Attention against dense MLA at T = 1024 characters of tiny_shakespeare.

  python scripts/sweep.py --sweep=configs/sweeps/dsa.py --workdir=/tmp/dsa
  python scripts/sweep.py --sweep=configs/sweeps/dsa.py --workdir=/tmp/dsa_local --runlocal

How much of dense MLA's perplexity does a query keep when the lightning indexer
(attention/indexer.py) lets it read T/4, T/8 or T/16 of its context, trained from scratch or
converted from the dense run as DeepSeek-V3.2 does (paper, section 2.1)?

Runs, each with seeds 0, 1, 2 (run-major: a converted run starts from its seed's dense run):
  dense          MLA, 200 steps.
  scratch_top*   DSA from random init, top_k = 256, 128, 64 of T = 1024, 200 steps.
  warmup         the dense run's parameters, the main model frozen (train.freeze_main), dense
                 attention while the indexer learns the main attention's distribution by KL
                 (index_mode dense_warmup), 50 steps: stage (a).
  convert_top*   the warm-up's parameters, top_k active, everything trained (the indexer by its
                 KL over the selected positions, on detached inputs), 100 steps: stage (b).
  continued      the dense run trained the same 100 steps, dense: stage (b)'s control.
The model is small enough for 2 CPU cores at this context: 2 layers, D = 64, 4 heads of 16,
d_c = 16, d_R = 8, indexer 4 heads of d_I = 16; batch 4 windows of 1024 characters. About 70
minutes on 2 CPU cores. The decode speed at 8k context is scripts/benchmark_decode.py's
(variant mla_sparse), at a model size where the cache is what a step reads.
"""

import ml_collections

TOPKS = (256, 128, 64)  # T/4, T/8, T/16 of T = 1024.
INDEXER = {"model.attention.index_n_heads": 4, "model.attention.index_head_dim": 16}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"sweep argument {arg!r} is invalid: this sweep takes none")
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/lm_shakespeare.py:mla"  # every run: this config, then the overrides.
  sweep.overrides = ml_collections.ConfigDict({
      "data.seq_len": 1024,  # T: a context where reading 1/8 of it is a real restriction.
      "data.eval_split": "validation",
      "model.num_layers": 2, "model.d_model": 64, "model.mlp_dim": 256,
      "model.attention.num_heads": 4, "model.attention.head_dim": 16,
      "model.attention.kv_lora_rank": 16, "model.attention.qk_nope_head_dim": 16,
      "model.attention.qk_rope_head_dim": 8, "model.attention.v_head_dim": 16,
      "train.batch_size": 4, "train.num_steps": 200, "train.warmup_steps": 20,
      "train.log_every": 25, "train.eval_every": 0, "train.checkpoint_every": 0,
      "train.eval_batch_size": 16, "eval.sample_len": 0,
  }, allow_dotted_keys=True)
  # --runlocal: T = 32 (top_k 8, 4, 2 of it) and a few steps, to check the sweep end to end.
  sweep.runlocal_overrides = ml_collections.ConfigDict(
      {"data.seq_len": 32, "train.num_steps": 6, "train.warmup_steps": 1,
       "train.log_every": 3}, allow_dotted_keys=True)
  sweep.runs = [dict(name="dense", overrides={})]
  sweep.runs += [dict(name=f"scratch_top{k}", overrides={"model.attention.index_topk": k,
                                                         **INDEXER}) for k in TOPKS]
  sweep.runs.append(dict(name="warmup", overrides={
      "train.init_from": "run:dense", "train.freeze_main": True, "train.num_steps": 50,
      "train.warmup_steps": 5, "train.learning_rate": 1e-3, "train.end_learning_rate": 1e-4,
      "model.attention.index_topk": TOPKS[0], "model.attention.index_mode": "dense_warmup",
      **INDEXER}))
  stage_b = {"train.num_steps": 100, "train.warmup_steps": 10, "train.learning_rate": 5e-4,
             "train.end_learning_rate": 5e-5}
  sweep.runs += [dict(name=f"convert_top{k}", overrides={
      "train.init_from": "run:warmup", **stage_b, "model.attention.index_topk": k, **INDEXER})
                 for k in TOPKS]
  # The converted runs train 100 steps more than dense: the same 100 steps, dense, are their
  # control (a converted run better than dense by less than this one is not DSA's doing).
  sweep.runs.append(dict(name="continued", overrides={"train.init_from": "run:dense",
                                                      **stage_b}))
  sweep.seeds = (0, 1, 2)
  sweep.reference = "dense"
  sweep.benchmark = ml_collections.ConfigDict({"steps": 10, "warmup": 2})  # step time only.
  return sweep
