r"""MLA's KV compression rank d_c on tiny_shakespeare: perplexity vs KV-cache size.

  python scripts/sweep.py --sweep=configs/sweeps/mla_rank.py --workdir=/tmp/mla_rank
  python scripts/sweep.py --sweep=configs/sweeps/mla_rank.py --workdir=/tmp/mla_rank_local \
      --runlocal

Runs: kv_lora_rank8 ... kv_lora_rank128 (d_c; d_R stays 16, so a layer caches d_c + 16 elements
per token), plus `mha` (2·N·H = 256) as the reference of the table's "KV vs mha" column. The
model is otherwise fixed (lm_shakespeare.py:nanogpt_cpu: 4 layers, D=128, 4 heads, T=64, batch
12, 2000 steps), so the parameter count grows with d_c (W_DKV, W_UK, W_UV; the table lists it).
About 4 minutes per run on 2 CPU cores, 25 minutes in all.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"sweep argument {arg!r} is invalid: this sweep takes none")
  sweep = ml_collections.ConfigDict()
  # Every run: this config plus the overrides below, then its own.
  sweep.base = "configs/lm_shakespeare.py:mla,nanogpt_cpu"
  # nanogpt_cpu validates on validation+test (nanoGPT's split); keep test held out for eval.py.
  sweep.overrides = ml_collections.ConfigDict({"data.eval_split": "validation"},
                                              allow_dotted_keys=True)
  # --runlocal (base + ',runlocal'): width 128 so that kv_lora_rank=128 <= D stays valid.
  sweep.runlocal_overrides = ml_collections.ConfigDict({"model.d_model": 128},
                                                       allow_dotted_keys=True)
  sweep.runs = [dict(name="mha", overrides={"model.attention.kind": "mha"})]  # the reference.
  # One run per d_c, named kv_lora_rank8 ... kv_lora_rank128.
  sweep.grid = ml_collections.ConfigDict(
      {"model.attention.kv_lora_rank": (8, 16, 32, 64, 128)}, allow_dotted_keys=True)
  return sweep
