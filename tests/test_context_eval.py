"""Evaluating a checkpoint under a changed config (eval.py's --override/--seq_len,
scripts/eval_context.py: perplexity at other context lengths, with and without YaRN), and
starting a run from another run's parameters (train.init_from)."""

import json
import os

import jax
import numpy as np
import pytest

from latent_attention.studies import context_eval
from latent_attention.training import checkpoint, loop
from latent_attention.training.evaluate import override_config, restore_experiment
from latent_attention.training.loop import train_and_evaluate

from conftest import runlocal


def test_context_lengths_with_and_without_yarn(trained_lm, tmp_path):
  with open(os.path.join(trained_lm, "train_results.json")) as f:
    trained = json.load(f)
  before = sorted(os.listdir(trained_lm))
  rows = context_eval.evaluate_lengths(trained_lm, [32, 64])
  assert sorted(os.listdir(trained_lm)) == before  # the run's own files are left as they were.
  assert [(r["length"], r["scaling"], r["trained_len"]) for r in rows] == [
      (32, "none", 32), (64, "none", 32), (64, "yarn", 32)]
  # At the training length, the override path is the plain evaluation: the same number.
  assert rows[0]["loss"] == trained["eval"]["loss"]
  assert rows[1]["loss"] != rows[2]["loss"]  # YaRN is on at twice the length.
  paths = context_eval.write(rows, str(tmp_path / "ctx"))
  table = open(paths["md"]).read()
  assert "| run | kind | trained at | RoPE | 32 | 64 |" in table
  assert f"| run | mla | 32 | plain | {rows[0]['perplexity']:.3f} |" in table
  assert f"| run | mla | 32 | YaRN (length / trained) |  | {rows[2]['perplexity']:.3f} |" in table
  assert os.path.getsize(paths["png"]) > 10_000
  assert json.load(open(paths["json"])) == rows


def test_override_config_parses_types_and_fills_new_fields():
  saved = {"seed": 0, "data": {"seq_len": 128, "name": "tiny_shakespeare"},
           "model": {"name": "lm", "attention": {"kind": "mla"}}}  # a run saved before YaRN.
  out = override_config(saved, {"data.seq_len": "512", "model.attention.rope_factor": "4",
                                "model.attention.rope_scaling": "yarn"})
  assert out["data"]["seq_len"] == 512 and out["model"]["attention"]["rope_factor"] == 4.0
  assert out["model"]["attention"]["rope_scaling"] == "yarn"
  assert saved["data"]["seq_len"] == 128  # the saved dict itself is untouched.
  with pytest.raises(ValueError, match=r"^override data.seq_len=long: expected a value of type "
                                       r"int, like the saved 128$"):
    override_config(saved, {"data.seq_len": "long"})
  with pytest.raises(ValueError, match=r"^override data.seqlen=5: data has no field 'seqlen'; "
                                       r"did you mean seq_len\? fields: name, seq_len$"):
    override_config(saved, {"data.seqlen": "5"})


def test_init_from_starts_a_fresh_run_from_another_runs_parameters(trained_lm, tmp_path):
  """train.init_from: the source's newest parameters at step 0 with a fresh optimizer, also at
  another context length (a YaRN fine-tune's set-up); another model is a one-line error."""
  _, source_params, _ = restore_experiment(trained_lm)
  config = runlocal()
  config.train.init_from = trained_lm
  config.data.seq_len = 64
  config.model.attention.update(rope_scaling="yarn", rope_factor=2.0, rope_original_len=32)
  workdir = str(tmp_path / "ft")
  mngr = checkpoint.manager(workdir)
  try:
    _, state, _ = loop._resume(config, workdir, mngr)  # pylint: disable=protected-access
  finally:
    mngr.close()
  assert int(state.step) == 0 and int(state.nonfinite_step) == -1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state.params, source_params)
  assert all(float(abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state)
             if x.ndim)  # AdamW's moments start at zero.
  other = runlocal("mha")
  other.train.init_from = trained_lm
  with pytest.raises(ValueError, match=r"^train.init_from=.*: its parameters \(step 20\) are "
                                       r"not this model's; first difference: "):
    train_and_evaluate(other, str(tmp_path / "mha"))
  assert not os.path.exists(tmp_path / "mha" / "checkpoints" / "0")
