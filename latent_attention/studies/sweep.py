"""Ablation sweeps: train, evaluate and time every run of a sweep file; one table and plots.

A sweep file (configs/sweeps/*.py) has `get_config(arg)` returning a ConfigDict with:

  base                the config every run starts from, 'configs/<file>.py[:arg]' (a relative
                      path is taken from the repository root).
  overrides           {dotted config key: value} applied to every run.
  runlocal_overrides  {dotted config key: value} applied next with --runlocal, where the base
                      argument also gets ',runlocal': every run shrinks to seconds on a CPU.
  runs                [{name, overrides, base (optional: another config spec for this run,
                      e.g. another model)}]; a run's own overrides come last, so they win.
                      `train.init_from: "run:<name>"` starts a run from the parameters of an
                      earlier run of the list, trained with the same seed (e.g. a dense run
                      converted to DSA in stages).
  grid                {dotted config key: values}: one more run per point of the product, named
                      after the keys' last parts and the values (e.g. kv_lora_rank16).
  benchmark           steps and warmup of the train-step timing (`step_bench.benchmark`;
                      default 50 and 5).
  decode              optional {context, batch, steps}: each LM run's model is also timed by
                      the decode benchmark (`decode_bench.measure`) at that point: decode
                      ms/step and its ratio to the bandwidth bound (--runlocal: context 32).
  quality             the y axis of the LM runs' KV-cache plot: perplexity (default) or
                      accuracy (recall tasks such as MQAR); also the metric runs are compared on.
  seeds               optional: the values of config.seed each run is trained with, e.g. (0, 1,
                      2); `--seeds=N` on the command line means (0, ..., N-1) and wins.
  reference           optional: the run the others are compared with (default: the first).

Mappings with dotted keys are built as `ml_collections.ConfigDict(..., allow_dotted_keys=True)`.
These fields (sweep_config.py), then the config of every run to train (`check_configs`:
training/config.py), are checked before the first run starts or anything is written.

Run `name` lives in <workdir>/<name>/ (with seeds: <workdir>/<name>/seed<s>/): a train.py
workdir plus result.json (its table row and config) or, when it raised, error.txt (the
traceback) and a failed row. A run whose result.json
holds status 'ok' and the same config is skipped when the sweep runs again; failed runs are
retried. SIGTERM/SIGINT stops the sweep: during training at once, after a checkpoint from which
the run resumes next time; otherwise once the current run is done. results.csv, results.md and
the plots cover every run of the sweep that has a result.json.
"""

import functools
import itertools
import json
import os
import re
import time
import traceback
from typing import NamedTuple

from absl import logging

from latent_attention import config_files, models
from latent_attention.bench import decode as decode_bench, step as step_bench
from latent_attention.studies import results
from latent_attention.studies.sweep_config import REPO_ROOT, check_sweep
from latent_attention.training import checkpoint, evaluate, loop, metrics, peaks, resume
from latent_attention.training.config import validate_config

# --runlocal is a smoke test: its timings mean nothing, so time few steps.
RUNLOCAL_BENCHMARK = {"steps": 3, "warmup": 1}
RESULT, ERROR = "result.json", "error.txt"
RUN_PREFIX = "run:"  # train.init_from naming an earlier run of the sweep.


class Outcome(NamedTuple):
  rows: list  # the table rows, sorted as in results.csv.
  interrupted: str | None  # the signal that stopped the sweep, if any.


def check_configs(sweep, runs: dict, jobs, runlocal: bool) -> None:
  """Builds and validates the config of every (run name, seed) in `jobs` before the first run
  trains: a bad value in the last run stops the sweep before the first one spends its hour."""
  for name, seed in jobs:
    try:
      config = make_config(sweep, runs[name], runlocal)
      if seed is not None:
        config.seed = seed
      validate_config(config)
    except ValueError as e:
      raise ValueError(f"sweep run {name!r}: {e}") from None


def expand(sweep) -> dict:
  """Run name -> {base, overrides}: the explicit runs, then one run per grid point."""
  runs = {}

  def add(name, overrides, base=None):
    if not re.fullmatch(r"[\w.=+-]+", name) or name in runs:
      raise ValueError(f"sweep run name {name!r} is invalid: names must be unique and made of "
                       "letters, digits and _.=+-")
    if not (base or sweep.get("base")):
      raise ValueError(f"sweep run {name!r} has no base: set the sweep's `base` or the run's")
    runs[name] = {"base": base or sweep.base, "overrides": dict(overrides or {})}

  for run in sweep.get("runs") or ():
    add(run["name"], run.get("overrides"), run.get("base"))
  grid = dict((sweep.get("grid") or {}).items())
  for values in itertools.product(*grid.values()) if grid else ():
    add("_".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(grid, values)),
        dict(zip(grid, values)))
  if not runs:
    raise ValueError("the sweep defines no runs: give `runs`, `grid` or both")
  return runs


def make_config(sweep, run: dict, runlocal: bool = False):
  """The locked config of a run from `expand`: base, then sweep, runlocal and run overrides."""
  path, _, arg = run["base"].partition(":")
  if runlocal:
    arg = ",".join(a for a in (arg, "runlocal") if a)
  path = os.path.join(REPO_ROOT, path)  # join keeps an absolute path as it is.
  config = config_files.load(f"{path}:{arg}" if arg else path)
  config.lock()
  layers = [("sweep overrides", sweep.get("overrides") or {}), ("run override", run["overrides"])]
  if runlocal:
    layers.insert(1, ("sweep runlocal_overrides", sweep.get("runlocal_overrides") or {}))
  for label, layer in layers:
    for key, value in layer.items():
      parts, section = key.split("."), config
      for i, part in enumerate(parts):
        if not hasattr(section, "keys") or part not in section:
          raise ValueError(f"{label} {key!r} is invalid: the config has no field "
                           f"{'.'.join(parts[:i + 1])}")
        if i < len(parts) - 1:
          section = section[part]
      try:
        section[parts[-1]] = value
      except TypeError:  # the locked config keeps each field's type.
        old = section[parts[-1]]
        raise ValueError(f"{label} {key}={value!r} is invalid: must be of type "
                         f"{type(old).__name__}, like the base config's {old!r}") from None
  return config


def seed_list(sweep, num_seeds: int | None = None) -> list[int | None]:
  """The seeds each run is trained with; [None] (the config's own seed, no seed<s>/ folder)
  when neither the sweep nor `num_seeds` asks for any."""
  if num_seeds is not None:
    if num_seeds < 1:
      raise ValueError(f"--seeds={num_seeds} is invalid: must be a positive integer")
    return list(range(num_seeds))
  seeds = sweep.get("seeds") or ()
  if not isinstance(seeds, (list, tuple)):
    raise ValueError(f"sweep seeds={seeds!r} is invalid: must be a list of distinct "
                     "non-negative integers")
  seeds = list(seeds)
  if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds) or len(
      set(seeds)) < len(seeds):
    raise ValueError(f"sweep seeds={tuple(seeds)!r} is invalid: must be distinct non-negative "
                     "integers")
  return seeds or [None]


def run_dir_of(workdir: str, name: str, seed: int | None) -> str:
  return os.path.join(workdir, name, *([] if seed is None else [f"seed{seed}"]))


def run_sweep(sweep_spec: str, workdir: str, runlocal: bool = False,
              only: list[str] | None = None, num_seeds: int | None = None) -> Outcome:
  """Runs the sweep's runs (or those named in `only`) for each seed, then writes the tables and
  the plots."""
  sweep = config_files.load(sweep_spec)
  runs, seeds, jobs = plan(sweep, runlocal, only, num_seeds)
  timing = RUNLOCAL_BENCHMARK if runlocal else {"steps": 50, "warmup": 5,
                                                 **(sweep.get("benchmark") or {})}
  os.makedirs(workdir, exist_ok=True)
  interrupted = None
  # train_and_evaluate's own handler takes over while it trains; at any other time a signal
  # stops the sweep once the current run is done.
  with loop.StopFlag() as stop:
    for i, (name, seed) in enumerate(jobs, 1):
      tag = name if seed is None else f"{name} seed {seed}"
      logging.info("[%d/%d] %s", i, len(jobs), tag)
      interrupted = _run(name, runs[name], sweep, runlocal, workdir, timing, seed)
      interrupted = interrupted or stop.signal
      if interrupted:
        logging.warning("%s received: sweep stopped at run %d/%d (%s); rerun the same command "
                        "to resume", interrupted, i, len(jobs), tag)
        break
  rows = []
  for n in runs:
    for s in seeds:
      row = _read(os.path.join(run_dir_of(workdir, n, s), RESULT))
      if row:
        rows.append({**row, "dir": os.path.relpath(run_dir_of(workdir, n, s), workdir)})
  title = sweep_spec + (" (runlocal)" if runlocal else "")
  return Outcome(results.write_results(rows, workdir, title, sweep.get("quality") or "perplexity",
                                       sweep.get("reference")), interrupted)


def plan(sweep, runlocal: bool = False, only: list[str] | None = None,
         num_seeds: int | None = None) -> tuple[dict, list, list]:
  """(runs by name, seeds, the (name, seed) jobs to train), once every field of the sweep and
  the config of every job have been checked."""
  check_sweep(sweep)
  seeds = seed_list(sweep, num_seeds)
  runs = expand(sweep)
  reference = sweep.get("reference")
  if reference is not None and reference not in runs:
    raise ValueError(f"sweep reference={reference!r} is invalid: choose one of "
                     f"{', '.join(runs)}")
  unknown = sorted(set(only or ()) - set(runs))
  if unknown:
    raise ValueError(f"--only names unknown runs {', '.join(unknown)}; the sweep has "
                     f"{', '.join(runs)}")
  jobs = [(name, seed) for name in runs if not only or name in only for seed in seeds]
  names = list(runs)
  for i, (name, run) in enumerate(runs.items()):
    source = str(run["overrides"].get("train.init_from", ""))
    if source.startswith(RUN_PREFIX) and source[len(RUN_PREFIX):] not in names[:i]:
      raise ValueError(f"sweep run {name!r}: train.init_from={source!r} is invalid: name an "
                       f"earlier run of the sweep ({', '.join(names[:i]) or 'none'})")
  check_configs(sweep, runs, jobs, runlocal)
  return runs, seeds, jobs


def _run(name, run, sweep, runlocal, workdir, timing, seed=None) -> str | None:
  """Trains, evaluates and times one run (with `seed`, when given) into its directory under
  `workdir`; returns the signal if one stopped it."""
  run_dir = run_dir_of(workdir, name, seed)
  os.makedirs(run_dir, exist_ok=True)
  config = config_json = None
  try:
    config = make_config(sweep, run, runlocal)
    if seed is not None:
      config.seed = seed
    source = config.train.get("init_from", "")
    if source.startswith(RUN_PREFIX):  # `plan` checked that the run comes earlier.
      config.train.init_from = run_dir_of(workdir, source[len(RUN_PREFIX):], seed)
    config_json = _as_json(config.to_dict())
    previous = _read(os.path.join(run_dir, RESULT))
    if (previous and previous["status"] == "ok"
        and not resume.changes(previous["config"], config_json)):  # fields added since: equal.
      logging.info("%s: finished earlier with the same config, skipped", name)
      return None
    _check_resumable(run_dir, config_json)  # before anything of the old run is removed.
    for stale in (RESULT, ERROR):  # a failed try's row, or one whose checkpoints were moved.
      if os.path.exists(os.path.join(run_dir, stale)):
        os.remove(os.path.join(run_dir, stale))
    start = time.perf_counter()
    trained = loop.train_and_evaluate(config, run_dir)
    if trained.get("interrupted"):
      return trained["interrupted"]
    wall = time.perf_counter() - start
    evaluated = evaluate.evaluate_workdir(run_dir)
    # The table's decode speed is evaluate_workdir's: the benchmark skips its own.
    timed = step_bench.benchmark(config, timing["steps"], timing["warmup"], decode_tokens=0)
    row = {**_describe(name, config), **_measured(config, run_dir, evaluated, timed, wall)}
    if sweep.get("decode") and evaluated.get("kv_cache_bytes_per_token") is not None:
      row.update(_decode_point(config, sweep.decode, runlocal))
  except Exception as e:  # one failed run must not stop the others.
    with open(os.path.join(run_dir, ERROR), "w") as f:
      f.write(traceback.format_exc())
    error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    logging.error("%s failed (%s); traceback in %s", name, error, os.path.join(run_dir, ERROR))
    row = {**(_describe(name, config) if config else {"name": name}),
           "status": "failed", "error": error}
    kept = _read(os.path.join(run_dir, RESULT))
    if kept and kept["status"] == "ok":  # another config's finished run: kept, not overwritten.
      os.replace(os.path.join(run_dir, RESULT), os.path.join(run_dir, "result.previous.json"))
  checkpoint.dump_json(os.path.join(run_dir, RESULT), {**row, "config": config_json})
  return None


@functools.cache
def _device_rates(runlocal: bool):
  """(read bytes/s, matmul FLOP/s) of this device, measured once per sweep process (small and
  quick with --runlocal, whose timings mean nothing)."""
  if runlocal:
    return peaks.read_bandwidth(2**24, 2), peaks.matmul_flops(256, 2)
  return (max(peaks.read_bandwidth() for _ in range(3)), peaks.matmul_flops())


def _decode_point(config, point, runlocal) -> dict:
  """The decode benchmark's ms/step and x bound for the run's model (random weights)."""
  bandwidth, flops_rate = _device_rates(runlocal)
  (row,) = decode_bench.measure(
      models.parse_config(config.model), context=32 if runlocal else point.context,
      batches=(point.batch,), steps=point.get("steps", 16), bandwidth=bandwidth,
      flops_rate=flops_rate)
  return {"decode_ms_per_step": row["decode_ms_per_step"], "decode_x_bound": row["times_bound"]}


def _as_json(obj):
  """What `obj` reads back as from JSON (tuples become lists), for config comparisons."""
  return json.loads(json.dumps(obj))


def _read(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _check_resumable(run_dir, config_json):
  """Refuses to resume a checkpoint trained with another config: its numbers would mix both."""
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return
  mngr = checkpoint.manager(run_dir, read_only=True)
  try:
    step = mngr.latest_step()
    saved = checkpoint.read_json(mngr, step)[0] if step is not None else None
  finally:
    mngr.close()
  if saved is None:
    return
  changed = resume.changes(saved, config_json)
  if changed:
    k, (old, new) = next(iter(changed.items()))
    raise ValueError(f"{run_dir} holds a checkpoint (step {step}) trained with another config "
                     f"({k}: {old!r} -> {new!r}); delete it to retrain this run")


def _describe(name, config) -> dict:
  """The run's name, attention kind, its key sizes and the MLP width."""
  model = config.model
  att = model.get("attention")
  sizes = [f"M={model.num_latents}"] if "num_latents" in model else []
  if att is not None:
    n, h = att.num_heads, att.head_dim
    if att.kind in ("mla", "gla"):
      q = f", d_c'={att.q_lora_rank}" if att.q_lora_rank else ""
      g = f"G={att.gla_latent_heads}, " if att.kind == "gla" else ""
      sizes.append(f"{g}d_c/d_R={att.kv_lora_rank}/{att.qk_rope_head_dim}{q}")
      if att.get("index_topk"):  # DSA.
        sizes.append(f"top_k={att.index_topk} ({att.index_mode}), H_I/d_I="
                     f"{att.index_n_heads}/{att.index_head_dim}")
    elif att.kind == "tpa":
      sizes.append(f"N/H={n}/{h}, R_Q/R_K/R_V={att.tpa_q_rank}/{att.tpa_k_rank}/"
                   f"{att.tpa_v_rank}")
    elif att.kind == "gta":
      sizes.append(f"N/K/H={n}/{att.num_kv_heads}/{h}, d_R={att.qk_rope_head_dim}")
    elif att.kind == "lowrank_gated":
      sizes.append(f"N/r={n}/{att.lowrank_rank}")
    elif att.kind == "head_gated":
      kept = att.head_gated_top_k or f"{att.head_gated_keep_fraction:g}N"
      sizes.append(f"N/H={n}/{h}, top_k={kept}")
    else:
      kv = {"mha": n, "mqa": 1}.get(att.kind, att.num_kv_heads)
      sizes.append(f"N/K/H={n}/{kv}/{h}")
  kind = att.kind if att is not None else ""
  if model.get("name", "lm") != "lm":  # e.g. perceiver/mha: another model than the plain LM.
    kind = f"{model.name}/{kind}" if kind else model.name
  return {"name": name, "seed": config.seed, "kind": kind, "sizes": ", ".join(sizes),
          "mlp_dim": model.get("mlp_dim")}


def _measured(config, run_dir, evaluated, timed, wall) -> dict:
  """The measurements of a finished run (docs/design.md, Measurements)."""
  split = config.data.eval_split
  ev = evaluated[split]
  model_lines = [m for m in metrics.read_metrics(run_dir) if m["split"] == "model"]
  return {
      "status": "ok", "error": None,
      "params": int(model_lines[-1]["params"]) if model_lines else None,
      "eval_split": split, "eval_loss": ev["loss"], "perplexity": ev.get("perplexity"),
      "bits_per_char": ev.get("bits_per_char"), "bits_per_token": ev.get("bits_per_token"),
      "bits_per_byte": ev.get("bits_per_byte"),
      "accuracy": ev["accuracy"],
      "kv_bytes_per_token": evaluated.get("kv_cache_bytes_per_token"),
      "kv_formula_bytes_per_token": evaluated.get("kv_cache_formula_bytes_per_token"),
      "step_time_ms": 1e3 * timed["step_time_s"], "tokens_per_s": timed["tokens_per_s"],
      "mfu": timed.get("mfu"),
      "decode_tokens_per_s": evaluated.get("decode_tokens_per_s"),
      # This invocation's train_and_evaluate: compilation and periodic evals included.
      "train_wall_s": wall,
  }
