"""Induced set attention (ISAB): a plain numpy reference, and no T x T array anywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention.attention import AttentionConfig
from latent_attention.attention.induced import AttentionBlock, InducedSetAttention

from conftest import assert_f32_close, jaxpr_shapes

D, M, T = 16, 3, 37  # T differs from every other dim, so a T x T array is unmistakable.
# Two MABs, each: projections over D=16, q.k over H=4, softmax and sum over T=37 (M=3) keys,
# out projection over N*H=16, MLP 16 -> 24 -> 16: 2 * (16+4+37+16+16+24) = 226; doubled for the
# LayerNorms (mean and variance over D, each a few times per MAB): 452, rounded up to 512.
ISAB_TERMS = 512


def _isab(kind="mha", norm="pre", num_kv_heads=4):
  cfg = AttentionConfig(kind=kind, num_heads=4, num_kv_heads=num_kv_heads, head_dim=4,
                        kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4)
  return InducedSetAttention(cfg, d_model=D, num_inducing=M, mlp_dim=24, norm=norm)


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x):  # flax's default, the tanh approximation.
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attention(p, x, kv):
  """Per-head loops, K/V heads repeated over their query groups."""
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"])
  k = np.einsum("bsd,dkh->bskh", kv, p["key"]["kernel"])
  v = np.einsum("bsd,dkh->bskh", kv, p["value"]["kernel"])
  n, g = q.shape[2], q.shape[2] // k.shape[2]
  heads = []
  for i in range(n):
    s = np.einsum("bth,bsh->bts", q[:, :, i], k[:, :, i // g]) / np.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    heads.append(np.einsum("bts,bsh->bth", w / w.sum(-1, keepdims=True), v[:, :, i // g]))
  return np.einsum("btnh,nhd->btd", np.stack(heads, 2), p["out"]["kernel"])


def _mab(p, x, kv, norm):
  """Set Transformer MAB (post-norm), or its pre-norm form."""
  def mlp(h):
    return _gelu(h @ p["mlp_up"]["kernel"]) @ p["mlp_down"]["kernel"]
  if norm == "post":
    h = _layer_norm(x + _attention(p["attn"], x, kv), p["attn_norm"])
    return _layer_norm(h + mlp(h), p["mlp_norm"])
  h = x + _attention(p["attn"], _layer_norm(x, p["attn_norm"]), _layer_norm(kv, p["kv_norm"]))
  return h + mlp(_layer_norm(h, p["mlp_norm"]))


@pytest.mark.parametrize("kind,norm,num_kv_heads", [("mha", "pre", 4), ("gqa", "post", 2)])
def test_matches_numpy_reference(kind, norm, num_kv_heads):
  isab = _isab(kind, norm, num_kv_heads)
  x_BTD = jax.random.normal(jax.random.key(0), (2, T, D))
  params = jax.jit(isab.init)(jax.random.key(1, impl="unsafe_rbg"), x_BTD)["params"]
  p = jax.tree.map(np.asarray, params)
  x = np.asarray(x_BTD, np.float64)
  inducing = np.broadcast_to(p["inducing"], (2, M, D))
  expected = _mab(p["attend"], x, _mab(p["induce"], inducing, x, norm), norm)
  out_BTD = jax.jit(isab.apply)({"params": params}, x_BTD)
  assert out_BTD.shape == (2, T, D)
  assert_f32_close(out_BTD, expected, terms=ISAB_TERMS)  # One ISAB: see ISAB_TERMS.


def _max_t_dims(module, x_BTD):
  params = jax.eval_shape(module.init, jax.random.key(0), x_BTD)["params"]

  def loss(params, x_BTD):
    return module.apply({"params": params}, x_BTD).sum()

  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(params, x_BTD).jaxpr
  return max(sum(d == T for d in shape) for shape in jaxpr_shapes(jaxpr))


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_cost_is_linear_in_length(kind):
  """Forward and backward hold arrays of size O(T·M), never T x T (full attention does)."""
  x_BTD = jnp.ones((1, T, D))
  assert _max_t_dims(_isab(kind), x_BTD) == 1
  full = AttentionBlock(AttentionConfig(num_heads=4, num_kv_heads=4, head_dim=4), D, 24)
  assert _max_t_dims(full, x_BTD) == 2


def test_permutation_equivariant():
  isab = _isab()
  x_BTD = jax.random.normal(jax.random.key(0), (1, T, D))
  params = jax.jit(isab.init)(jax.random.key(1, impl="unsafe_rbg"), x_BTD)
  apply = jax.jit(isab.apply)
  perm = np.random.default_rng(0).permutation(T)
  # Permuting reorders the sums over T inside the same ISAB: see ISAB_TERMS.
  assert_f32_close(apply(params, x_BTD[:, perm]), apply(params, x_BTD)[:, perm],
                   terms=ISAB_TERMS)
