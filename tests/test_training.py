"""The training loop end to end on the real tiny_shakespeare (from TFDS_DATA_DIR)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from latent_attention.training import config_files, loop, metrics as metrics_lib, steps
from latent_attention.training.evaluate import evaluate_workdir, restore_experiment
from latent_attention.training.loop import NonFiniteLossError, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runlocal(variant="mha", **train):
  config = config_files.load(os.path.join(ROOT, f"configs/lm_shakespeare.py:{variant},runlocal"))
  config.train.update(decay_steps=40, **train)
  config.eval.sample_len = 0
  return config


def train_losses(workdir):
  return [(m["step"], m["loss"]) for m in metrics_lib.read_metrics(workdir)
          if m["split"] == "train"]


def _run(args, env=None, **kw):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, **kw)


def test_scoring_only_at_positions_equals_full_scoring():
  config = config_files.load(os.path.join(ROOT, "configs/lm_mqar.py:mla,runlocal"))
  assert config.data.scored_positions
  exp = loop.setup(config)
  batch = next(iter(exp.dataset.eval_batches("validation", 8)))
  assert batch["positions"].shape == (8, config.data.num_kv_pairs)
  full = {k: v for k, v in batch.items() if k != "positions"}
  params = exp.init_state(jax.random.key(0)).params
  loss = lambda p, b: steps.sums(p, b, exp.model)["nll"]
  for a, b in zip(steps.sums(params, batch, exp.model).values(),
                  steps.sums(params, full, exp.model).values()):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               jax.grad(loss)(params, batch), jax.grad(loss)(params, full))


def test_train_then_eval_reproduces_final_loss(tmp_path):
  workdir = str(tmp_path / "run")
  result = train_and_evaluate(runlocal("mla"), workdir)
  losses = [loss for _, loss in train_losses(workdir)]
  assert losses[-1] < losses[0] - 0.3
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
  evaluated = evaluate_workdir(workdir)
  assert evaluated["validation"]["loss"] == result["eval"]["loss"]
  assert evaluated["validation"]["count"] == 55_769  # every next-character target, once.
  assert evaluated["kv_cache_bytes_per_sequence"] == evaluated[
      "kv_cache_formula_bytes_per_sequence"]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    assert json.load(f)["test"]["loss"] == evaluated["test"]["loss"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_is_exact(tmp_path, monkeypatch):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(runlocal(num_steps=20), straight)
  log_train = loop._log_train

  def crash_at_15(writer, step, *args):
    if step == 15:
      raise RuntimeError("simulated crash")
    return log_train(writer, step, *args)

  monkeypatch.setattr(loop, "_log_train", crash_at_15)
  with pytest.raises(RuntimeError, match="simulated crash"):  # after the step-10 checkpoint.
    train_and_evaluate(runlocal(num_steps=20), resumed)
  monkeypatch.setattr(loop, "_log_train", log_train)
  train_and_evaluate(runlocal(num_steps=20), resumed)
  assert train_losses(straight) == train_losses(resumed)
  _, p_straight, _ = restore_experiment(straight)
  _, p_resumed, _ = restore_experiment(resumed)
  jax.tree.map(np.testing.assert_array_equal, p_straight, p_resumed)


def test_four_devices_match_one_device(tmp_path):
  one = train_and_evaluate(runlocal(num_steps=10), str(tmp_path / "one"))
  script = ("import sys; from latent_attention.training import config_files, loop; "
            "c = config_files.load('configs/lm_shakespeare.py:mha,runlocal'); "
            "c.train.update(decay_steps=40, num_steps=10); c.eval.sample_len = 0; "
            "import jax; assert jax.device_count() == 4; "
            "print('LOSS', loop.train_and_evaluate(c, sys.argv[1])['eval']['loss'])")
  out = _run(["-c", script, str(tmp_path / "four")],
             env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert out.returncode == 0, out.stderr[-2000:]
  four = float(out.stdout.split("LOSS")[-1])
  assert four == pytest.approx(one["eval"]["loss"], rel=1e-5)
  assert [l for _, l in train_losses(str(tmp_path / "four"))] == pytest.approx(
      [l for _, l in train_losses(str(tmp_path / "one"))], rel=1e-5)


def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/lm_shakespeare.py:mha,runlocal",
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


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(runlocal(num_steps=10), workdir)
  _, good, _ = restore_experiment(workdir)
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 1\d; .*"
                     r"Last good checkpoint: step 10"):
    train_and_evaluate(runlocal(num_steps=20, learning_rate=1e30, warmup_steps=0), workdir)
  _, after, step = restore_experiment(workdir)
  assert step == 10
  jax.tree.map(np.testing.assert_array_equal, good, after)


def test_bad_inputs_give_one_clear_line(tmp_path):
  out = _run(["train.py", "--config=configs/lm_shakespeare.py:mha,runlocal",
              f"--workdir={tmp_path}", "--config.model.attention.kind=flash"])
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith(
      "train.py: model.attention.kind='flash' is invalid: choose one of mha, gqa")
  out = _run(["train.py", "--config=configs/lm_shakespeare.py:mha,runlocal",
              f"--workdir={tmp_path}", "--config.model.vocab_size=50"])
  assert "model.vocab_size=50 is invalid: the tiny_shakespeare vocabulary has 65" in out.stderr
  out = _run(["train.py", "--config=configs/lm_shakespeare.py:flash", f"--workdir={tmp_path}"])
  assert "config argument 'flash' is invalid: choose from mha" in out.stderr
  out = _run(["eval.py", f"--workdir={tmp_path}"])
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith(f"eval.py: --workdir={tmp_path} holds "
                                                        "no checkpoint")
  assert not os.path.exists(tmp_path / "checkpoints" / "0")
