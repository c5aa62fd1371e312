"""MQAR recall errors: hand-made predictions, and oracles of known behaviour through measure()."""

import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from latent_attention.data.synthetic import MqarSource, Synthetic
from latent_attention.studies import recall_errors
from latent_attention.training import evaluate

N = 4  # key-value pairs


def test_classify_counts_each_kind_and_skips_unscored_positions():
  # Context k0 v0 k1 v1 (n = 2), then queries at 4, 6 and 8 (weight 1), filler elsewhere.
  inputs = np.array([[11, 21, 12, 22, 11, 0, 12, 0, 12, 0]])
  targets = np.array([[0, 0, 0, 0, 21, 0, 22, 0, 22, 0]])
  weights = (targets > 0).astype(np.float32)
  predicted = np.array([[5, 5, 5, 5, 21, 5, 21, 5, 7, 5]])  # right, another value, neither.
  assert recall_errors.classify(predicted, inputs, targets, weights, 2) == {
      "right": 1, "another_value": 1, "neither": 1}
  predicted[0, 8] = -1  # not scored by the model (Perceiver AR's early positions).
  assert recall_errors.classify(predicted, inputs, targets, weights, 2) == {
      "right": 1, "another_value": 1, "neither": 0}


def _oracle(shift, last=None):
  """A stand-in model: at each position, the value of the pair `shift` pairs after the one
  whose key is the input token (shift 0: the right answer); only the `last` positions."""
  def apply(variables, inputs_BT):
    del variables
    keys_BN, values_BN = inputs_BT[:, 0:2 * N:2], inputs_BT[:, 1:2 * N:2]
    match_BTN = inputs_BT[:, :, None] == keys_BN[:, None, :]
    pair_BT = (jnp.argmax(match_BTN, -1) + shift) % N
    predicted_BT = jnp.take_along_axis(values_BN, pair_BT, 1)
    logits_BTV = (predicted_BT[..., None] == jnp.arange(64)).astype(jnp.float32)
    return logits_BTV if last is None else logits_BTV[:, -last:]
  return types.SimpleNamespace(apply=apply)


@pytest.mark.parametrize("shift,last,expected", [
    (0, None, "right"), (1, None, "another_value"), (0, 8, "right")])
def test_measure_aligns_predictions_with_queries(monkeypatch, shift, last, expected):
  data = ml_collections.ConfigDict(dict(
      name="mqar", seq_len=32, vocab_size=64, num_kv_pairs=N, num_eval_examples=40,
      synthetic_seed=0))
  exp = types.SimpleNamespace(config=ml_collections.ConfigDict({"data": data}),
                              dataset=Synthetic(data), model=_oracle(shift, last))
  monkeypatch.setattr(evaluate, "restore_experiment", lambda workdir: (exp, {}, 7))
  row = recall_errors.measure("run", batch_size=16)
  source = MqarSource(data, "validation", 40)
  weights = np.stack([source[i]["weights"] for i in range(40)])
  scored = weights if last is None else weights[:, -last:]
  assert row["queries"] == int(scored.sum()) > 0 and row["step"] == 7
  assert row[expected] == 1.0
  assert sum(row[k] for k in recall_errors.KINDS) == pytest.approx(1.0)


def test_a_run_of_another_dataset_is_refused(monkeypatch):
  exp = types.SimpleNamespace(config=ml_collections.ConfigDict(
      {"data": {"name": "tiny_shakespeare"}}))
  monkeypatch.setattr(evaluate, "restore_experiment", lambda workdir: (exp, {}, 1))
  with pytest.raises(ValueError, match="holds data.name='tiny_shakespeare': the recall error "
                     "breakdown needs an mqar run"):
    recall_errors.measure("run")
