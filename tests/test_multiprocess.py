"""Multi-process training: 2 local processes x 2 CPU devices (gloo) = 1 process x 4 devices.

Both runs start at once (each a few seconds of compiling on 2 cores); scripts/launch_local.py
runs the 2-process job the way a user would.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from latent_attention import cli
from latent_attention.data import sources
from latent_attention.training import checkpoint
from latent_attention.training.evaluate import restore_experiment

from conftest import F32_EPS, ROOT

STEPS = 5
TRAIN = ["--config=configs/lm_shakespeare.py:mla,runlocal", f"--config.train.num_steps={STEPS}",
         "--config.train.checkpoint_every=0", "--config.train.eval_every=0",
         "--config.eval.sample_len=0"]
TIMEOUT_S = 240


def start(argv, workdir, **env):
  return subprocess.Popen([sys.executable, *argv, f"--workdir={workdir}"], cwd=ROOT,
                          env={**os.environ, **env}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)


def finish(procs, timeout=TIMEOUT_S):
  """The output of every process; kills them all (and their groups) on a timeout or failure."""
  deadline, outputs = time.monotonic() + timeout, []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
      outputs.append(out)
      assert proc.returncode == 0, out[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's processes die with it.
        proc.wait()
  return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(2-process workdir, 1-process workdir, launcher output) of the same STEPS-step run."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  multi, single = str(tmp / "multi"), str(tmp / "single")
  procs = [start(["scripts/launch_local.py", "--num_processes=2", "--devices_per_process=2",
                  "--", *TRAIN], multi),
           start(["train.py", *TRAIN], single, JAX_NUM_CPU_DEVICES="4")]
  out, _ = finish(procs)
  return multi, single, out


@pytest.mark.e2e
def test_two_processes_train_like_one(runs):
  multi, single, out = runs
  assert "[0] " in out and "[1] " in out  # the launcher prefixes each process's lines.
  # Orbax saves collectively: one step directory, with the data position of each process.
  assert os.listdir(os.path.join(multi, "checkpoints")) == [str(STEPS)]
  assert sorted(os.listdir(os.path.join(multi, "checkpoints", str(STEPS), "data"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  with open(os.path.join(multi, "metrics.jsonl")) as f:  # written by process 0 only: once.
    steps = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert steps == list(range(5, STEPS + 1, 5))  # runlocal's log_every.
  _, p_multi, step = restore_experiment(multi)
  _, p_single, _ = restore_experiment(single)
  assert step == STEPS
  # Each device holds the same 2 rows of every global batch in both runs and runs the same
  # program, so the shards' partial sums agree bit for bit; only the all-reduce adds the 4
  # partial gradients in another order (XLA in one process, gloo across two): a few eps
  # relative. AdamW's normalised update is no more sensitive than that (relatively), far below
  # a parameter's own ulp, so a step changes a parameter by at most a flipped rounding, 1 ulp:
  # STEPS * eps * max|p| = 5 * 1.2e-7 * 1.0 = 6e-7 <= 1e-6. Measured: 3e-8 (6e-8 at 20 steps),
  # 1 ulp near 0.5. (A gradient that cancels to the rounding level would flip the sign of its
  # first Adam step, lr; this model has none.)
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p_multi),
                                                           jax.tree.leaves(p_single)))
  assert gap <= 1e-6, gap


@pytest.mark.e2e
def test_eval_restores_the_two_process_checkpoint(runs):
  multi, _, _ = runs
  out = subprocess.run([sys.executable, "eval.py", f"--workdir={multi}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(multi, "train_results.json")) as f:
    trained = json.load(f)["eval"]
  with open(os.path.join(multi, "eval_results.json")) as f:
    evaluated = json.load(f)["validation"]
  # Two processes evaluated a contiguous half of the windows each: every target once. One
  # process sums the same positive NLL terms in another order: at most (n - 1) eps relative
  # for the n = 256 x 32 positions of a batch, plus the 7 batch totals (measured: 7e-8).
  assert evaluated["count"] == trained["count"] == 55_769
  assert evaluated["loss"] == pytest.approx(trained["loss"], rel=(256 * 32 + 7) * F32_EPS)


def test_last_process_with_no_rows_left_pads_its_eval_batch(monkeypatch):
  """5 records over 2 processes of 2 rows: process 1 (rows 3, 4) has nothing for batch 2."""
  records = sources.ArrayRecords({"inputs": np.arange(5) + 1, "weights": np.ones(5)})
  monkeypatch.setattr(sources.jax, "process_count", lambda: 2)
  monkeypatch.setattr(sources.jax, "process_index", lambda: 1)
  batches = list(sources.eval_batches(records, batch_size=4))
  assert [b["inputs"].tolist() for b in batches] == [[4, 5], [0, 0]]
  assert [b["weights"].tolist() for b in batches] == [[1, 1], [0, 0]]


def test_each_process_reads_its_slice_of_the_global_batch(monkeypatch):
  monkeypatch.setattr(sources.jax, "process_count", lambda: 2)
  whole = [r.record_key for r in (sources.grain.IndexSampler(
      num_records=50, shuffle=True, num_epochs=None, seed=3,
      shard_options=sources.grain.NoSharding())[i] for i in range(24))]
  halves = []
  for i in range(2):
    monkeypatch.setattr(sources.jax, "process_index", lambda i=i: i)
    sampler = sources.BatchSlices(50, batch_size=8, seed=3)
    halves.append([sampler[k].record_key for k in range(12)])
    # The fast path gives the same keys, past the first epoch too (50 records, 4 per batch).
    assert list(sampler.record_keys(0, 60)) == [sampler[k].record_key for k in range(60)]
  assert [k for j in range(3) for h in halves for k in h[4 * j:4 * j + 4]] == whole


def test_one_process_keeps_the_stream_and_description_of_the_older_sampler():
  """Checkpoints saved with grain's ShardByJaxProcess sampler (before BatchSlices) resume:
  grain compares the samplers' descriptions, and the records must be the same."""
  old = sources.grain.IndexSampler(
      num_records=50, shuffle=True, num_epochs=None, seed=3,
      shard_options=sources.grain.ShardByJaxProcess(drop_remainder=True))
  new = sources.BatchSlices(50, batch_size=8, seed=3)
  assert repr(new) == repr(old)
  assert [new[i].record_key for i in range(120)] == [old[i].record_key for i in range(120)]


def test_processes_agree_on_a_signal_at_the_same_step(monkeypatch):
  """Process 0 got no signal, another did: every log_every steps the processes compare flags
  (an all-gather, faked here), so all stop at the same step, none mid-collective."""
  from latent_attention.training import loop
  monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
  gathered = []
  monkeypatch.setattr(loop.multihost_utils, "process_allgather",
                      lambda x: gathered.append(int(x)) or np.array([int(x), 1]))
  stop = loop.StopFlag()
  assert stop.agreed(7, every=5) is None and gathered == []  # no collective between checks.
  assert stop.agreed(10, every=5) == "a signal to another process" and gathered == [0]
  stop.signal = "SIGTERM"
  assert stop.agreed(15, every=5) == "SIGTERM" and gathered == [0, 1]


def test_a_signal_caught_before_a_nested_flag_stops_it_too():
  """A sweep's flag caught Ctrl-C while the next run prepared its data: the run's own flag,
  entered afterwards, must stop at once rather than train the whole run first."""
  from latent_attention.training import loop
  before = signal.getsignal(signal.SIGINT)
  with loop.StopFlag() as outer:
    with loop.StopFlag() as inner:
      assert inner.signal is None
    os.kill(os.getpid(), signal.SIGINT)
    assert outer.signal == "SIGINT"
    with loop.StopFlag() as inner:
      assert inner.signal == "SIGINT"
  assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("flags,error", [
    (dict(process_id=2, num_processes=2),
     "--process_id=2 is invalid: must be in 0..1 (--num_processes=2)"),
    (dict(coordinator_address="localhost"),
     "--coordinator_address=localhost is invalid: expected host:port"),
    (dict(coordinator_address=":8476"), "--coordinator_address=:8476 is invalid"),
    (dict(coordinator_address="10.0.0.1:0"), "--coordinator_address=10.0.0.1:0 is invalid"),
])
def test_inconsistent_distributed_flags_are_one_line_errors(flags, error):
  args = {"coordinator_address": None, "num_processes": None, "process_id": None, **flags}
  with pytest.raises(ValueError, match="^" + re.escape(error)):
    cli.check_distributed(**args)


def test_consistent_distributed_flags_pass():
  cli.check_distributed("[::1]:8476", 2, 1)  # an IPv6 host too.
  cli.check_distributed(None, None, 3)  # the process count comes from the cluster.


def test_resuming_with_another_process_count_is_a_user_error(tmp_path, monkeypatch):
  """Not Grain's sampler mismatch deep in the restore, which training would take for an
  unreadable checkpoint and set aside."""
  data = tmp_path / "7" / "data"
  data.mkdir(parents=True)
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text("{}")
  mngr = type("Manager", (), {"directory": tmp_path})()
  with pytest.raises(ValueError, match=(
      f"checkpoint step 7 in {tmp_path} was saved by 2 processes, this run has 1: resume "
      r"with --num_processes=2")):
    checkpoint.check_process_count(mngr, 7)
  monkeypatch.setattr(checkpoint.jax, "process_count", lambda: 2)
  checkpoint.check_process_count(mngr, 7)  # the same count resumes.
