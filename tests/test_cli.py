"""Every entry point reports a user error as one line naming the bad value; exit status 1.

Each case runs the real script in a subprocess; all of them start at once, so the module costs
about one interpreter start-up per core.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from latent_attention.training import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = "--config=configs/lm_shakespeare.py:mla,runlocal"

# (case id, argv after the interpreter, the expected start of the last stderr line).
CASES = [
    ("config_file", ["train.py", "--config=configs/nope.py", "--workdir={tmp}/w"],
     "train.py: --config=configs/nope.py: config file 'configs/nope.py' does not exist; choose "
     "one of configs/lm1b.py, configs/lm_decode.py, configs/lm_mqar.py, "
     "configs/lm_shakespeare.py, configs/perceiver_fashion_mnist.py"),
    ("config_argument", ["train.py", "--config=configs/lm_shakespeare.py:mlaa",
                         "--workdir={tmp}/w"],
     "train.py: --config=configs/lm_shakespeare.py:mlaa: config argument 'mlaa' is invalid: "
     "choose from mha, gqa, mqa, mla"),
    ("config_key", ["train.py", LM, "--workdir={tmp}/w", "--config.train.num_step=3"],
     "train.py: --config.train.num_step: train has no field 'num_step'; did you mean "
     "num_steps? fields: b1, b2, batch_size"),
    ("config_section", ["scripts/benchmark.py", LM, "--config.trian.num_steps=3"],
     "benchmark.py: --config.trian.num_steps: the config has no field 'trian'; did you mean "
     "train?"),
    ("config_value", ["train.py", LM, "--workdir={tmp}/w", "--config.model.attention.kind=flash"],
     "train.py: model.attention.kind='flash' is invalid: choose one of mha, gqa"),
    ("vocab_size", ["train.py", LM, "--workdir={tmp}/w", "--config.model.vocab_size=50"],
     "train.py: model.vocab_size=50 is invalid: the tiny_shakespeare vocabulary has 65"),
    ("workdir_is_a_file", ["train.py", LM, "--workdir={tmp}/file"],
     "train.py: --workdir={tmp}/file is a file, not a directory"),
    ("eval_workdir_is_a_file", ["eval.py", "--workdir={tmp}/file"],
     "eval.py: --workdir={tmp}/file is a file, not a directory"),
    ("eval_no_checkpoint", ["eval.py", "--workdir={tmp}"],
     "eval.py: --workdir={tmp} holds no checkpoint"),
    ("eval_override", ["eval.py", "--workdir={tmp}", "--override=seq_len"],
     "eval.py: --override=seq_len: expected dotted.key=value, e.g. "
     "model.attention.rope_scaling=yarn"),
    ("unexpected_argument", ["eval.py", "--workdir={tmp}", "extra"],
     "eval.py: unexpected arguments: extra"),
    ("flag_bound", ["scripts/benchmark.py", LM, "--steps=0"],
     "benchmark.py: flag --steps=0: 0 is not a positive integer"),
    ("sweep_file", ["scripts/sweep.py", "--sweep=configs/sweeps/nope.py", "--workdir={tmp}/s"],
     "sweep.py: config file 'configs/sweeps/nope.py' does not exist; choose one of "
     "configs/sweeps/dsa.py, configs/sweeps/lm1b_attention.py, configs/sweeps/lm_attention.py"),
    ("decode_variant", ["scripts/benchmark_decode.py", "--variants=mha,flash",
                        "--output_dir={tmp}/d"],
     "benchmark_decode.py: --variants: 'flash' is invalid: choose from mha, gqa, mqa"),
    ("scaling_kind", ["scripts/benchmark_scaling.py", "--kind=flash"],
     "benchmark_scaling.py: flag --kind=flash: value should be one of <mha|gqa|mqa|mla>"),
    ("recall_errors_split", ["scripts/recall_errors.py", "--workdirs={tmp}", "--split=train"],
     "recall_errors.py: flag --split=train: value should be one of <validation|test>"),
]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  """{case id: (CompletedProcess-like (returncode, stderr), tmp dir)} for every case."""
  procs = {}
  for case, argv, _ in CASES:
    tmp = tmp_path_factory.mktemp(case)
    (tmp / "file").write_text("not a directory")
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    procs[case] = (subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE), tmp)
  out = {}
  for case, (proc, tmp) in procs.items():
    _, err = proc.communicate(timeout=300)
    out[case] = (proc.returncode, err, tmp)
  return out


@pytest.mark.e2e
@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line(outputs, case, argv, expected):
  del argv
  returncode, err, tmp = outputs[case]
  assert returncode == 1, err[-2000:]
  assert "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(expected.replace("{tmp}", str(tmp))), err[-2000:]
  assert sorted(os.listdir(tmp)) == ["file"] or case.startswith(("config_value", "vocab")), \
      "a rejected command wrote into its directory"


def test_traceback_flag_shows_the_traceback(tmp_path):
  out = subprocess.run([sys.executable, "train.py", "--config=configs/lm_shakespeare.py:mlaa",
                        f"--workdir={tmp_path}", "--traceback"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0
  assert "Traceback" in out.stderr and "config argument 'mlaa' is invalid" in out.stderr


@pytest.mark.e2e
def test_resuming_another_model_is_refused(trained_lm, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_lm, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  out = subprocess.run([sys.executable, "train.py", LM, f"--workdir={workdir}",
                        "--config.model.d_model=64", "--config.data.seq_len=16"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 1, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last == (f"train.py: --workdir={workdir} holds step 20 of another model "
                  "(model.d_model 32 -> 64); resume with the saved values or train in a new "
                  "--workdir"), last
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  # eval.py's ValueError becomes its one line like every other (in-process: a second JAX
  # start-up would cost more than the rest of this test).
  evaluated = []
  monkeypatch.setattr(evaluate.loop, "evaluate", lambda *a, **k: evaluated.append(a))
  with pytest.raises(ValueError, match=re.escape(
      "--plot_attention needs a Perceiver classifier with encoder='latent'; this workdir "
      "holds model.name='lm'")):
    evaluate.evaluate_workdir(workdir, plot_attention=True)
  assert not evaluated  # refused before evaluating.
  assert not os.path.exists(os.path.join(workdir, "eval_results.json"))


def test_flag_and_config_file_errors_come_before_jax_is_imported():
  """The package and cli import no JAX: train.py reports a missing config file (and eval.py a
  bad --override) without paying JAX's import, which is most of an entry point's start-up."""
  code = ("import sys, latent_attention, latent_attention.cli; "
          "assert 'jax' not in sys.modules, 'jax imported'; "
          "assert callable(latent_attention.kv_cache_bytes) and 'jax' in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
