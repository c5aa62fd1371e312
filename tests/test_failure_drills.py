"""Failure drills: a full disk during a checkpoint save, SIGKILL during an asynchronous save, a
metrics.jsonl line cut short by a crash, a sweep interrupted between runs. Each time the rerun
resumes from the last complete checkpoint and no finished result is lost.

Orbax finishes every save in a background thread by `AtomicRenameTemporaryPath.finalize` (each
item's directory, then the step's: commit_success.txt, then the rename of
`<step>.orbax-checkpoint-tmp` to `<step>`); the drills strike there.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from latent_attention import cli
from latent_attention.studies import results as results_lib, sweep as sweep_lib
from latent_attention.training import checkpoint, metrics as metrics_lib
from latent_attention.training.evaluate import evaluate_workdir, restore_experiment
from latent_attention.training.loop import train_and_evaluate

from conftest import ROOT, runlocal

FINALIZE = ocp.path.atomicity.AtomicRenameTemporaryPath


def saved_steps(workdir):
  mngr = checkpoint.manager(workdir, read_only=True)
  try:
    return list(mngr.all_steps())
  finally:
    mngr.close()


def final_loss(workdir):
  with open(os.path.join(workdir, "train_results.json")) as f:
    return json.load(f)["eval"]["loss"]


def assert_same_params(workdir, reference):
  _, expected, _ = restore_experiment(reference)
  _, params, step = restore_experiment(workdir)
  assert step == 20
  jax.tree.map(np.testing.assert_array_equal, params, expected)


# (failing step, error): a save of step 10 fails (reported at the next save, no checkpoint is
# complete), or the final one of step 20 (step 10 stays the last). The ValueError is what
# Tensorstore raised (abridged) when a real 460 KB tmpfs filled up while step 20's state was
# written.
FULL_DISK = [
    (10, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
    (20, ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/x/checkpoints/20.orbax-"
                    "checkpoint-tmp/state.orbax-checkpoint-tmp/_sharding\": Failed to write 7642 "
                    "bytes to file 8: No space left on device [os_error_code='28']")),
]


@pytest.mark.parametrize("failing_step, error", FULL_DISK, ids=["step10-OSError",
                                                                 "step20-ValueError"])
@pytest.mark.e2e
def test_full_disk_during_a_save_stops_in_one_line_and_the_rerun_resumes(
    trained_lm, tmp_path, monkeypatch, caplog, failing_step, error):
  workdir = str(tmp_path / "run")
  ckpts = os.path.join(workdir, "checkpoints")
  finalize = FINALIZE.finalize

  async def full_disk(self):
    if self.get_final().name == str(failing_step):  # the step's directory, its items written.
      raise error
    return await finalize(self)

  monkeypatch.setattr(FINALIZE, "finalize", full_disk)
  with pytest.raises(checkpoint.SaveError) as raised:  # raised, not hung.
    train_and_evaluate(runlocal(), workdir)
  monkeypatch.setattr(FINALIZE, "finalize", finalize)  # the disk is freed.
  assert isinstance(raised.value, cli.USER_ERRORS) and raised.value.errno == errno.ENOSPC
  then = ("the last complete checkpoint is step 10: free space and rerun to resume from it"
          if failing_step == 20 else "no checkpoint is complete yet: free space and rerun to "
          "start afresh")
  assert cli.one_line(raised.value) == str(raised.value) == (
      f"checkpoint step {failing_step} could not be saved in {ckpts} (No space left on "
      f"device); {then}")
  # The partial save is left as Orbax wrote it, and never taken for a checkpoint.
  assert any(n.startswith(f"{failing_step}.orbax-checkpoint-tmp") for n in os.listdir(ckpts))
  assert saved_steps(workdir) == ([10] if failing_step == 20 else [])
  # No final result without its checkpoint.
  assert not os.path.exists(os.path.join(workdir, "train_results.json"))
  assert not [m for m in metrics_lib.read_metrics(workdir) if m["split"] == "eval"
              and m["step"] == 20]
  if failing_step == 20:
    _, params, step = restore_experiment(workdir)  # the earlier checkpoint is readable.
    _, expected, _ = restore_experiment(trained_lm, step=10)
    assert step == 10
    jax.tree.map(np.testing.assert_array_equal, params, expected)

  caplog.set_level("INFO")
  result = train_and_evaluate(runlocal(), workdir)
  resumed = re.search(r"Resumed from .* at step (\d+)", caplog.text)
  assert (resumed and resumed[1]) == ("10" if failing_step == 20 else None)
  assert sorted(os.listdir(ckpts)) == ["10", "20"]  # the partial save replaced.
  assert result["eval"]["loss"] == final_loss(workdir) == final_loss(trained_lm)
  assert_same_params(workdir, trained_lm)


# Trains runlocal() in argv[1] and stalls step 20's save (the final one, in `_finish`) where it
# finalizes the step's directory: every item written, the directory not yet renamed. argv[2] is
# created once the training thread waits for that save (it may evaluate first): the kill lands
# then, whatever the loop has done meanwhile.
KILLED_DURING_A_SAVE = """
import sys, threading, time
import orbax.checkpoint as ocp
from conftest import runlocal
from latent_attention.training.loop import train_and_evaluate

workdir, marker = sys.argv[1:]
FINALIZE, MANAGER = ocp.path.atomicity.AtomicRenameTemporaryPath, ocp.CheckpointManager
finalize, save, wait = FINALIZE.finalize, MANAGER.save, MANAGER.wait_until_finished
started, stalled = threading.Event(), threading.Event()

async def stalled_finalize(self):
  if self.get_final().name == "20":
    stalled.set()
    time.sleep(600)
  return await finalize(self)

def tracked_save(self, step, *args, **kwargs):
  saved = save(self, step, *args, **kwargs)
  if step == 20:
    started.set()
  return saved

def announced_wait(self):
  if started.is_set():
    stalled.wait()
    open(marker, "w").close()
  return wait(self)

FINALIZE.finalize, MANAGER.save, MANAGER.wait_until_finished = (
    stalled_finalize, tracked_save, announced_wait)
train_and_evaluate(runlocal(), workdir)
"""


@pytest.mark.e2e
def test_sigkill_during_an_asynchronous_save_resumes_from_the_last_complete_checkpoint(
    trained_lm, tmp_path, caplog):
  workdir, marker = str(tmp_path / "run"), str(tmp_path / "saving")
  with open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_DURING_A_SAVE, workdir, marker], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=err,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])})
    try:
      deadline = time.time() + 120
      while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    finally:
      proc.kill()
      proc.wait(timeout=60)
  assert os.path.exists(marker), (tmp_path / "stderr").read_text()[-3000:]
  assert proc.returncode == -signal.SIGKILL
  ckpts = os.path.join(workdir, "checkpoints")
  assert "20" not in os.listdir(ckpts)
  assert any(n.startswith("20.orbax-checkpoint-tmp") for n in os.listdir(ckpts))
  assert saved_steps(workdir) == [10]
  assert not os.path.exists(os.path.join(workdir, "train_results.json"))

  caplog.set_level("INFO")
  result = train_and_evaluate(runlocal(), workdir)
  assert re.search(r"Resumed from .* at step 10", caplog.text)
  assert sorted(os.listdir(ckpts)) == ["10", "20"]
  assert result["eval"]["loss"] == final_loss(trained_lm)
  assert_same_params(workdir, trained_lm)
  # Steps 15 and 20 were logged before the kill and again after it, with the same losses.
  train = lambda d: {m["step"]: m["loss"] for m in metrics_lib.read_metrics(d)  # noqa: E731
                     if m["split"] == "train"}
  assert train(workdir) == train(trained_lm)


def test_steps_logged_again_after_a_resume_are_read_once_from_the_resumed_run(tmp_path):
  # A run killed after logging step 20 of 20 resumes from its step-10 checkpoint and logs the
  # steps after it again (same losses, later times): readers see each step once, the last.
  line = lambda split, step, t, **m: {"step": step, "time": t, "split": split, **m}  # noqa: E731
  first = [line("model", 0, 0.0, params=5.0), line("train", 5, 1.0, loss=3.0),
           line("train", 10, 2.0, loss=2.5), line("eval", 10, 2.5, loss=2.6),
           line("train", 15, 3.0, loss=2.2), line("train", 20, 4.0, loss=2.0)]
  resumed = [line("model", 10, 9.0, params=5.0), line("train", 15, 10.0, loss=2.2),
             line("train", 20, 11.0, loss=2.0), line("eval", 20, 11.5, loss=2.1)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in first + resumed)
  assert metrics_lib.read_metrics(str(tmp_path)) == first[:4] + resumed


def test_a_metrics_line_cut_short_is_skipped_and_new_lines_start_after_it(trained_lm, tmp_path,
                                                                           caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_lm, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    whole = f.read().splitlines()
  fragment = whole[-1][:len(whole[-1]) // 2]  # the final eval line, cut by a crash mid-write.
  with open(path, "w") as f:
    f.write("\n".join(whole[:-1] + [fragment]))
  kept = [json.loads(line) for line in whole[:-1]]
  caplog.set_level("INFO")
  assert metrics_lib.read_metrics(workdir) == kept
  assert f"metrics.jsonl line {len(whole)} is not a whole JSON object" in caplog.text
  assert results_lib._eval_curve([workdir])[0] == [10]  # the sweep's loss curves.

  result = train_and_evaluate(runlocal(), workdir)  # resumes the finished run: evaluates it.
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[:-1] == whole[:-1] + [fragment]  # the fragment is left on a line of its own.
  assert "metrics.jsonl ends in a line cut short" in caplog.text
  assert json.loads(lines[-1]) == {**json.loads(whole[-1]), "time": json.loads(lines[-1])["time"]}
  assert json.loads(lines[-1])["loss"] == result["eval"]["loss"]
  assert metrics_lib.read_metrics(workdir) == kept + [json.loads(lines[-1])]

  evaluated = evaluate_workdir(workdir, plot_curves=True)  # eval.py --plot_curves.
  assert os.path.getsize(evaluated["curve_plot"]) > 10_000


SWEEP = """
import ml_collections


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/lm_shakespeare.py:mha"
  sweep.grid = ml_collections.ConfigDict({"model.attention.kind": ("mha", "mqa", "mla")},
                                         allow_dotted_keys=True)
  return sweep
"""


class Crash(BaseException):
  """The process dies (a BaseException: no run catches it)."""


def test_a_sweep_interrupted_between_runs_resumes_with_every_finished_row_intact(
    tmp_path, monkeypatch):
  """Stand-ins for training (tests/test_sweep.py's pattern): SIGTERM once the first run is done,
  then a crash while the second one trains; neither loses or retrains a finished run."""
  spec = tmp_path / "sweep.py"
  spec.write_text(SWEEP)
  workdir = str(tmp_path / "sweep")
  trained, faults = [], {}

  def fake_train(config, run_dir):
    name = os.path.basename(run_dir)
    trained.append(name)
    if faults.pop(("train", name), False):
      raise Crash()
    return {"interrupted": None}

  def fake_eval(run_dir):
    name = os.path.basename(run_dir)
    if faults.pop(("eval", name), False):  # the run's training is done: between two runs.
      os.kill(os.getpid(), signal.SIGTERM)
    ppl = {"kindmha": 5.0, "kindmqa": 5.5, "kindmla": 5.2}[name]
    return {"validation": {"loss": float(np.log(ppl)), "accuracy": 0.5, "perplexity": ppl}}

  monkeypatch.setattr(sweep_lib.loop, "train_and_evaluate", fake_train)
  monkeypatch.setattr(sweep_lib.evaluate, "evaluate_workdir", fake_eval)
  monkeypatch.setattr(sweep_lib.step_bench, "benchmark",
                      lambda *a, **k: {"step_time_s": 0.01, "tokens_per_s": 1e3})
  first = os.path.join(workdir, "kindmha", "result.json")

  faults[("eval", "kindmha")] = True
  outcome = sweep_lib.run_sweep(str(spec), workdir)
  assert outcome.interrupted == "SIGTERM" and trained == ["kindmha"]
  with open(first, "rb") as f:
    saved = f.read()
  row = outcome.rows[0]
  assert [r["name"] for r in outcome.rows] == ["kindmha"] and row["status"] == "ok"

  faults[("train", "kindmqa")] = True
  with pytest.raises(Crash):
    sweep_lib.run_sweep(str(spec), workdir)
  assert trained == ["kindmha", "kindmqa"]  # not retrained.
  assert not os.path.exists(os.path.join(workdir, "kindmqa", "result.json"))

  outcome = sweep_lib.run_sweep(str(spec), workdir)
  assert outcome.interrupted is None
  assert trained == ["kindmha", "kindmqa", "kindmqa", "kindmla"]
  with open(first, "rb") as f:
    assert f.read() == saved  # the finished row, as written the first time.
  assert {r["name"]: r["status"] for r in outcome.rows} == {
      "kindmha": "ok", "kindmqa": "ok", "kindmla": "ok"}
  assert next(r for r in outcome.rows if r["name"] == "kindmha") == row
  with open(os.path.join(workdir, "results.csv")) as f:
    assert sorted(line.split(",")[0] for line in f.read().splitlines()[1:]) == [
        "kindmha", "kindmla", "kindmqa"]
