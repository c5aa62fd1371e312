"""Evaluating a checkpoint under a changed config: eval.py's --override/--seq_len and
scripts/eval_context.py (perplexity at other context lengths, with and without YaRN)."""

import json
import os

import pytest

from latent_attention.training import context_eval
from latent_attention.training.evaluate import override_config


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
  assert f"| run | mla | 32 | YaRN |  | {rows[2]['perplexity']:.3f} |" in table
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
