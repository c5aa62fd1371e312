"""model.remat_policy: the same loss and gradients, with the forward recomputed in the backward."""

import jax
import jax.numpy as jnp
import pytest

from conftest import assert_f32_close, lm_terms, tiny_lm_config
from latent_attention.models import build_model, parse_config

T = 32


def _grad_fn(policy):
  cfg = tiny_lm_config("mla")
  cfg.update(num_layers=2, remat_policy=policy)  # one remat block feeds another.
  model = build_model(parse_config(cfg))
  tokens_BT = jax.random.randint(jax.random.key(1), (4, T), 0, cfg.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), tokens_BT)["params"]

  def loss(p):
    logits = model.apply({"params": p}, tokens_BT)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_BT[..., None], -1).mean()

  return cfg, jax.jit(jax.value_and_grad(loss)), params


def test_remat_keeps_the_loss_and_the_gradients():
  cfg, plain, params = _grad_fn("none")
  loss, grads = plain(params)
  for policy in ("minimal", "full"):
    _, fn, _ = _grad_fn(policy)
    loss_p, grads_p = fn(params)
    assert_f32_close(loss_p, loss, terms=lm_terms(cfg, T))
    for g_p, g in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads)):
      # The recomputed forward rounds like the first; the backward sums the same terms.
      assert_f32_close(g_p, g, terms=2 * lm_terms(cfg, T), scale=float(jnp.abs(g).max()) or 1)


def test_remat_recomputes_the_forward_in_the_backward():
  """XLA's FLOP count of the compiled gradient grows by a forward pass (XLA:CPU reports the
  same temporaries either way; on TPU the lm1b step's fall from 17.5 to 6.7 GiB per v5e chip
  with 'full': docs/results/preflight.md)."""
  flops = {}
  for policy in ("none", "minimal", "full"):
    _, fn, params = _grad_fn(policy)
    flops[policy] = fn.lower(params).compile().cost_analysis()["flops"]
  assert flops["none"] < flops["minimal"] < flops["full"], flops


def test_an_unknown_policy_is_a_one_line_error():
  cfg = tiny_lm_config("mla")
  cfg.remat_policy = "some"
  with pytest.raises(ValueError, match=r"^model.remat_policy='some' is invalid.*none, minimal, "
                     r"full[^\n]*$"):
    parse_config(cfg)


def test_the_published_remat_table_is_the_committed_preflight_reports():
  """docs/results/preflight/remat.json's numbers are the train-step reports in raw/ (GiB,
  TFLOP, ms, %); 'none' is refused with the compiler's figure as its temporaries."""
  import json
  import os
  from conftest import ROOT
  pub = os.path.join(ROOT, "docs", "results", "preflight")
  with open(os.path.join(pub, "remat.json")) as f:
    rows = {r[0]: r for r in json.load(f)["rows"]}
  for policy, row in rows.items():
    with open(os.path.join(pub, "raw", f"remat_{policy}_v5e_2x2.json")) as f:
      train = json.load(f)["steps"][0]
    assert train["step"] == "train" and row[1].startswith("yes" if train["fits"] else "no")
    if train["fits"]:
      assert row[2:] == [train["temp_bytes"] / 2**30, train["peak_bytes"] / 2**30,
                         train["flops"] / 1e12, train["est_step_s"] * 1e3,
                         100 * train["est_mfu"]]
    else:  # what the compiler said it needs.
      assert row[2] == train["peak_bytes"] / 2**30 and row[3:] == [None] * 4
