"""The results tier (`make test-results`, marker `results`): short real trainings that guard the
headline results of docs/results/. Each threshold is the published figure with a stated margin
below the effect it guards, so a change that costs a few percent of quality fails here.

These run the real configs at full size, so they are minutes each on 2 CPU cores; conftest.py
compiles with XLA's usual optimisations for this tier (its debug flags would slow them 2-3x).
"""

import math
import os

import pytest

from latent_attention import config_files
from latent_attention.studies import context_eval, conversion
from latent_attention.training.loop import train_and_evaluate

from conftest import ROOT

pytestmark = pytest.mark.results


def load(spec, **sections):
  """configs/`spec` with `sections`' fields updated, e.g. train=dict(num_steps=5)."""
  config = config_files.load(os.path.join(ROOT, "configs", spec))
  for name, fields in sections.items():
    config[name].update(fields)
  return config


@pytest.fixture(scope="module")
def nanogpt_mla(tmp_path_factory):
  """nanoGPT's CPU recipe with MLA, its full 2000 steps (~2.5 min), evaluated at the end only."""
  workdir = str(tmp_path_factory.mktemp("nanogpt") / "mla")
  result = train_and_evaluate(load("lm_shakespeare.py:nanogpt_cpu", train=dict(eval_every=0),
                                   eval=dict(sample_len=0)), workdir)
  return workdir, result


def test_nanogpt_cpu_mla_validation_loss(nanogpt_mla):
  """docs/results/nanogpt_cpu.md: 1.7064 nats/char (validation+test), on two runs in November
  and again here on 2026-12-04 (1.70641). Margin 0.02 nats (2% perplexity): four times the
  seed-to-seed spread of the attention sweep (perplexity ± 0.5%), under the 5% a broken change
  would cost."""
  _, result = nanogpt_mla
  assert result["step"] == 2000
  assert result["eval"]["loss"] <= 1.706 + 0.02, result["eval"]


def test_yarn_fine_tune_beats_plain_rope_at_four_times_the_length(nanogpt_mla, tmp_path):
  """docs/results/context_yarn.md: past the trained length plain RoPE breaks down (x2.4-3.4
  perplexity at 4x), and a short fine-tune with YaRN at 4x brings the model back to its
  trained-length perplexity. Here: the nanoGPT MLA run (T = 64), 100 steps (5%) at T = 256
  with YaRN x4; measured 2026-12-04: 5.369 at 256 against 5.509 at 64 (2.5% better)."""
  source, result = nanogpt_mla
  trained = math.exp(result["eval"]["loss"])
  (plain,) = [r["perplexity"] for r in context_eval.evaluate_lengths(source, [256], yarn=False)]
  tuned = str(tmp_path / "yarn256")
  config = load("lm_shakespeare.py:nanogpt_cpu",
                train=dict(init_from=source, num_steps=100, warmup_steps=7, decay_steps=0,
                           eval_every=0, checkpoint_every=100),
                data=dict(seq_len=256), eval=dict(sample_len=0))
  config.model.attention.update(rope_scaling="yarn", rope_factor=4.0, rope_original_len=64)
  fine_tuned = math.exp(train_and_evaluate(config, tuned)["eval"]["loss"])
  assert plain > 1.5 * trained, (plain, trained)  # the breakdown the fine-tune repairs.
  assert fine_tuned < trained, (fine_tuned, trained)


def test_full_rank_conversion_of_a_trained_mha_is_the_source(tmp_path):
  """docs/results/conversion_study.md: at full latent rank (d_c = K·H) keeping every RoPE
  pair, the MHA -> MLA conversion is the source model, so its loss equals the source's. A
  trained (300-step) nanoGPT-shaped MHA; float32 rounding of one eval pass is far below 1e-5
  (measured 2026-12-04: both 8.166186 perplexity)."""
  source = str(tmp_path / "mha")
  train_and_evaluate(load("lm_shakespeare.py:mha,nanogpt_cpu",
                          train=dict(num_steps=300, eval_every=0, checkpoint_every=300),
                          eval=dict(sample_len=0)), source)
  report = conversion.convert_workdir(source, str(tmp_path / "mla"), kv_lora_rank=128,
                                      rope_dims=32)
  assert abs(math.log(report["converted_perplexity"]) -
             math.log(report["source_perplexity"])) < 1e-5, report


def test_mqar_zoology_mha_recalls(tmp_path):
  """docs/results/mqar_zoology.md: `lm_mqar.py:mha,zoology` recalls 99.90% of the validation
  queries (3996 of 4000) after its 975 steps (~8 min); 99.875% here on 2026-12-04. Threshold
  0.99: the 4-head kinds that fail Zoology's recipe sit at 90-97%, so a regression of that kind
  fails."""
  result = train_and_evaluate(load("lm_mqar.py:mha,zoology", eval=dict(sample_len=0)),
                              str(tmp_path / "mqar"))
  assert result["eval"]["accuracy"] >= 0.99, result["eval"]


def test_perceiver_default_accuracy_at_its_first_thousand_steps(tmp_path):
  """docs/results/perceiver_fashion_mnist.md: the default run reaches 83.04% test accuracy at
  step 1000 of its 11000-step schedule (90.45% at the end, 18.6 min: too long for this tier).
  The same first 1000 steps (decay_steps = 11000 keeps the schedule), ~2 min, reached 81.62%
  on 2026-12-04: step 1000 is early, on a steep part of the curve, where runs differ by a point
  or two. Threshold 80%: a broken preprocessor or attention stays far below (the pixel
  Perceiver, 3x the compute per step, was at 82.7% only after 1500 steps)."""
  result = train_and_evaluate(
      load("perceiver_fashion_mnist.py", train=dict(num_steps=1000, decay_steps=11000,
                                                    eval_every=0, checkpoint_every=1000)),
      str(tmp_path / "perceiver"))
  assert result["eval"]["accuracy"] >= 0.80, result["eval"]
