"""`evaluate_workdir`: restore a checkpoint with its saved config and measure it (eval.py)."""

import copy
import dataclasses
import functools
import os
import re
import statistics

import jax
import jax.numpy as jnp
from absl import logging

from latent_attention import config_files, kv_cache_bytes, kv_cache_formula_bytes, models, timing
from latent_attention.models.decoding import generate, init_cache
from latent_attention.training import checkpoint, loop, metrics as metrics_lib
from latent_attention.training.config import SECTIONS, validate_config

# How errors about the config start (`override_config`'s and validation's), unlike a damaged
# checkpoint's.
_CONFIG_ERRORS = ("override ", "seed=", *(f"{s}." for s in SECTIONS[1:]))


def override_config(saved: dict, overrides: dict) -> dict:
  """The saved config (JSON dict) with dotted `overrides` ({"data.seq_len": "512"}) set, each
  value parsed as the type of the field it replaces; an unknown field is a one-line error."""
  out = copy.deepcopy(saved)
  if overrides and "model" in out:  # fields added since the run was saved, at their defaults.
    out["model"] = dataclasses.asdict(models.parse_config(out["model"]))
  for key, text in overrides.items():
    if why := config_files.unknown_field(out, key):
      raise ValueError(f"override {key}={text}: {why}")
    *path, last = key.split(".")
    node = functools.reduce(lambda section, name: section[name], path, out)
    old = node[last]
    try:
      if isinstance(old, bool):
        if text.lower() not in ("true", "false"):
          raise ValueError
        node[last] = text.lower() == "true"
      else:
        node[last] = type(old)(text) if old is not None else text
    except ValueError:
      raise ValueError(f"override {key}={text}: expected a value of type {type(old).__name__}, "
                       f"like the saved {old!r}") from None
  return out


def restore_experiment(workdir: str, step: int | None = None, overrides: dict | None = None):
  """(experiment, params, step) from `workdir`'s checkpoint `step` (default: the latest); with
  `overrides` (see `override_config`), the saved config changed before the model is built."""
  mngr = checkpoint.manager(workdir, read_only=True)
  try:
    step = checkpoint.checked_step(workdir, mngr, step)
    try:
      exp, state = _restore(mngr, step, overrides or {})
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, ValueError) and str(e).startswith(_CONFIG_ERRORS):
        raise  # a bad override or value, not an unreadable checkpoint.
      readable = []
      for other in sorted(set(mngr.all_steps()) - {step}, reverse=True):
        try:
          _restore(mngr, other, overrides or {})
          readable.append(str(other))
        except Exception:  # pylint: disable=broad-except
          pass
      others = (f"readable steps: {', '.join(readable)} (pass --step={readable[0]})"
                if readable else "no other step is readable")
      raise checkpoint.WorkdirError(f"checkpoint step {step} in {workdir} is unreadable "
                                    f"({checkpoint.reason(e)}); {others}") from e
  finally:
    mngr.close()
  return exp, state.params, step


def _restore(mngr, step: int, overrides: dict):
  saved_config, metadata = checkpoint.read_json(mngr, step)
  config = override_config(saved_config, overrides)
  if overrides:  # before anything is built or written.
    validate_config(config)
  if jax.device_count() % config["train"].get("fsdp", 1):
    # Trained on more devices than this process sees: Orbax restores into any layout.
    config["train"]["fsdp"] = 1
  exp = loop.setup(config_files.from_dict(config), metadata)
  abstract = checkpoint.abstract(jax.eval_shape(exp.init_state, jax.random.key(0)),
                                 exp.state_sharding)
  return exp, checkpoint.restore(mngr, step, abstract)


def cache_report(exp, params, seq_len: int) -> dict:
  """Measured decode-cache bytes after prefilling `seq_len` tokens, next to the formula.

  The cache the prefill returns is traced for its shapes and dtypes only (`jax.eval_shape`):
  the same buffers, without running the prompt op by op (seconds at runlocal sizes).
  """
  model = exp.model
  prompt = jnp.zeros((1, seq_len), jnp.int32)
  _, mutated = jax.eval_shape(
      lambda p, c: model.apply({"params": p, "cache": c}, prompt, decode=True,
                               mutable=["cache"]), params, init_cache(model, 1, seq_len))
  dtype = jax.tree.leaves(
      [x for x in jax.tree.leaves(mutated["cache"]) if jnp.issubdtype(x.dtype, jnp.floating)]
  )[0].dtype
  measured = kv_cache_bytes(mutated["cache"])
  formula = kv_cache_formula_bytes(exp.config.model, seq_len, 1, dtype)
  return {"kv_cache_bytes_per_sequence": measured, "kv_cache_bytes_per_token": measured / seq_len,
          "kv_cache_formula_bytes_per_sequence": formula,
          "kv_cache_formula_bytes_per_token": formula / seq_len, "kv_cache_context": seq_len}


def decode_speed(exp, params, prompt_len: int, new_tokens: int, repeats: int = 3) -> float:
  """Tokens/s of jitted cached generation (batch 1, after a warm-up compile)."""
  prompt = jnp.zeros((1, prompt_len), jnp.int32)
  run = lambda: generate(exp.model, params, prompt, jax.random.key(0),
                         max_new_tokens=new_tokens, temperature=1.0)
  return new_tokens / statistics.median(timing.time_calls(run, repeats=repeats))


def check_plottable(exp) -> None:
  from latent_attention.models import perceiver
  if not isinstance(exp.model, perceiver.Perceiver) or exp.model.cfg.encoder != "latent":
    encoder = f", encoder={exp.model.cfg.encoder!r}" if exp.config.model.name == "perceiver" else ""
    raise ValueError("--plot_attention needs a Perceiver classifier with encoder='latent'; this "
                     f"workdir holds model.name={exp.config.model.name!r}{encoder}")


def plot_cross_attention(exp, params, path: str, num_images: int = 4) -> str:
  """PNG of the first cross-attention's maps of a few latents over test images (Perceiver)."""
  from latent_attention.models import perceiver
  from latent_attention.plots import attention_maps  # matplotlib only here.
  batch = next(iter(exp.dataset.eval_batches(exp.config.data.test_split, num_images)))
  maps = perceiver.cross_attention_maps(exp.model, params, jnp.asarray(batch["inputs"]))
  attention_maps.plot_attention_maps(batch["inputs"], maps, path, num_images=num_images)
  return path


def evaluate_workdir(workdir: str, step: int | None = None, splits=None,
                     plot_attention: bool = False, plot_curves: bool = False,
                     overrides: dict | None = None) -> dict:
  """Evaluates a checkpoint on its eval and test splits; writes eval_results.json (and with
  plot_curves, learning_curve.png from the run's metrics.jsonl). With config `overrides`
  (e.g. another data.seq_len), the results go to eval_results_<overrides>.json instead."""
  exp, params, step = restore_experiment(workdir, step, overrides)
  cfg = exp.config
  if plot_attention:
    check_plottable(exp)
  lines = metrics_lib.read_metrics(workdir) if plot_curves else None
  if plot_curves and not any(m.get("split") in ("train", "eval") for m in lines):
    raise ValueError(f"--plot_curves: {workdir}/metrics.jsonl has no train or eval lines to "
                     "plot")  # before evaluating, not after.
  splits = splits or list(dict.fromkeys([cfg.data.eval_split, cfg.data.test_split]))
  results = {"workdir": os.path.abspath(workdir), "step": step,
             "attention": cfg.model.get("attention", {}).get("kind"),
             **({"overrides": dict(overrides)} if overrides else {})}
  for split in splits:
    logging.info("Evaluating %s on %s", workdir, split)
    results[split] = loop.evaluate(exp, params, split)
  if exp.dataset.task == "lm" and hasattr(exp.model, "cache_elements"):
    results.update(cache_report(exp, params, cfg.data.seq_len))
    results["decode_tokens_per_s"] = decode_speed(exp, params, cfg.data.seq_len // 2,
                                                  cfg.data.seq_len // 2)
    results["sample"] = loop.sample_text(exp, params, cfg.seed)
  if plot_attention:
    results["attention_plot"] = plot_cross_attention(
        exp, params, os.path.join(workdir, "attention_maps.png"))
  if plot_curves and jax.process_index() == 0:
    from latent_attention.plots import results as plots  # matplotlib only here.
    results["curve_plot"] = os.path.join(workdir, "learning_curve.png")
    plots.learning_curve(lines, results["curve_plot"])
  if jax.process_index() == 0:
    checkpoint.dump_json(os.path.join(workdir, results_name(overrides)), results)
  return results


def results_name(overrides: dict | None) -> str:
  """eval_results.json, or eval_results_<field><value>_....json for an overridden config."""
  if not overrides:
    return "eval_results.json"
  slug = "_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in sorted(overrides.items()))
  return f"eval_results_{re.sub(r'[^A-Za-z0-9_.=-]', '', slug)}.json"
