"""`train_and_evaluate(config, workdir)`: the training loop behind train.py and the sweeps.

Data parallel over a ('data', 'fsdp') mesh (training/sharding.py): the batch is split over
every device; params and optimizer state are replicated, or split over the 'fsdp' axis with
`train.fsdp` > 1. The same code runs on one CPU, several GPUs or a TPU slice (multi-host: each
process feeds its share of the global batch).
"""

import dataclasses
import functools
import math
import os
import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from latent_attention.data import TextLM, make_dataset
from latent_attention.models import build_model
from latent_attention.models.decoding import generate
from latent_attention.training import (checkpoint, metrics as metrics_lib, peaks, resume,
                                       sharding, state as state_lib, steps)
from latent_attention.training.config import validate_config


class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss or gradient."""


@dataclasses.dataclass
class Experiment:
  """Everything built from a config: dataset, model, optimizer, mesh and jitted steps."""

  config: Any
  dataset: Any
  model: Any
  optimizer: Any
  mesh: jax.sharding.Mesh
  data_sharding: NamedSharding
  state_sharding: Any  # a NamedSharding per train-state array (training/sharding.py).
  init_state: Callable
  train_step: Callable
  eval_step: Callable

  def to_global(self, local_batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.data_sharding, x), local_batch)

  @property
  def bits_name(self):
    char = isinstance(self.dataset, TextLM) and self.dataset.tokenizer == "char"
    return "bits_per_char" if char else "bits_per_token"


def setup(config, metadata: dict | None = None) -> Experiment:
  """Builds the experiment; `metadata` (e.g. a saved vocabulary) comes from a checkpoint."""
  dataset = make_dataset(config.data, metadata)
  vocab = getattr(dataset, "vocab", None)
  if vocab is not None and vocab.size != config.model.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} is invalid: the "
                     f"{config.data.name} vocabulary has {vocab.size} symbols")
  if vocab is not None and config.get("eval", {}).get("sample_len"):
    try:  # now, not when the sample is drawn after training.
      vocab.encode(config.eval.prompt)
    except ValueError as e:
      raise ValueError(f"eval.prompt={config.eval.prompt!r} is invalid: {e}") from None
  n_dev = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if getattr(config.train, field) % n_dev:
      raise ValueError(f"train.{field}={getattr(config.train, field)} is invalid: must be "
                       f"divisible by the {n_dev} devices")
  model = build_model(config.model)
  optimizer = state_lib.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.train.get("fsdp", 1))
  example = jnp.zeros((1, *dataset.input_shape()), dataset.input_dtype)
  return Experiment(config, dataset, model, optimizer, mesh, sharding.batch_sharding(mesh),
                    *jit_steps(model, optimizer, mesh, example))


def jit_steps(model, optimizer, mesh, example_inputs):
  """(state sharding, init_state, train_step, eval_step) jitted for `mesh`: what `setup`
  trains with, and what bench/preflight.py compiles for a TPU slice or GPU node."""
  data_sharding, replicated = sharding.batch_sharding(mesh), NamedSharding(mesh, P())
  create = functools.partial(state_lib.create_state, model=model, optimizer=optimizer,
                             example_inputs=example_inputs)
  state_sharding = sharding.state_sharding(jax.eval_shape(create, jax.random.key(0)), mesh)
  init_state = jax.jit(create, out_shardings=state_sharding)
  train_step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=optimizer),
                       in_shardings=(state_sharding, data_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=model),
                      in_shardings=(state_sharding.params, data_sharding),
                      out_shardings=replicated)
  return state_sharding, init_state, train_step, eval_step


def evaluate(exp: Experiment, params, split: str) -> dict:
  """Loss, accuracy, perplexity and bits per token over every example of `split`."""
  totals = None
  for batch in exp.dataset.eval_batches(split, exp.config.train.eval_batch_size):
    s = exp.eval_step(params, exp.to_global(batch))
    totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
  return steps.summarize(jax.device_get(totals), exp.dataset.task, exp.bits_name)


def sample_text(exp: Experiment, params, seed: int = 0) -> str | None:
  """A text sample on the cached decode path (text LMs only).

  The model never saw positions past data.seq_len, so a long sample is generated in windows:
  whenever the context would overflow, decoding restarts from the last half window.
  """
  if not isinstance(exp.dataset, TextLM) or exp.config.eval.sample_len <= 0:
    return None
  ecfg, t = exp.config.eval, exp.config.data.seq_len
  tokens = list(exp.dataset.vocab.encode(ecfg.prompt)[-t // 2:])
  rng = jax.random.key(seed)
  new_tokens = []
  while len(new_tokens) < ecfg.sample_len:
    context = tokens[-(t // 2):] if len(tokens) >= t else tokens
    n = min(ecfg.sample_len - len(new_tokens), t - len(context))
    rng, step_rng = jax.random.split(rng)
    out = generate(exp.model, params, jnp.asarray(context, jnp.int32)[None], step_rng,
                   max_new_tokens=n, temperature=ecfg.temperature, top_k=ecfg.top_k)
    tokens = context + [int(x) for x in np.asarray(out[0])]
    new_tokens += [int(x) for x in np.asarray(out[0])]
  return ecfg.prompt + exp.dataset.vocab.decode(new_tokens)


class StopFlag:
  """SIGTERM/SIGINT request a checkpoint and a clean exit instead of killing the run."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
      # Nested in another flag (a sweep around its runs): a signal that flag already caught
      # (say while the next run generated its data) stops this one too, not after it.
      outer = getattr(self._previous[sig], "__self__", None)
      if isinstance(outer, StopFlag) and outer.signal and not self.signal:
        self.signal = outer.signal
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self, step: int, every: int) -> str | None:
    """The signal to stop at `step`. Processes may see a signal at different steps, and one
    that stops alone leaves the others waiting in a collective: with several processes they
    agree (an all-gather) every `every` steps, and all stop at the same step."""
    if jax.process_count() == 1:
      return self.signal
    if step % every:
      return None
    seen = multihost_utils.process_allgather(np.int32(self.signal is not None))
    return (self.signal or "a signal to another process") if np.any(seen) else None


def _resume(config, workdir: str, mngr):
  """(experiment, state, data iterator) from the newest readable checkpoint, or fresh ones.

  A newer checkpoint that cannot be read is moved aside (with a warning naming it); when none is
  readable the run stops, moving nothing. A checkpoint of another model or training stream is
  refused by `resume.check_config`.
  """
  tcfg, unreadable = config.train, {}
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      saved_config, metadata = checkpoint.read_json(mngr, step)
      saved_params = checkpoint.param_metadata(workdir, step)
    except Exception as e:  # pylint: disable=broad-except
      unreadable[step] = e
      continue
    exp = setup(config, metadata)
    state = exp.init_state(jax.random.key(config.seed))
    resume.check_config(saved_config, config, saved_params, state.params, step, workdir)
    checkpoint.check_process_count(mngr, step)  # a user error, not an unreadable checkpoint.
    data_iter = iter(exp.dataset.train_loader(tcfg.batch_size, config.seed))
    # A finished run has no input position left to restore (nor one of an older pipeline).
    restore_iter = data_iter if step < tcfg.num_steps else None
    try:
      state = checkpoint.restore(
          mngr, step, checkpoint.abstract(state, exp.state_sharding), restore_iter)
    except Exception as e:  # pylint: disable=broad-except
      unreadable[step] = e
      continue
    if unreadable and jax.process_index() == 0:
      moved = checkpoint.set_aside(workdir, unreadable)
      mngr.reload()
      for (bad, e), dst in zip(unreadable.items(), moved):
        logging.warning("Checkpoint step %d is unreadable (%s); moved it to %s", bad,
                        checkpoint.reason(e), dst)
    logging.info("Resumed from %s at step %d", workdir, step)
    return exp, state, data_iter
  if unreadable:
    raise checkpoint.WorkdirError(
        f"--workdir={workdir} holds no readable checkpoint: " + "; ".join(
            f"step {s} ({checkpoint.reason(e)})" for s, e in unreadable.items())
        + f"; move {os.path.join(workdir, 'checkpoints')} away to start afresh")
  exp = setup(config)
  state = exp.init_state(jax.random.key(config.seed))
  if tcfg.get("init_from"):
    state = state.replace(params=_params_from(tcfg.init_from, exp, state))
  return exp, state, iter(exp.dataset.train_loader(tcfg.batch_size, config.seed))


def _params_from(source: str, exp, state):
  """The newest checkpoint's parameters of another run (train.init_from), for a fresh run of
  the same model: step 0, a fresh optimizer, its own schedule and data order. A dense MLA run
  starts a DSA model (attention.index_topk > 0): its indexer keeps its fresh initialisation."""
  if not os.path.isdir(os.path.join(source, "checkpoints")):
    raise ValueError(f"train.init_from={source} is invalid: no run directory with checkpoints "
                     "there")
  src = checkpoint.manager(source, read_only=True)
  try:
    step = checkpoint.checked_step(source, src, None)
    shapes = lambda tree: {jax.tree_util.keystr(path): tuple(x.shape)  # noqa: E731
                           for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    have, want = shapes(checkpoint.param_metadata(source, step)), shapes(state.params)
    diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k)
                  and not (k not in have and "'indexer'" in k))  # a new DSA indexer.
    if diff:
      raise ValueError(f"train.init_from={source}: its parameters (step {step}) are not this "
                       f"model's; first difference: {diff[0]} (saved {have.get(diff[0])}, this "
                       f"model {want.get(diff[0])})")
    fresh = sorted(want.keys() - have.keys())
    abstract = checkpoint.abstract(state.params, exp.state_sharding.params)
    flat = traverse_util.flatten_dict(abstract)
    kept = traverse_util.unflatten_dict({k: v for k, v in flat.items() if "indexer" not in k})
    restored = traverse_util.flatten_dict(checkpoint.restore_params(
        src, step, kept if fresh else abstract))
  finally:
    src.close()
  logging.info("Initialised from %s (step %d): parameters only, training starts at step 0%s",
               source, step, f"; {len(fresh)} indexer parameters start fresh" if fresh else "")
  ours = traverse_util.flatten_dict(state.params)
  return traverse_util.unflatten_dict({k: restored.get(k, ours[k]) for k in ours})


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

  Returns a dict with the final evaluation, or with `interrupted` set when a signal stopped
  the run after saving a checkpoint.
  """
  validate_config(config)  # a bad value stops here, before the workdir is made or changed.
  tcfg = config.train
  mngr = checkpoint.manager(workdir, tcfg.keep_checkpoints, tcfg.checkpoint_every)
  try:
    exp, state, data_iter = _resume(config, workdir, mngr)
  except BaseException:
    mngr.close()
    raise
  metadata = exp.dataset.metadata()
  vocab = getattr(exp.dataset, "vocab", None)
  if hasattr(vocab, "proto") and jax.process_index() == 0:  # also beside the checkpoints.
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "tokenizer.model"), "wb") as f:
      f.write(vocab.proto)
  start = int(state.step)
  writer = metrics_lib.MetricWriter(workdir)
  batch = exp.to_global(next(data_iter)) if start < tcfg.num_steps else None
  progress = metrics_lib.Progress(start, tcfg.num_steps, tcfg.batch_size,
                                  exp.dataset.tokens_per_example(), exp.dataset.task)
  n_params = state_lib.param_count(state.params)
  logging.info("Model %s/%s: %s parameters", config.model.name,
               config.model.get("attention", {}).get("kind", "-"), f"{n_params:,}")
  try:
    result = {"interrupted": None}
    with StopFlag() as stop, tqdm(total=tcfg.num_steps, initial=start, disable=None,
                                   dynamic_ncols=True) as bar:
      if batch is not None:
        compiled = exp.train_step.lower(state, batch).compile()
        flops = (peaks.step_flops(exp.train_step, compiled, state, batch)
                 / progress.tokens_per_step)
        peak, source = peaks.peak_tflops(config.model.get("dtype", "float32"))
        progress.flops_per_token, progress.peak_flops = flops, peak * 1e12
        logging.info("XLA FLOPs per token of the train step: %.4g; MFU against %.4g TFLOP/s "
                     "(%s)", flops, peak, source)
        writer.write(start, "model", {"params": n_params, "train_flops_per_token": flops,
                                      "peak_tflops": peak})
      window = []
      progress.start()
      for step in range(start, tcfg.num_steps):
        state, m = compiled(state, batch)
        window.append(m)
        done = step + 1
        if done % tcfg.log_every == 0 or done == tcfg.num_steps:
          _check_finite(state, mngr)
          logged = _log_train(writer, done, window, progress, exp)
          bar.set_postfix_str(progress.postfix(logged["loss"]), refresh=False)
          window = []
        bar.update(1)
        if tcfg.eval_every and done % tcfg.eval_every == 0 and done < tcfg.num_steps:
          with progress.paused():  # throughput counts training time only.
            scores = evaluate(exp, state.params, config.data.eval_split)
          writer.write(done, "eval", scores)
          logging.info("step %d/%d, %s: %s", done, tcfg.num_steps, config.data.eval_split,
                       _fmt(scores))
        stopping = stop.agreed(done, tcfg.log_every)
        if stopping:
          _check_finite(state, mngr)
          checkpoint.save(mngr, done, state, data_iter, config, metadata, force=True)
          checkpoint.wait(mngr)
          logging.warning("%s received: saved step %d in %s; rerun to resume", stopping,
                          done, workdir)
          result["interrupted"] = stopping
          break
        # Explicit cadence: Orbax's default policy would also save step 1 of a fresh run.
        if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < tcfg.num_steps:
          _check_finite(state, mngr)
          checkpoint.save(mngr, done, state, data_iter, config, metadata, force=True)
        if done < tcfg.num_steps:  # after any save: a checkpoint's iterator is at batch `done`.
          batch = exp.to_global(next(data_iter))
    if not result["interrupted"]:
      result = _finish(exp, mngr, writer, state, data_iter, metadata, workdir)
  finally:
    # Also on an exception: let in-flight async saves finish, so the last checkpoint survives.
    try:
      checkpoint.close(mngr)  # a failed save raises checkpoint.SaveError.
    finally:
      writer.close()
  return result


def _check_finite(state, mngr):
  bad = int(state.nonfinite_step)
  if bad >= 0:
    checkpoint.wait(mngr)
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad}; stopped without saving it. Last good "
        f"checkpoint: step {mngr.latest_step()}. Lower train.learning_rate or check the data")


def _fmt(scores: dict) -> str:
  return ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}"
                   for k, v in scores.items())


def _log_train(writer, step, window, progress, exp):
  m = jax.device_get(window)
  loss = float(np.mean([x["loss"] for x in m]))
  lr = float(state_lib.learning_rate_schedule(exp.config.train)(step))
  acc = sum(float(x["correct"]) for x in m) / max(sum(float(x["count"]) for x in m), 1.0)
  rates = progress.update(step)
  out = {"loss": loss, "accuracy": acc, "grad_norm": float(m[-1]["grad_norm"]),
         "learning_rate": lr, **rates}
  if "indexer_kl" in m[0]:  # DSA: the indexer's KL to the main attention (attention/indexer.py).
    out["indexer_kl"] = float(np.mean([x["indexer_kl"] for x in m]))
  writer.write(step, "train", out)
  logging.info("%s", progress.line(step, loss))
  return out


def _finish(exp, mngr, writer, state, data_iter, metadata, workdir):
  config = exp.config
  step = int(state.step)
  if mngr.latest_step() != step:
    checkpoint.save(mngr, step, state, data_iter, config, metadata, force=True)
  final = evaluate(exp, state.params, config.data.eval_split)  # while the save is written.
  checkpoint.wait(mngr)  # no final result without its checkpoint (a failed save raises here).
  writer.write(step, "eval", final)
  logging.info("step %d, %s: %s", step, config.data.eval_split, _fmt(final))
  result = {"step": step, "eval_split": config.data.eval_split, "eval": final,
            "sample": sample_text(exp, state.params, config.seed)}
  if jax.process_index() == 0:
    checkpoint.dump_json(f"{workdir}/train_results.json", result)
  if math.isnan(final["loss"]):
    raise NonFiniteLossError(f"evaluation loss is NaN at step {step}")
  return result
