"""What a KV-cache budget costs when you convert a trained MHA into MLA instead of training one.

For a trained mha/gqa/mqa run and each point (d_c, d_R): perplexity of the original; of the
converted MLA (models/mla_conversion.py) without training, by each SVD method; after a short
fine-tune of the default method's conversion; and of an MLA trained from scratch with the same
shapes (so the same cache bytes) for the source's full schedule. Every run is a workdir under
the output directory, so a rerun skips what is finished (scripts/conversion_study.py).
"""

import dataclasses
import json
import os
import time

from absl import logging

from latent_attention import config_files, kv_cache_formula_bytes, models
from latent_attention.models.lm import DTYPES
from latent_attention.models.mla_conversion import METHODS
from latent_attention.studies import conversion
from latent_attention.training import checkpoint, evaluate, loop, metrics as metrics_lib


def parse_points(texts) -> list[tuple[int, int]]:
  """["32:8", ...] -> [(32, 8), ...]: (kv_lora_rank, rope_dims) per point."""
  points = []
  for text in texts:
    c, _, r = text.partition(":")
    if not (c.isdigit() and r.isdigit()):
      raise ValueError(f"--points: {text!r} is invalid: kv_lora_rank:rope_dims, e.g. 32:8")
    points.append((int(c), int(r)))
  return points


def _bytes_per_token(model_cfg: dict) -> int:
  """All layers' decode-cache bytes per token, in the model's compute dtype."""
  cfg = models.parse_config(model_cfg)
  return kv_cache_formula_bytes(cfg, 1, 1, DTYPES[cfg.dtype])


def _train(config: dict, workdir: str) -> float:
  """Eval-split perplexity of `config` trained in `workdir` (read back when finished)."""
  done = os.path.join(workdir, "train_results.json")
  if not os.path.exists(done):
    loop.train_and_evaluate(config_files.from_dict(config), workdir)
  with open(done) as f:
    return json.load(f)["eval"]["perplexity"]


def run(source: str, output_dir: str, points, *, finetune_steps: int = 0,
        finetune_lr: float = 1e-3, scratch: bool = True, num_batches: int = 8,
        methods=METHODS) -> list[dict]:
  """Rows {method, kv_lora_rank, rope_dims, kv_bytes_per_token, split, perplexity, seconds};
  the first is the original. finetune_steps=0: 5% of the source's num_steps. The first of
  `methods` is fine-tuned."""
  exp, params, _ = evaluate.restore_experiment(source)
  saved = exp.config.to_dict()
  split = saved["data"]["eval_split"]
  finetune_steps = finetune_steps or max(1, saved["train"]["num_steps"] // 20)
  rows = [{"method": f"original ({saved['model']['attention']['kind']})", "kv_lora_rank": None,
           "rope_dims": None, "kv_bytes_per_token": _bytes_per_token(saved["model"]),
           "split": split, "perplexity": loop.evaluate(exp, params, split)["perplexity"],
           "seconds": 0.0}]
  tasks = len(points) * (len(methods) + 1 + scratch)
  started, finished = time.perf_counter(), 0

  def add(method, c, r, model_cfg, perplexity, seconds):
    nonlocal finished
    finished += 1
    rows.append({"method": method, "kv_lora_rank": c, "rope_dims": r,
                 "kv_bytes_per_token": _bytes_per_token(model_cfg), "split": split,
                 "perplexity": perplexity, "seconds": seconds})
    elapsed = time.perf_counter() - started
    logging.info("[%d/%d] d_c=%d d_R=%d %s: perplexity %.4f (%s elapsed, ETA %s)", finished,
                 tasks, c, r, method, perplexity, metrics_lib.format_duration(elapsed),
                 metrics_lib.format_duration(elapsed / finished * (tasks - finished)))

  for c, r in points:
    for method in methods:
      out = os.path.join(output_dir, f"c{c}_r{r}_{method}")
      report_path = os.path.join(out, "conversion.json")
      if not os.path.exists(report_path):
        conversion.convert_workdir(source, out, kv_lora_rank=c, rope_dims=r, method=method,
                                   num_batches=num_batches)
      with open(report_path) as f:
        report = json.load(f)
      converted = _saved_config(out)
      add(f"converted ({method})", c, r, converted["model"], report["converted_perplexity"],
          report["seconds"])
      if method != methods[0]:
        continue
      start = time.perf_counter()
      ft = json.loads(json.dumps(converted))
      ft["train"].update(init_from=out, num_steps=finetune_steps, learning_rate=finetune_lr,
                         warmup_steps=max(1, finetune_steps // 10), decay_steps=0,
                         eval_every=0, checkpoint_every=0)
      ft["eval"]["sample_len"] = 0
      add(f"converted + {finetune_steps}-step fine-tune", c, r, converted["model"],
          _train(ft, out + "_ft"), time.perf_counter() - start)
    if scratch:
      start = time.perf_counter()
      fresh = json.loads(json.dumps(saved))
      att = dict(converted["model"]["attention"], mla_rope_pairs="", mla_kv_norm=True)
      fresh["model"] = dataclasses.asdict(models.parse_config({**converted["model"],
                                                               "attention": att}))
      fresh["eval"]["sample_len"] = 0
      add(f"MLA from scratch ({saved['train']['num_steps']} steps)", c, r, fresh["model"],
          _train(fresh, os.path.join(output_dir, f"scratch_c{c}_r{r}")),
          time.perf_counter() - start)
  return rows


def _saved_config(workdir: str) -> dict:
  mngr = checkpoint.manager(workdir, read_only=True)
  try:
    return checkpoint.read_json(mngr, 0)[0]
  finally:
    mngr.close()


def write(rows, output_dir: str) -> dict:
  """conversion_study.{json,md,png}: the rows, a table per point, perplexity vs cache bytes."""
  from latent_attention.plots import results as plots  # matplotlib only here.
  paths = {ext: os.path.join(output_dir, f"conversion_study.{ext}")
           for ext in ("json", "md", "png")}
  checkpoint.dump_json(paths["json"], rows)
  methods = list(dict.fromkeys(r["method"] for r in rows[1:]))
  points = list(dict.fromkeys((r["kv_lora_rank"], r["rope_dims"]) for r in rows[1:]))
  lines = [f"Perplexity on {rows[0]['split']}; the original, {rows[0]['method']}: "
           f"{rows[0]['perplexity']:.3f} at {rows[0]['kv_bytes_per_token']:,} KV-cache bytes "
           "per token.", "",
           "| d_c | d_R | KV bytes / token | " + " | ".join(methods) + " |",
           "|---:|---:|---:|" + "---:|" * len(methods)]
  for c, r in points:
    got = {x["method"]: x for x in rows[1:] if (x["kv_lora_rank"], x["rope_dims"]) == (c, r)}
    size = next(iter(got.values()))["kv_bytes_per_token"]
    lines.append(f"| {c} | {r} | {size:,} | " + " | ".join(
        f"{got[m]['perplexity']:.3f}" if m in got else "" for m in methods) + " |")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  plots.perplexity_vs_cache_by_method(rows, paths["png"])
  return paths
