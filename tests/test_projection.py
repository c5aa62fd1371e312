"""The CPU-fast layers (attention/projection.py, the 4-D einsum core) against what they replaced.

The reference is the model as it was before the train-step rewrite: flax's `nn.DenseGeneral`
and `nn.RMSNorm`, N-D `tensordot` up-projections, and `jax.nn.dot_product_attention` where it
applies. Same parameters (tree and initial values), same logits and gradients.
"""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn

from latent_attention.attention import projection
from latent_attention.models import build_model

from conftest import assert_f32_close, lm_terms, tiny_lm_config


def _flax_dense(features, n_in=1, *, dtype, name):
  return nn.DenseGeneral(features, axis=tuple(range(-n_in, 0)), use_bias=False, dtype=dtype,
                         name=name)


def _flax_rmsnorm(groups=1, **kwargs):
  assert groups == 1, "flax's RMSNorm normalises the whole last axis"
  return nn.RMSNorm(**kwargs)


def _loss_params_logits(cfg, tokens_BT, targets_BT):
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), tokens_BT)["params"]

  def loss(params):
    logits = model.apply({"params": params}, tokens_BT)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_BT).mean(), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return params, logits, grads


# Grouped heads (gqa) take the 5-D einsum, unchanged and checked in test_attention.py.
@pytest.mark.parametrize("kind,extra", [("mha", {}), ("mla", {"mla_decode_mode": "latent"}),
                                        ("lowrank_gated", {})])
def test_same_params_logits_and_gradients_as_flax_layers(kind, extra, monkeypatch):
  cfg = tiny_lm_config(kind, **extra)
  tokens_BT = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
  targets_BT = jnp.roll(tokens_BT, -1, axis=1)
  params, logits, grads = _loss_params_logits(cfg, tokens_BT, targets_BT)

  monkeypatch.setattr(projection, "Dense", _flax_dense)
  monkeypatch.setattr(projection, "RMSNorm", _flax_rmsnorm)
  monkeypatch.setattr(projection, "apply_kernel",
                      lambda x, kernel, n_in=1: jnp.tensordot(x, kernel, axes=n_in))
  if kind != "mla":  # MLA's value dim differs from its qk dim: einsum in both.
    cfg.attention.implementation = "xla"
  ref_params, ref_logits, ref_grads = _loss_params_logits(cfg, tokens_BT, targets_BT)

  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  jax.tree.map(lambda a, b: assert_f32_close(a, b, terms=0), params, ref_params)
  terms = lm_terms(cfg, t=9)
  assert_f32_close(logits, ref_logits, terms=terms)
  # The backward retraces the forward's contractions once more: twice the path, scaled by the
  # largest gradient entry (each leaf's rounding comes from the same activations).
  top = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  jax.tree.map(lambda a, b: assert_f32_close(a, b, terms=2 * terms, scale=top), grads,
               ref_grads)


def test_rmsnorm_equals_flax_in_bfloat16_io():
  x_BTD = jax.random.normal(jax.random.key(2), (2, 3, 16)).astype(jnp.bfloat16) * 3
  ours = projection.RMSNorm(dtype=jnp.bfloat16)
  ref = nn.RMSNorm(dtype=jnp.bfloat16)
  params = ours.init(jax.random.key(0), x_BTD)
  assert jax.tree.structure(params) == jax.tree.structure(ref.init(jax.random.key(0), x_BTD))
  params = jax.tree.map(lambda s: s * 1.5, params)
  out, ref_out = ours.apply(params, x_BTD), ref.apply(params, x_BTD)
  assert out.dtype == ref_out.dtype == jnp.bfloat16
  # Both normalise in float32 and round once to bfloat16 (8 bits): at most one bf16 ulp apart.
  assert_f32_close(out.astype(jnp.float32), ref_out.astype(jnp.float32), terms=2 ** 16,
                   scale=float(jnp.abs(ref_out.astype(jnp.float32)).max()))
