"""Resuming a workdir: what changed in the config since the checkpoint, and what that means.

A resumed run must continue the saved one. Parameter shapes and the training stream (seed,
dataset, window length, batch size) cannot change: `check_config` refuses, naming the fields.
Schedule fields (num_steps, learning rate, warm-up, decay) may change: it says what the run will
do. Any other difference is listed once and takes its new value.
"""

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from absl import logging

from latent_attention import models
from latent_attention.training import state as state_lib

# Data fields that leave the stream and the parameters as they were (data.worker_count: the
# same stream, but Grain saves the position per worker, so an unfinished run keeps its count).
DATA_FREE = ("data.eval_split", "data.test_split", "data.eval_window_targets", "data.data_dir",
             "data.worker_count")
STREAM = ("seed", "train.batch_size")
# Fields added since some checkpoints were saved: absent there means this value (the behaviour
# before the field existed). Model fields need no entry: a saved model section is read with its
# dataclass's defaults, which keep the behaviour from before each field.
ADDED_DEFAULTS = {"data.tokenizer": "char", "data.vocab_size": 0,
                  "data.tokenizer_train_chars": 10_000_000, "data.token_cache_dir": None,
                  "train.fsdp": 1, "train.init_from": ""}
SCHEDULE = ("train.num_steps", "train.learning_rate", "train.warmup_steps", "train.decay_steps",
            "train.end_learning_rate")


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def changes(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, new value)} for every field that differs (None when absent;
  a field of ADDED_DEFAULTS absent from `saved` has its default there).

  Both sides are compared as JSON reads them back (a saved tuple is a list).
  """
  saved = {**saved, "model": _with_model_defaults(saved["model"])} if "model" in saved else saved
  a, b = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(new)))
  for k, v in ADDED_DEFAULTS.items():
    if k in b and k not in a:
      a[k] = v
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _with_model_defaults(model: dict) -> dict:
  """`model` with every field it lacks at its dataclass default (as the run would read it)."""
  try:
    return dataclasses.asdict(models.parse_config(model))
  except (ValueError, TypeError):  # a field since removed or renamed: compared as saved.
    return model


def _fmt(diff: dict) -> str:
  return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())


def shapes(tree) -> dict:
  """{path: (shape, dtype)} of a tree of arrays, abstract arrays or Orbax array metadata."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def check_config(saved_config: dict, config, saved_params, new_params, step: int,
                 workdir: str) -> None:
  """Refuses to resume a different model or training stream; logs what else changed.

  `saved_params`/`new_params`: the parameter trees (arrays, shapes or metadata) of the
  checkpoint and of the model `config` builds.
  """
  diff = changes(saved_config, config.to_dict())
  where = f"--workdir={workdir} holds step {step} of"
  if shapes(saved_params) != shapes(new_params):
    model = {k: v for k, v in diff.items() if k.startswith("model.")}
    raise ValueError(f"{where} another model ({_fmt(model) or 'other parameter shapes'}); "
                     "resume with the saved values or train in a new --workdir")
  stream = {k: v for k, v in diff.items() if k in STREAM or (
      k.startswith("data.") and k not in DATA_FREE)}
  if stream:
    raise ValueError(f"{where} another training stream ({_fmt(stream)}); the saved data "
                     "position does not apply: resume with the saved values or train in a new "
                     "--workdir")
  workers = diff.get("data.worker_count")
  if workers and step < config.train.num_steps:  # a finished run restores no data position.
    raise ValueError(f"{where} a data position saved with data.worker_count={workers[0]} "
                     f"(Grain keeps one per worker; this run has {workers[1]}): resume with "
                     f"--config.data.worker_count={workers[0]} or train in a new --workdir")
  schedule = {k: v for k, v in diff.items() if k in SCHEDULE}
  if schedule:
    old_lr = state_lib.learning_rate_schedule(
        ml_collections.ConfigDict(saved_config["train"]))(step)
    new_lr = state_lib.learning_rate_schedule(config.train)(step)
    num_steps = config.train.num_steps
    plan = (f"training continues from step {step} to {num_steps}" if num_steps > step else
            f"no training (step {step} >= train.num_steps={num_steps}); the checkpoint is "
            "evaluated")
    logging.warning("Resuming with a changed schedule (%s): %s; the learning-rate schedule "
                    "is recomputed from the new values (at step %d: %.4g, was %.4g)",
                    _fmt(schedule), plan, step, float(new_lr), float(old_lr))
  rest = {k: v for k, v in diff.items() if k not in schedule}
  if rest:
    logging.warning("Resuming with fields that differ from the checkpoint's; the new values "
                    "apply from step %d: %s", step, _fmt(rest))
