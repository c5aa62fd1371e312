"""`convert_workdir`: a trained MHA/GQA/MQA run directory -> an MLA run directory.

The new workdir is a normal one: a step-0 checkpoint (converted parameters, a fresh optimizer
state, the source's data order), its config and vocabulary, so eval.py evaluates it and train.py
fine-tunes it, either in place (resuming at step 0) or as `train.init_from`. It also gets
`config.py`, the converted config as a config file for train.py, and `conversion.json`, what was
kept and how much was lost per layer (models/mla_conversion.py has the method).
"""

import dataclasses
import json
import os
import pprint
import time

import jax
import numpy as np
from absl import logging

from latent_attention import config_files, models
from latent_attention.attention import cache_elements_per_token
from latent_attention.models import mla_conversion
from latent_attention.training import checkpoint, evaluate, loop

_CONFIG_PY = '''r"""The MLA that scripts/convert_to_mla.py made from {source} (step {step}).

Fine-tune it (a fresh optimizer, step 0, the schedule below), e.g.:

  python train.py --config={out}/config.py --workdir={out}_ft \\
      --config.train.init_from={out} --config.train.num_steps=75
"""

import ml_collections


def get_config(arg=None):
  del arg
  return ml_collections.ConfigDict(CONFIG)


CONFIG = {config}
'''


def calibration_batches(exp, num_batches: int) -> list[np.ndarray]:
  """The first `num_batches` training batches' inputs (the run's own data order)."""
  if num_batches < 1:
    raise ValueError(f"--calibration_batches={num_batches} is invalid: must be >= 1")
  it = iter(exp.dataset.train_loader(exp.config.train.batch_size, exp.config.seed))
  return [np.asarray(next(it)["inputs"]) for _ in range(num_batches)]


def convert_workdir(source: str, out: str, *, kv_lora_rank: int, rope_dims: int,
                    method: str = "activation", num_batches: int = 8,
                    evaluate_split: bool = True) -> dict:
  """Converts `source`'s newest checkpoint into an MLA workdir `out`; returns the report."""
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise ValueError(f"--out={out} already holds a run (checkpoints/); choose a new directory, "
                     "nothing there is overwritten")
  start = time.perf_counter()
  exp, params, step = evaluate.restore_experiment(source)
  saved = exp.config.to_dict()
  params = jax.device_get(params)
  model_cfg, new_params, layers = mla_conversion.convert(
      params, exp.model, saved["model"], calibration_batches(exp, num_batches),
      kv_lora_rank=kv_lora_rank, rope_dims=rope_dims, method=method)
  config = {**saved, "model": dataclasses.asdict(models.parse_config(model_cfg)),
            # A source saved before train.init_from existed: the fine-tune needs the field.
            "train": {"init_from": "", **saved["train"]}}
  new = loop.setup(config_files.from_dict(config), exp.dataset.metadata())
  state = new.init_state(jax.random.key(config["seed"]))
  want = jax.tree.map(lambda x: (x.shape, x.dtype), state.params)
  got = jax.tree.map(lambda x: (x.shape, x.dtype), new_params)
  if want != got:  # a bug in the mapping, never the user's input.
    raise AssertionError(f"converted parameters do not fit the MLA model: {got} vs {want}")
  state = state.replace(params=jax.device_put(new_params, new.state_sharding.params))
  mngr = checkpoint.manager(out)
  try:
    data_iter = iter(new.dataset.train_loader(config["train"]["batch_size"], config["seed"]))
    checkpoint.save(mngr, 0, state, data_iter, new.config, new.dataset.metadata(), force=True)
    mngr.wait_until_finished()
  finally:
    mngr.close()
  att = [models.parse_config(c).attention for c in (saved["model"], config["model"])]
  report = {
      "source": os.path.abspath(source), "source_step": step, "method": method,
      "kv_lora_rank": kv_lora_rank, "rope_dims": rope_dims, "calibration_batches": num_batches,
      "calibration_tokens": num_batches * int(np.prod(exp.dataset.input_shape()))
                            * config["train"]["batch_size"],
      "cache_elements_per_token_per_layer": {"source": cache_elements_per_token(att[0]),
                                             "converted": cache_elements_per_token(att[1])},
      "layers": layers,
  }
  if evaluate_split:
    split = config["data"]["eval_split"]
    report["eval_split"] = split
    report["source_perplexity"] = loop.evaluate(exp, params, split)["perplexity"]
    report["converted_perplexity"] = loop.evaluate(new, state.params, split)["perplexity"]
  report["seconds"] = time.perf_counter() - start
  if jax.process_index() == 0:
    checkpoint.dump_json(os.path.join(out, "conversion.json"), report)
    with open(os.path.join(out, "config.py"), "w") as f:
      f.write(_CONFIG_PY.format(source=os.path.abspath(source), step=step,
                                out=os.path.abspath(out),
                                config=pprint.pformat(json.loads(json.dumps(config)),
                                                      width=100, sort_dicts=False)))
  logging.info("Converted %s (step %d) into %s: cache %d -> %d elements per token per layer",
               source, step, out, *report["cache_elements_per_token_per_layer"].values())
  return report
