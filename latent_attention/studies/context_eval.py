"""Perplexity of trained LMs at other context lengths, with and without YaRN (eval_context.py).

Each workdir's checkpoint is evaluated on its eval split at every length L: as trained (its
own RoPE: plain, or the YaRN it was fine-tuned with), and, for L above the training length T,
with YaRN (`rope_scaling=yarn`, factor L / T, original length T; design.md 3.1). Every target
of the split is scored once at each length (design.md 5), so the numbers compare across lengths.
"""

import json
import os
import time

from absl import logging

from latent_attention import config_files
from latent_attention.training import evaluate, loop


def yarn_overrides(trained_len: int, length: int) -> dict:
  """Config overrides that evaluate a model trained at `trained_len` at `length` with YaRN."""
  return {"model.attention.rope_scaling": "yarn",
          "model.attention.rope_factor": str(length / trained_len),
          "model.attention.rope_original_len": str(trained_len)}


def evaluate_lengths(workdir: str, lengths, yarn: bool = True) -> list[dict]:
  """Rows {run, kind, trained_len, length, scaling, loss, perplexity, seconds}, one per
  (length, scaling) of one workdir."""
  # Restored once: RoPE has no parameters, so the same weights serve every length and scaling.
  exp, params, step = evaluate.restore_experiment(workdir)
  saved = exp.config.to_dict()
  trained, split = exp.config.data.seq_len, exp.config.data.eval_split
  rows = []
  for length in lengths:
    variants = [("none", {})]
    if yarn and length > trained:
      variants.append(("yarn", yarn_overrides(trained, length)))
    for scaling, extra in variants:
      start = time.perf_counter()
      config = evaluate.override_config(saved, {"data.seq_len": str(length), **extra})
      exp = loop.setup(config_files.from_dict(config), exp.dataset.metadata())
      scores = loop.evaluate(exp, params, split)
      attn = exp.config.model.attention
      rope = (f"YaRN x{attn.rope_factor:g}" if attn.get("rope_scaling", "none") == "yarn"
              else "plain")
      rows.append({"run": os.path.basename(os.path.normpath(workdir)),
                   "kind": attn.kind, "step": step, "rope": rope,
                   "trained_len": trained, "length": length, "scaling": scaling,
                   "split": split, "loss": scores["loss"], "perplexity": scores["perplexity"],
                   "seconds": time.perf_counter() - start})
      logging.info("%s at %d (%s): perplexity %.4f", workdir, length, scaling,
                   scores["perplexity"])
  return rows


def write(rows, output_dir: str) -> dict:
  """context.json, context.md (a table per run and length) and context.png."""
  from latent_attention.plots import results as plots  # matplotlib only here.
  os.makedirs(output_dir, exist_ok=True)
  paths = {ext: os.path.join(output_dir, f"context.{ext}") for ext in ("json", "md", "png")}
  with open(paths["json"], "w") as f:
    json.dump(rows, f, indent=2)
  runs = list(dict.fromkeys(r["run"] for r in rows))
  lengths = sorted({r["length"] for r in rows})
  table = [["run", "kind", "trained at", "RoPE", *map(str, lengths)]]
  for run in runs:
    for scaling in ("none", "yarn"):
      got = {r["length"]: r for r in rows if r["run"] == run and r["scaling"] == scaling}
      if got:
        first = next(iter(got.values()))
        table.append([run, first["kind"], str(first["trained_len"]),
                      first["rope"] if scaling == "none" else "YaRN (length / trained)",
                      *(f"{got[n]['perplexity']:.3f}" if n in got else "" for n in lengths)])
  with open(paths["md"], "w") as f:
    f.write(f"Perplexity on {rows[0]['split']} at each evaluation context (tokens).\n\n")
    lines = [table[0], ["---"] * 4 + ["---:"] * len(lengths), *table[1:]]
    f.write("\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n")
  plots.perplexity_vs_context(rows, paths["png"])
  return paths
