"""The KV-cache payoff as a compiled fact: for every LM kind, the largest batch of long sequences
whose compiled decode step fits one chip, and its tokens/s at the bandwidth roofline.

Each point compiles the decode step (bench/preflight.py: one token against a cache of `context`
positions, weights in bfloat16 as served) for one TPU or GPU chip and searches the largest batch
that fits, starting from the analytic guess (HBM - weights) / cache bytes per sequence. A decode
step reads every weight and the whole cache once, so at the HBM-bandwidth roofline it takes
arguments / bandwidth, and batch / that is the tokens/s no implementation can beat on that chip.
"""

import os
import time

import jax
import jax.numpy as jnp

from latent_attention import config_files, kv_cache_formula_bytes
from latent_attention.bench import preflight
from latent_attention.bench.chips import parse_target
from latent_attention.models import build_model, parse_config
from latent_attention.studies.sweep_config import REPO_ROOT

KINDS = ("mha", "gqa", "mqa", "mla", "gla", "gta", "tpa", "lowrank_gated", "head_gated")
# 1B class (stated): 24 layers, D = 2048, 16 heads of 128, F = 4D, MLA d_c/d_R = 512/64
# (DeepSeek-V2's), the kinds' other sizes as in configs/lm1b.py.
SHAPES = {
    "lm1b": {},
    "1b": {"model.num_layers": 24, "model.d_model": 2048, "model.mlp_dim": 8192,
           "model.attention.num_heads": 16, "model.attention.head_dim": 128,
           "model.attention.kv_lora_rank": 512, "model.attention.qk_nope_head_dim": 128,
           "model.attention.qk_rope_head_dim": 64, "model.attention.v_head_dim": 128},
}
COLUMNS = ("kind", "shape", "chip", "params (M)", "cache KiB / token", "max batch",
           "GiB per chip", "roofline tokens/s")


def shape_config(kind: str, shape: str):
  config = config_files.load(os.path.join(REPO_ROOT, f"configs/lm1b.py:{kind},synthetic"))
  config.update_from_flattened_dict(SHAPES[shape])
  config.model.dtype = "bfloat16"
  return config


def point(kind: str, shape: str, target: str, context: int) -> dict:
  """The largest batch whose decode step fits one chip of `target` and its roofline rate."""
  config = shape_config(kind, shape)
  model_cfg = parse_config(config.model)
  shapes = jax.eval_shape(build_model(model_cfg).init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))
  params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  per_seq = kv_cache_formula_bytes(model_cfg, context, 1, jnp.bfloat16)
  chip = parse_target(target)
  guess = max(1, int((chip.usable_bytes * 0.95 - 2 * params) // per_seq))
  best, reports = preflight.find_batch(config, target, step="decode", decode_len=context,
                                       guess=guess)
  at_best = next((r for r in reports if r.batch == best), None)
  rate = best * chip.chip.hbm_bytes_per_s / at_best.argument_bytes if at_best else 0.0
  return {"kind": kind, "shape": shape, "target": target, "params": params,
          "cache_bytes_per_token": per_seq / context, "max_batch": best,
          "peak_bytes": at_best.peak_bytes if at_best else None, "tokens_per_s": rate,
          "compiles": len(reports)}


def table(targets=("v5e:1x1", "h100:1x1x1"), shapes=tuple(SHAPES), kinds=KINDS,
          context: int = 32768, log=print) -> dict:
  """Every kind x shape x target point as a results table (studies/pages.py's format)."""
  rows, start = [], time.perf_counter()
  for shape in shapes:
    for kind in kinds:
      for target in targets:
        p = point(kind, shape, target, context)
        log(f"{kind} {shape} {target}: max batch {p['max_batch']}, "
            f"{p['tokens_per_s']:,.0f} tokens/s at the roofline ({p['compiles']} compiles)")
        rows.append([kind, shape, target.split(":")[0], p["params"] / 1e6,
                     p["cache_bytes_per_token"] / 1024, p["max_batch"],
                     (p["peak_bytes"] or 0) / 2**30, p["tokens_per_s"]])
  return {"columns": list(COLUMNS), "align": [None, None, None] + ["right"] * 5,
          "format": [None, None, None, "{:.1f}", "{:.2f}", "{:,}", "{:.2f}", "{:,.0f}"],
          "rows": rows, "wall_s": time.perf_counter() - start, "context": context}
