"""Perceiver AR: causality by gradient, decoding equals the full forward, cache size = formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax
import pytest
from flax import linen as nn

from latent_attention import kv_cache_bytes, kv_cache_formula_bytes
from latent_attention.config import default_section
from latent_attention.models import PerceiverARConfig, build_model
from latent_attention.models.decoding import decode_chunks, generate, init_cache

from conftest import assert_f32_close, lm_terms

M, T = 4, 10
VARIANTS = [("gqa", (("num_kv_heads", 2),)), ("mla", (("mla_decode_mode", "absorbed"),))]


def tiny_config(kind="gqa", **attention):
  """A 2-layer, width-32 Perceiver AR with M = 4 latents."""
  cfg = default_section(PerceiverARConfig)
  cfg.update(vocab_size=23, d_model=32, num_latents=M, num_layers=2, mlp_dim=64)
  cfg.attention.update(kind=kind, num_heads=4, num_kv_heads=4, head_dim=8, kv_lora_rank=12,
                       qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
  cfg.attention.update(attention)
  return cfg


@functools.lru_cache
def _setup(variant):
  """(config, model, params, tokens [2, 10], jitted apply), shared by the tests of a variant."""
  cfg = tiny_config(variant[0], **dict(variant[1]))
  model = build_model(cfg)
  tokens_BT = jax.random.randint(jax.random.key(1), (2, T), 0, cfg.vocab_size)
  # unsafe_rbg compiles a third as long as threefry; init statistics are the same.
  params = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), tokens_BT)["params"]
  apply = jax.jit(model.apply, static_argnames=("decode", "num_latents", "mutable"))
  return cfg, model, params, tokens_BT, apply


@pytest.fixture(params=VARIANTS, ids=lambda v: v[0])
def variant(request):
  return _setup(request.param)


def test_logits_cover_the_last_latents(variant):
  _, model, params, tokens_BT, _ = variant

  def shape(**kwargs):
    return jax.eval_shape(functools.partial(model.apply, **kwargs), {"params": params},
                          tokens_BT).shape
  assert shape() == (2, M, 23)
  assert shape(num_latents=7) == (2, 7, 23)
  assert shape(num_latents=99) == (2, T, 23)  # Every position is a latent.


def test_causal_by_gradient():
  """Latent i (position T - M + i) depends on every embedded position <= its own, no later."""
  _, model, params, tokens_BT, _ = _setup(VARIANTS[1])

  def latent_logits(delta_BTD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == "embed" and context.method_name == "__call__":
        out = out + delta_BTD
      return out

    with nn.intercept_methods(add_delta):
      return model.apply({"params": params}, tokens_BT)[0].sum(-1)

  jac_MBTD = jax.jit(jax.jacrev(latent_logits))(jnp.zeros((2, T, 32)))
  assert float(jnp.abs(jac_MBTD[:, 1]).max()) == 0.0  # Rows do not mix.
  for i in range(M):
    sensitivity_T = jnp.abs(jac_MBTD[i, 0]).max(-1)
    assert float(sensitivity_T[T - M + i + 1:].max(initial=0)) == 0.0
    assert float(sensitivity_T[:T - M + i + 1].min()) > 0.0


@pytest.mark.parametrize("chunks", [(6, 1, 3), (3, 1, 3, 3)],
                         ids=["prefill_longer_than_M", "prefill_shorter_than_M"])
def test_decode_matches_full_forward(variant, chunks):
  """Every decoded token is one more latent: prefill P, then k tokens = forward with M + k."""
  cfg, model, params, tokens_BT, apply = variant
  decoded_BLV, cache = decode_chunks(model, params, tokens_BT, chunks, apply)
  num_latents = min(chunks[0], M) + sum(chunks[1:])
  assert decoded_BLV.shape[1] == num_latents
  full_BLV = apply({"params": params}, tokens_BT, num_latents=num_latents)
  # An LM's count (conftest.lm_terms) with one more layer, the cross-attention; every layer
  # attends over at most T=10 keys. Relative to max |logits|.
  assert_f32_close(decoded_BLV, full_BLV, terms=lm_terms(cfg, T, layers=cfg.num_layers + 1))
  assert int(cache["index"]) == T and int(cache["latent_index"]) == num_latents


def test_cache_bytes_equal_formula(variant):
  cfg, model, params, _, _ = variant
  prefill = functools.partial(model.apply, decode=True, mutable=("cache",))
  for b, t in [(1, 5), (3, 8)]:
    cache = init_cache(model, b, t)
    _, mutated = jax.eval_shape(prefill, {"params": params, "cache": cache},
                                jnp.zeros((b, t), jnp.int32))
    assert kv_cache_bytes(mutated["cache"]) == kv_cache_formula_bytes(cfg, t, b)
  for path, leaf in jax.tree_util.tree_leaves_with_path(init_cache(model, 2, 9)):
    if leaf.dtype != jnp.int32:  # Cross and self layers: [B, S, C], or [B, K, S, H] heads-major.
      assert (leaf.shape[0], leaf.shape[2 if leaf.ndim == 4 else 1]) == (2, 9), path


def test_generate_greedy_matches_argmax_of_full_forward(variant):
  _, model, params, tokens_BT, apply = variant
  prompt_BT = tokens_BT[:, :6]
  new_BN = generate(model, params, prompt_BT, jax.random.key(0), max_new_tokens=4,
                    temperature=0.0)
  assert new_BN.shape == (2, 4)
  seq_BT = jnp.concatenate([prompt_BT, new_BN], axis=1)
  logits_BLV = apply({"params": params}, seq_BT, num_latents=M + 4)
  np.testing.assert_array_equal(jnp.argmax(logits_BLV[:, M - 1:-1], -1), new_BN)


def test_attention_only_blocks_equal_mlps_that_add_nothing():
  """mlp_dim=0 (Zoology's MQAR recipe) drops every MLP: the logits are those of the model with
  MLPs whose down-projections are zero, on the same other parameters."""
  cfg, model, params, tokens_BT, apply = _setup(VARIANTS[0])
  bare = tiny_config(VARIANTS[0][0], **dict(VARIANTS[0][1]))
  bare.mlp_dim = 0
  bare_model = build_model(bare)
  bare_params = jax.eval_shape(bare_model.init, jax.random.key(0), tokens_BT)["params"]
  flat = flax.traverse_util.flatten_dict(params)
  kept = {k: v for k, v in flat.items() if not any("mlp" in part for part in k)}  # and norms.
  assert set(kept) == set(flax.traverse_util.flatten_dict(bare_params))
  zeroed = {k: jnp.zeros_like(v) if "down" in k and any(p.endswith("mlp") for p in k) else v
            for k, v in flat.items()}
  assert sum(v is not flat[k] for k, v in zeroed.items()) == 1 + cfg.num_layers
  assert_f32_close(
      bare_model.apply({"params": flax.traverse_util.unflatten_dict(kept)}, tokens_BT),
      apply({"params": flax.traverse_util.unflatten_dict(zeroed)}, tokens_BT),
      terms=lm_terms(cfg, T, layers=cfg.num_layers + 1))


def test_bad_config_errors():
  cfg = tiny_config()
  cfg.num_latents = 0
  with pytest.raises(ValueError, match="model.num_latents=0 is invalid: must be a positive"):
    build_model(cfg)
