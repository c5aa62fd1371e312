"""The training loop end to end on the real tiny_shakespeare (from TFDS_DATA_DIR).

Most tests start from `trained_lm` (conftest: one 20-step run, checkpoints at 10 and 20) and
copy it before changing anything.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention import config_files
from latent_attention.studies import decode_drift
from latent_attention.training import checkpoint, loop, metrics as metrics_lib, resume, steps
from latent_attention.training.evaluate import evaluate_workdir, restore_experiment
from latent_attention.training.loop import NonFiniteLossError, train_and_evaluate

from conftest import F32_EPS, ROOT, assert_f32_close, lm_terms, runlocal


def train_losses(workdir):
  return [(m["step"], m["loss"]) for m in metrics_lib.read_metrics(workdir)
          if m["split"] == "train"]


def copy(workdir, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(workdir, dst)
  return dst


def corrupt(workdir, step):
  """Truncates every file of a saved step's train state to half its size."""
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)


def test_scoring_only_at_positions_equals_full_scoring():
  config = config_files.load(os.path.join(ROOT, "configs/lm_mqar.py:mla,runlocal"))
  assert config.data.scored_positions
  exp = loop.setup(config)
  batch = next(iter(exp.dataset.eval_batches("validation", 8)))
  assert batch["positions"].shape == (8, config.data.num_kv_pairs)
  full = {k: v for k, v in batch.items() if k != "positions"}
  params = exp.init_state(jax.random.key(0)).params
  # Jitted, as the train and eval steps run it: one compile instead of hundreds of eager ops.
  sums = jax.jit(lambda p, b: steps.sums(p, b, exp.model))
  loss = lambda p, b: steps.sums(p, b, exp.model)["nll"]
  # Both sum the same per-position terms over the B*T positions of the batch.
  rows = batch["inputs"].size
  for a, b in zip(sums(params, batch).values(), sums(params, full).values()):
    assert_f32_close(a, b, terms=rows)
  # A weight gradient sums B*T per-position products (most of them 0 here): each leaf is off by
  # at most rows * eps * its largest entry.
  grad = jax.jit(jax.grad(loss))
  jax.tree.map(lambda a, b: assert_f32_close(a, b, terms=rows), grad(params, batch),
               grad(params, full))


def test_train_then_eval_reproduces_final_loss(trained_lm, tmp_path):
  workdir = copy(trained_lm, tmp_path)
  with open(os.path.join(workdir, "train_results.json")) as f:
    result = json.load(f)
  losses = [loss for _, loss in train_losses(workdir)]
  assert losses[-1] < losses[0] - 0.3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  evaluated = evaluate_workdir(workdir, plot_curves=True)
  assert evaluated["validation"]["loss"] == result["eval"]["loss"]
  assert os.path.getsize(evaluated["curve_plot"]) > 10_000  # two panels, 4 lines.
  assert evaluated["validation"]["count"] == 55_769  # every next-character target, once.
  assert evaluated["kv_cache_bytes_per_sequence"] == evaluated[
      "kv_cache_formula_bytes_per_sequence"]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved["test"]["loss"] == evaluated["test"]["loss"]
  assert isinstance(saved["test"]["count"], int)
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_is_exact(trained_lm, tmp_path, monkeypatch):
  resumed = str(tmp_path / "resumed")
  log_train = loop._log_train

  def crash_at_15(writer, step, *args):
    if step == 15:
      raise RuntimeError("simulated crash")
    return log_train(writer, step, *args)

  monkeypatch.setattr(loop, "_log_train", crash_at_15)
  with pytest.raises(RuntimeError, match="simulated crash"):  # after the step-10 checkpoint.
    train_and_evaluate(runlocal(), resumed)
  monkeypatch.setattr(loop, "_log_train", log_train)
  train_and_evaluate(runlocal(), resumed)
  assert train_losses(trained_lm) == train_losses(resumed)
  _, p_straight, _ = restore_experiment(trained_lm)
  _, p_resumed, _ = restore_experiment(resumed)
  jax.tree.map(np.testing.assert_array_equal, p_straight, p_resumed)


def test_four_devices_with_sharded_parameters_match_one_device(trained_lm, tmp_path):
  """10 steps on 4 simulated devices, parameters and optimizer state split over a (2 data x
  2 fsdp) mesh, = the first 10 of `trained_lm` (one device, same schedule); the checkpoint
  restores into another layout (here, one device)."""
  script = ("import sys; from conftest import runlocal; from latent_attention.training "
            "import loop; import jax; assert jax.device_count() == 4; "
            "print('LOSS', loop.train_and_evaluate(runlocal(num_steps=10, fsdp=2), "
            "sys.argv[1])['eval']['loss']); exp = loop.setup(runlocal(fsdp=2)); "
            "print('SPLIT', sum(x.size for x, s in zip(jax.tree.leaves(jax.eval_shape("
            "exp.init_state, jax.random.key(0)).params), jax.tree.leaves("
            "exp.state_sharding.params)) if 'fsdp' in s.spec))")
  four = str(tmp_path / "four")
  out = subprocess.run([sys.executable, "-c", script, four], cwd=ROOT,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests"),
                            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                            + " --xla_force_host_platform_device_count=4"})
  assert out.returncode == 0, out.stderr[-2000:]
  loss = float(out.stdout.split("LOSS")[-1].split()[0])
  one = [m for m in metrics_lib.read_metrics(trained_lm) if m["split"] == "eval"][0]
  assert one["step"] == 10
  # The 4 devices sum their shards' losses and gradients in another order: float32 rounding of
  # sums over the batch's B*T = 256 positions, compounded over 10 optimizer steps.
  tol = 10 * 256 * F32_EPS
  assert loss == pytest.approx(one["loss"], rel=tol)
  assert [l for _, l in train_losses(four)] == pytest.approx(
      [l for s, l in train_losses(trained_lm) if s <= 10], rel=tol)
  exp, p_four, _ = restore_experiment(four)  # saved on (2, 2), restored on 1 device.
  assert exp.config.train.fsdp == 1
  _, p_one, _ = restore_experiment(trained_lm, step=10)
  # Parameters are O(1) (norm scales, init std <= 1): the same bound, absolute.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=tol), p_four, p_one)
  # Every array with a dimension that 2 divides is split: here, every parameter.
  assert int(out.stdout.split("SPLIT")[-1]) == sum(x.size for x in jax.tree.leaves(p_one))
  model = {m["split"]: m for m in metrics_lib.read_metrics(four)}["model"]
  one_model = {m["split"]: m for m in metrics_lib.read_metrics(trained_lm)}["model"]
  # XLA counts each device's share; times 4 it is one device's count plus the work devices
  # repeat (the optimizer's elementwise update runs on both holders of a shard) and the
  # resharding XLA inserts: +8% measured at this tiny size, where a per-device count is -75%.
  assert model["train_flops_per_token"] == pytest.approx(one_model["train_flops_per_token"],
                                                         rel=0.15)


def test_sigterm_saves_a_restorable_checkpoint_and_logs_progress(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/lm_shakespeare.py:mla,runlocal",
       f"--workdir={workdir}", "--config.train.num_steps=1000000",
       "--config.train.checkpoint_every=1000000"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not train_losses(workdir) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM received: saved step" in err
  _, params, step = restore_experiment(workdir)
  assert 0 < step < 1_000_000
  # stderr is not a terminal: no progress bar, and each log line carries step/total and ETA.
  assert "it/s" not in err and "\r" not in err
  lines = re.findall(r"step (\d+)/1000000 \(\d+%\): loss \d+\.\d{4}, [\d,]+ tokens/s, "
                     r"[\d.]+ ms/step, MFU [\d.]+%, ETA (\S+)", err)
  assert lines and lines[0][0] == "5", err[-2000:]
  assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", lines[-1][1]), lines[-1]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(trained_lm, tmp_path):
  workdir = copy(trained_lm, tmp_path)
  _, good, _ = restore_experiment(workdir)
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 2\d; .*"
                     r"Last good checkpoint: step 20"):
    train_and_evaluate(runlocal(num_steps=30, learning_rate=1e30, warmup_steps=0), workdir)
  _, after, step = restore_experiment(workdir)
  assert step == 20
  jax.tree.map(np.testing.assert_array_equal, good, after)


def test_resume_refuses_another_training_stream_and_says_what_changes(trained_lm, tmp_path,
                                                                       caplog):
  workdir = copy(trained_lm, tmp_path)
  with pytest.raises(ValueError, match=re.escape(
      f"--workdir={workdir} holds step 20 of another training stream (seed 0 -> 1, "
      "train.batch_size 8 -> 4)")):
    config = runlocal(batch_size=4)
    config.seed = 1
    train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  config = runlocal(num_steps=25)
  config.data.worker_count = 1  # the same stream, but Grain cannot restore another count.
  with pytest.raises(ValueError, match=re.escape(
      f"--workdir={workdir} holds step 20 of a data position saved with data.worker_count=0 "
      "(Grain keeps one per worker; this run has 1): resume with --config.data.worker_count=0")):
    train_and_evaluate(config, workdir)
  caplog.set_level("INFO")
  train_and_evaluate(runlocal(num_steps=25, learning_rate=3e-3), workdir)
  assert ("Resuming with a changed schedule (train.learning_rate 0.002 -> 0.003, "
          "train.num_steps 20 -> 25): training continues from step 20 to 25") in caplog.text


def test_a_finished_run_evaluates_without_its_input_position(trained_lm, tmp_path):
  """A finished run's data position is not restored: one saved by another input pipeline (here
  a foreign state) neither fails the run nor gets its checkpoint set aside."""
  workdir = copy(trained_lm, tmp_path)
  path = os.path.join(workdir, "checkpoints", "20", "data", "process_0-of-1.json")
  with open(path) as f:
    saved = json.load(f)
  with open(path, "w") as f:
    json.dump({**saved, "sampler": "IndexSampler(num_records=7)"}, f)
  result = train_and_evaluate(runlocal(), workdir)
  assert result["step"] == 20 and np.isfinite(result["eval"]["loss"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE))  # not retrained.


def test_fields_added_since_a_checkpoint_compare_as_their_defaults():
  """A config saved before some fields existed (here the GLA, TPA and CLA fields, fsdp) is the
  same config, so finished sweep runs are not retrained; a new field at another value is not."""
  new = runlocal().to_dict()
  saved = json.loads(json.dumps(new))
  for key in ("gla_latent_heads", "tpa_q_rank", "mla_kv_norm"):
    del saved["model"]["attention"][key]
  del saved["model"]["kv_share_every"], saved["train"]["fsdp"]
  assert not resume.changes(saved, new)
  new["model"]["kv_share_every"] = 2
  assert resume.changes(saved, new) == {"model.kv_share_every": (1, 2)}


def test_unreadable_latest_checkpoint_is_set_aside_and_training_resumes(trained_lm, tmp_path,
                                                                         caplog):
  workdir = copy(trained_lm, tmp_path)
  corrupt(workdir, 20)
  damaged = sorted(os.listdir(os.path.join(workdir, "checkpoints", "20", "state")))
  with pytest.raises(checkpoint.WorkdirError, match=r"checkpoint step 20 in .* is unreadable "
                     r"\(.+\); readable steps: 10 \(pass --step=10\)"):
    evaluate_workdir(workdir)
  caplog.set_level("INFO")
  result = train_and_evaluate(runlocal(), workdir)
  assert re.search(r"Checkpoint step 20 is unreadable \(.+\); moved it to "
                   + re.escape(os.path.join(workdir, "checkpoints_unreadable", "20")), caplog.text)
  assert "Resumed from" in caplog.text and "at step 10" in caplog.text
  assert result["step"] == 20
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_unreadable", "20", "state"))) == \
      damaged  # kept as it was, not deleted.
  _, params, step = restore_experiment(workdir)  # the new step 20 is readable.
  assert step == 20


def test_no_readable_checkpoint_stops_without_moving_anything(trained_lm, tmp_path):
  workdir = copy(trained_lm, tmp_path)
  corrupt(workdir, 10)
  corrupt(workdir, 20)
  with pytest.raises(checkpoint.WorkdirError, match=r"holds no readable checkpoint: step 20 "
                     r"\(.+\); step 10 \(.+\); move .*checkpoints away"):
    train_and_evaluate(runlocal(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))


def test_the_published_decode_drift_table_is_its_raw_file():
  pub = os.path.join(ROOT, "docs", "results", "decode_drift")
  with open(os.path.join(pub, "raw", "drift.json")) as f:
    raw = json.load(f)
  with open(os.path.join(pub, "drift.json")) as f:
    published = json.load(f)
  assert decode_drift.table(raw) == published


def test_decode_drift_of_the_trained_mla(trained_lm):
  """scripts/decode_drift.py's measure: float32 decoding equals the float32 forward to rounding,
  bfloat16 within its own rounding, whichever MLA decode mode; the reference row is exact."""
  rows = decode_drift.measure(trained_lm, windows=2)
  by = {(r["dtype"], r["mode"]): r for r in rows}
  assert set(by) == {("float32", "full forward"), ("float32", "naive"), ("float32", "absorbed"),
                     ("bfloat16", "naive"), ("bfloat16", "absorbed"),
                     ("float32", "absorbed vs naive"), ("bfloat16", "absorbed vs naive")}
  assert by[("float32", "full forward")]["max_abs_logit_diff_rel"] == 0
  f32_tol = lm_terms(runlocal().model, 32) * F32_EPS  # runlocal: T = 32.
  bf16_tol = 4 * float(jnp.finfo(jnp.bfloat16).eps)  # as tests/test_lm_decode.py's bf16 test.
  for (dtype, mode), r in by.items():
    assert r["max_abs_logit_diff_rel"] <= (f32_tol if dtype == "float32" else bf16_tol), r
    assert r["top1_agreement"] > (0.99 if dtype == "float32" else 0.9), r
