"""The low-rank gated heads (lowrank_gated) and top-k head gating (head_gated) variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention.attention import AttentionConfig, lowrank_gated, make_attention
from latent_attention.attention.head_gated import kept_heads
from latent_attention.config import from_config

from conftest import F32_EPS, assert_f32_close, tiny_lm_config


def _attention(kind, d_model=32, **overrides):
  cfg = from_config(AttentionConfig, tiny_lm_config(kind, **overrides).attention,
                    "model.attention")
  return make_attention(cfg, d_model, jnp.float32)


def _init(attn, b=2, t=6, d_model=32, causal=True):
  x_BTD = jax.random.normal(jax.random.key(0), (b, t, d_model))
  pos_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
  params = attn.init(jax.random.key(1), x_BTD, pos_BT=pos_BT, causal=causal)["params"]
  return params, x_BTD, pos_BT


def _biased_attention(bias_NTS):
  """Plain softmax attention that adds the seed's latent bias to the logits before the mask."""

  def attend(q_BTNH, k_BSNH, v_BSNH, *, mask_BTS=None, is_causal=False, scale=None,
             implementation=None):
    del mask_BTS, scale, implementation  # The test calls it causal, unmasked, default scale.
    assert is_causal
    t, s = q_BTNH.shape[1], k_BSNH.shape[1]
    logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSNH) * q_BTNH.shape[-1] ** -0.5
    logits_BNTS = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits_BNTS + bias_NTS, -1e9)
    return jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(logits_BNTS, axis=-1), v_BSNH)

  return attend


def test_lowrank_gated_latent_bias_is_a_no_op(monkeypatch):
  attn = _attention("lowrank_gated")
  params, x_BTD, pos_BT = _init(attn)

  def run(bias_NTS):
    monkeypatch.setattr(lowrank_gated, "dot_product_attention", _biased_attention(bias_NTS))
    return attn.apply({"params": params}, x_BTD, pos_BT=pos_BT)

  y_BTD = attn.apply({"params": params}, x_BTD, pos_BT=pos_BT)
  per_head_N11 = jnp.array([-3.0, 0.0, 5.0, 20.0])[:, None, None]

  def terms(bias):
    # A per-head bias shifts the logits before the softmax, so their rounding grows by its
    # magnitude over the S=6 keys; plus q.k over H=8 and the weighted sum (2 * 8).
    return 6 * (1 + float(jnp.abs(bias).max())) + 2 * 8

  assert_f32_close(run(jnp.zeros((4, 1, 1))), y_BTD, terms=terms(0.0))
  assert_f32_close(run(per_head_N11), y_BTD, terms=terms(per_head_N11))
  # The patched core really runs: a bias that varies over keys changes the output by far more
  # than the rounding tolerance above.
  per_key_N1S = jax.random.normal(jax.random.key(2), (4, 1, 6)) * 3
  tol = terms(per_head_N11) * F32_EPS * float(jnp.abs(y_BTD).max())
  assert float(jnp.abs(run(per_key_N1S) - y_BTD).max()) > 100 * tol


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_lowrank_gated_shapes_run(combine):
  attn = _attention("lowrank_gated", d_model=512, num_heads=8, head_dim=64, lowrank_rank=32,
                    lowrank_combine=combine)
  params, x_BTD, pos_BT = _init(attn, b=4, t=128, d_model=512)
  y_BTD = jax.jit(attn.apply)({"params": params}, x_BTD, pos_BT=pos_BT)
  assert y_BTD.shape == (4, 128, 512)
  out_shape = (8 * 64, 512) if combine == "concat" else (64, 512)
  assert params["out"]["kernel"].reshape(-1, 512).shape == out_shape


@pytest.mark.parametrize("kind,overrides", [
    ("lowrank_gated", {}), ("lowrank_gated", {"lowrank_combine": "sum"}),
    ("head_gated", {"head_gated_top_k": 2}), ("head_gated", {"head_gated_top_k": 4})])
def test_gradient_reaches_every_parameter(kind, overrides):
  attn = _attention(kind, **overrides)
  params, x_BTD, pos_BT = _init(attn)
  w_BTD = jax.random.normal(jax.random.key(3), x_BTD.shape)

  def loss(params):
    return jnp.sum(attn.apply({"params": params}, x_BTD, pos_BT=pos_BT) * w_BTD)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
  if kind == "head_gated":  # Only the straight-through estimator can reach the scorer.
    assert float(jnp.abs(grads["scorer"]["kernel"]).min()) > 0


@pytest.mark.parametrize("overrides,k", [
    ({"head_gated_top_k": 3}, 3), ({"head_gated_keep_fraction": 0.5}, 4),
    ({"head_gated_keep_fraction": 0.01}, 1), ({"head_gated_keep_fraction": 1.0}, 8)])
def test_kept_heads(overrides, k):
  cfg = AttentionConfig(kind="head_gated", num_heads=8, **overrides)
  assert kept_heads(cfg) == k
  assert make_attention(cfg, 32, jnp.float32).cache_elements_per_token(cfg) == 2 * k * 32


def test_head_gated_computes_exactly_the_top_k_heads():
  attn = _attention("head_gated", head_gated_top_k=2)
  params, x_BTD, pos_BT = _init(attn, b=1)
  scorer = params["scorer"]
  kept = set(np.argsort(-np.asarray(x_BTD[0, 0] @ scorer["kernel"] + scorer["bias"]))[:2])
  y_BTD = attn.apply({"params": params}, x_BTD, pos_BT=pos_BT)
  # Rounding on y's path: the projections over D=32, q.k over H=8, softmax and sum over T=6
  # keys, the output over N*H=32: 84 terms. Zeroing a kept head moves y far beyond that.
  tol = (32 + 8 + 2 * 6 + 32) * F32_EPS * float(jnp.abs(y_BTD).max())
  for i in range(4):
    zeroed = dict(params, **{name: params[name].at[:, i].set(0)
                             for name in ("query", "key", "value")})
    zeroed["out"] = params["out"].at[i].set(0)
    y_zeroed_BTD = attn.apply({"params": zeroed}, x_BTD, pos_BT=pos_BT)
    if i in kept:
      assert float(jnp.abs(y_zeroed_BTD - y_BTD).max()) > 100 * tol
    else:
      np.testing.assert_array_equal(y_zeroed_BTD, y_BTD)


def test_head_gated_mean_pool_needs_non_causal():
  attn = _attention("head_gated", head_gated_pool="mean")
  with pytest.raises(ValueError, match=r"head_gated_pool='mean' is invalid with causal=True"):
    _init(attn)
  params, x_BTD, pos_BT = _init(attn, causal=False)
  y_BTD = attn.apply({"params": params}, x_BTD, pos_BT=pos_BT, causal=False)
  assert y_BTD.shape == x_BTD.shape
  with pytest.raises(ValueError, match=r"head_gated_pool='max' is invalid: choose one of"):
    AttentionConfig(kind="head_gated", head_gated_pool="max")


def _forward_flops(attn, b, t, d_model):
  """XLA's FLOP count of the compiled forward pass (shapes only, nothing runs)."""
  x_BTD = jax.ShapeDtypeStruct((b, t, d_model), jnp.float32)
  pos_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
  params = jax.eval_shape(lambda x: attn.init(jax.random.key(0), x, pos_BT=pos_BT), x_BTD)
  fwd = jax.jit(lambda p, x: attn.apply(p, x, pos_BT=pos_BT))
  return fwd.lower(params, x_BTD).compile().cost_analysis()["flops"]


def test_head_gated_forward_costs_fewer_flops_than_mha():
  shape = {"num_heads": 8, "head_dim": 16, "implementation": "xla"}
  mha = _forward_flops(_attention("mha", d_model=64, num_kv_heads=8, **shape), 2, 32, 64)
  gated = _forward_flops(_attention("head_gated", d_model=64, head_gated_top_k=2, **shape),
                         2, 32, 64)
  # 2 of 8 heads: projections and attention shrink 4x; the scorer adds B·D·N.
  assert gated < 0.35 * mha, (gated, mha)
