"""Cached decoding equals the full forward pass; cache sizes equal the formula."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention import kv_cache_bytes, kv_cache_formula_bytes
from latent_attention.attention import core
from latent_attention.models import build_model
from latent_attention.models.decoding import decode_chunks, generate, init_cache

from conftest import LM_VARIANTS, assert_f32_close, lm_terms, tiny_lm_config, variant_id


_PARAMS = {}  # (config JSON, seed) -> params: one init per variant, shared by this file's tests.


def _setup(cfg, b=2, t=10, seed=0):
  model = build_model(cfg)
  # Parameters (float32 whatever the compute dtype) depend on neither the batch, the length
  # nor the dtype.
  key = (json.dumps({**cfg.to_dict(), "dtype": None}, sort_keys=True), seed)
  if key not in _PARAMS:
    _PARAMS[key] = jax.jit(model.init)(jax.random.key(seed),
                                       jnp.zeros((1, 4), jnp.int32))["params"]
  tokens_BT = jax.random.randint(jax.random.key(seed + 1), (b, t), 0, cfg.vocab_size)
  return model, _PARAMS[key], tokens_BT


def _forward(model, params, tokens_BT):
  """The full forward pass, jitted: one compile instead of hundreds of eager ops."""
  return jax.jit(model.apply)({"params": params}, tokens_BT)


def _decode(model, params, tokens_BT, chunks, jit):
  apply = jax.jit(model.apply, static_argnames=("decode", "mutable")) if jit else None
  return decode_chunks(model, params, tokens_BT, chunks, apply)


def _one_layer(cfg):
  """Every layer runs the same decode code, so most tests decode one (half the compile time);
  handing caches from layer to layer is tested with 2 (token by token) and 3 layers (CLA)."""
  cfg.num_layers = 1
  return cfg


def _check_decode(cfg, chunks, jit):
  """Decodes `chunks` tokens of 2 sequences; returns the cache left behind."""
  model, params, tokens_BT = _setup(cfg, t=sum(chunks))
  full_BTV = _forward(model, params, tokens_BT)
  decoded_BTV, cache = _decode(model, params, tokens_BT, chunks, jit)
  # The whole LM over t keys (conftest.lm_terms), relative to max |logits|.
  assert_f32_close(decoded_BTV, full_BTV, terms=lm_terms(cfg, tokens_BT.shape[1]))
  return cache


def test_decode_matches_full_forward_and_cache_bytes_equal_formula(lm_variant):
  """Prefill, single steps and a multi-token step, jitted, for every variant; the cache they
  fill, and the one-sequence (no batch axis) and bfloat16 layouts, hold the formula's bytes."""
  cache = _check_decode(_one_layer(lm_variant), (4, 1, 1, 3, 1), jit=True)
  assert kv_cache_bytes(cache) == kv_cache_formula_bytes(lm_variant, 10, 2)
  one = jax.eval_shape(lambda: init_cache(build_model(lm_variant), 1, 5))
  assert kv_cache_bytes(one) == kv_cache_formula_bytes(lm_variant, 5, 1)
  bf16 = tiny_lm_config(**lm_variant.attention.to_dict())
  bf16.dtype = "bfloat16"
  shapes = jax.eval_shape(lambda: init_cache(build_model(bf16), 2, 7))
  assert kv_cache_bytes(shapes) == kv_cache_formula_bytes(bf16, 7, 2, jnp.bfloat16)


# One per distinct bfloat16 path: MLA's naive and latent modes compute the forward's math.
BF16_VARIANTS = [v for v in LM_VARIANTS if v[0] != "mla" or v[1].get("mla_decode_mode") ==
                 "absorbed"]


@pytest.mark.parametrize("variant", BF16_VARIANTS, ids=variant_id)
def test_bfloat16_decodes_like_its_forward_with_float32_params_logits_and_gradients(variant):
  """model.dtype = bfloat16: parameters, gradients and logits stay float32; decoding equals
  the bfloat16 forward within bfloat16 rounding; the loss gradient is finite."""
  cfg = _one_layer(tiny_lm_config(variant[0], **variant[1]))
  cfg.dtype = "bfloat16"
  model, params, tokens_BT = _setup(cfg, t=10)
  full_BTV = _forward(model, params, tokens_BT)
  decoded_BTV, _ = _decode(model, params, tokens_BT, (4, 1, 1, 3, 1), jit=True)
  assert full_BTV.dtype == decoded_BTV.dtype == jnp.float32
  # Both paths round activations, cache and matmul inputs to bfloat16 (eps 2^-7), at different
  # points: measured <= 1.7 eps x max|logits| over these variants; a decoding bug (another
  # position's key, a stale cache slot) is O(max|logits|).
  eps = float(jnp.finfo(jnp.bfloat16).eps)
  np.testing.assert_allclose(decoded_BTV, full_BTV, rtol=0,
                             atol=4 * eps * float(jnp.abs(full_BTV).max()))

  def loss(p):
    logits_BTV = model.apply({"params": p}, tokens_BT[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_BTV),
                                         tokens_BT[:, 1:, None], -1))

  grads = jax.jit(jax.grad(loss))(params)
  for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(grads)):
    assert p.dtype == g.dtype == jnp.float32 and bool(jnp.isfinite(g).all())


@pytest.mark.parametrize("variant", [
    ("mha", {}), ("mla", {"mla_decode_mode": "absorbed", "q_lora_rank": 24})], ids=variant_id)
def test_token_by_token_decode_without_jit_matches_full_forward(variant):
  """Eager (op-by-op) decoding, one token at a time, through 2 layers: plain heads and MLA's
  absorbed latents (eager decoding costs seconds per variant; every kind's decoding is checked
  jitted above, and jit changes no decode code)."""
  _check_decode(tiny_lm_config(variant[0], **variant[1]), (1,) * 6, jit=False)


@pytest.mark.parametrize("variant", [("mqa", {}), ("mla", {"mla_decode_mode": "absorbed"}),
                                     ("lowrank_gated", {})],
                         ids=variant_id)  # One shared head, absorbed, logits from latents.
def test_long_prefill_in_query_chunks_then_steps_matches_full_forward(variant, monkeypatch):
  """A prompt filling most of a 200-slot cache, attended in query blocks, then 4 steps."""
  monkeypatch.setattr(core, "QUERY_CHUNK", 64)  # the 196-token prefill: 4 blocks, one padded.
  cfg = _one_layer(tiny_lm_config(variant[0], **variant[1]))
  model, params, tokens_BT = _setup(cfg, b=1, t=200)
  full_BTV = _forward(model, params, tokens_BT)
  decoded_BTV, _ = _decode(model, params, tokens_BT, (196, 1, 1, 1, 1), jit=True)
  assert_f32_close(decoded_BTV, full_BTV, terms=lm_terms(cfg, tokens_BT.shape[1]))


@pytest.mark.parametrize("variant", [("gqa", {"num_kv_heads": 2}),
                                     ("gla", {"mla_decode_mode": "absorbed"})], ids=variant_id)
def test_cross_layer_kv_sharing_decodes_exactly_and_caches_every_second_layer(variant):
  """CLA, kv_share_every = 2 over 3 layers: layers 0 and 2 cache, layer 1 reads layer 0's.
  Heads and latents (GLA: MLA's path with grouped latent heads); gta and tpa hand their cache
  on through the same `shared_kv` dict (tests/test_kv_compressing.py checks CLA's math)."""
  cfg = tiny_lm_config(variant[0], **variant[1])
  cfg.update(num_layers=3, kv_share_every=2)
  _check_decode(cfg, (4, 1, 3, 1), jit=True)
  model, params, tokens_BT = _setup(cfg, t=6)
  cache = jax.eval_shape(lambda p, x: _decode(model, p, x, (6,), jit=False)[1], params,
                         tokens_BT)
  assert sorted(k for k in cache if k.startswith("block")) == ["block_0", "block_2"]
  assert kv_cache_bytes(cache) == kv_cache_formula_bytes(cfg, 6, 2)
  plain = tiny_lm_config(variant[0], **variant[1])
  plain.num_layers = 3
  assert kv_cache_formula_bytes(plain, 6, 2) == kv_cache_bytes(cache) * 3 // 2


def test_absorbed_cache_holds_only_latent_and_rope_key():
  cfg = tiny_lm_config("mla", mla_decode_mode="absorbed")
  cache = init_cache(build_model(cfg), 2, 9)
  assert set(cache) == {"index", "block_0", "block_1"}
  for i in range(2):
    leaves = {k: v.shape for k, v in cache[f"block_{i}"]["attn"].items()}
    assert leaves == {"cached_ckv": (2, 9, 12), "cached_k_rope": (2, 9, 4)}


@pytest.mark.parametrize("kind,batch,shapes", [
    ("mha", 2, {"cached_key": (2, 4, 9, 8), "cached_value": (2, 4, 9, 8)}),
    ("mqa", 2, {"cached_key": (2, 9, 8), "cached_value": (2, 9, 8)}),
    ("lowrank_gated", 2, {"cached_k_latent": (2, 4, 9, 4), "cached_v_latent": (2, 4, 9, 4)}),
    ("mha", 1, {"cached_key": (4, 9, 8), "cached_value": (4, 9, 8)}),
    ("mla", 1, {"cached_ckv": (9, 12), "cached_k_rope": (9, 4)})])
def test_decode_cache_is_heads_major(kind, batch, shapes):
  """[B, K, S, H], each head's keys contiguous (core.cached_attention); one head: [B, S, H];
  one sequence: no batch axis (attention/cache.py)."""
  cache = init_cache(build_model(tiny_lm_config(kind)), batch, 9)
  assert {k: v.shape for k, v in cache["block_0"]["attn"].items()} == shapes


@pytest.mark.parametrize("layers,expected", [(27, 15_552), (60, 34_560)])
def test_deepseek_v2_shaped_cache_per_token(layers, expected):
  cfg = tiny_lm_config("mla", num_heads=16, kv_lora_rank=512, qk_nope_head_dim=128,
                       qk_rope_head_dim=64, v_head_dim=128)
  cfg.update(vocab_size=102_400, d_model=2048, num_layers=layers, mlp_dim=10_944)
  b, t = 2, 16
  shapes = jax.eval_shape(lambda: init_cache(build_model(cfg), b, t))
  per_token = kv_cache_bytes(shapes) // (b * t * 4)
  assert per_token == expected
  assert kv_cache_formula_bytes(cfg, t, b) == expected * b * t * 4


def test_gqa_with_all_heads_equals_mha_and_mqa_equals_gqa_one_head():
  # The whole LM over t=10 keys (conftest.lm_terms), relative to max |logits|.
  cfg = _one_layer(tiny_lm_config("mha"))
  terms = lm_terms(cfg, 10)
  model_mha, params, tokens_BT = _setup(cfg)
  model_gqa = build_model(_one_layer(tiny_lm_config("gqa", num_kv_heads=4)))
  assert_f32_close(_forward(model_gqa, params, tokens_BT),
                   _forward(model_mha, params, tokens_BT), terms=terms)
  model_mqa, params, tokens_BT = _setup(_one_layer(tiny_lm_config("mqa")))
  model_gqa1 = build_model(_one_layer(tiny_lm_config("gqa", num_kv_heads=1)))
  assert_f32_close(_forward(model_gqa1, params, tokens_BT),
                   _forward(model_mqa, params, tokens_BT), terms=terms)


@pytest.mark.parametrize("variant", [
    ("mha", {}), ("mqa", {}), ("mla", {"mla_decode_mode": "absorbed"}),
    ("head_gated", {"head_gated_top_k": 2})], ids=variant_id)
def test_generate_greedy_matches_argmax_of_full_forward(variant):
  """A prompt over half of generate's buffer (prompt + new tokens), the last step its last slot.

  generate's loop is the same for every kind (each kind's steps are checked above): per-head,
  one shared head, absorbed latents, and a per-step head selection.
  """
  model, params, prompt_BT = _setup(_one_layer(tiny_lm_config(variant[0], **variant[1])), t=7)
  new_BN = generate(model, params, prompt_BT, jax.random.key(0), max_new_tokens=5,
                    temperature=0.0)
  assert new_BN.shape == (2, 5)
  seq_BT = jnp.concatenate([prompt_BT, new_BN], axis=1)
  logits_BTV = _forward(model, params, seq_BT)
  np.testing.assert_array_equal(jnp.argmax(logits_BTV[:, 6:-1], -1), new_BN)


def test_generate_after_a_prompt_filling_the_cache():
  """A 10-token prompt and 2 new tokens: generate's 12-slot cache is full but for the slot of
  the last token, which is sampled, never written; the one decode step writes slot 10."""
  model, params, prompt_BT = _setup(_one_layer(tiny_lm_config("mla", mla_decode_mode="absorbed")),
                                    t=10)
  new_BN = generate(model, params, prompt_BT, jax.random.key(0), max_new_tokens=2,
                    temperature=0.0)
  logits_BTV = _forward(model, params, jnp.concatenate([prompt_BT, new_BN], axis=1))
  np.testing.assert_array_equal(jnp.argmax(logits_BTV[:, 9:11], -1), new_BN)


@pytest.mark.parametrize("kind,batch", [("mha", 1), ("mqa", 2), ("mla", 1), ("lowrank_gated", 1)])
def test_decode_step_writes_the_donated_cache_in_place(kind, batch):
  """No copy of a cache buffer in the compiled step: a unit head or batch axis in the buffers
  made XLA:CPU copy the whole cache every step (attention/cache.py; caught here at S=64)."""
  model, params, _ = _setup(_one_layer(tiny_lm_config(kind)))
  cache = init_cache(model, batch, 64)

  def step(params, cache, tok_B1):
    logits, mutated = model.apply({"params": params, "cache": cache}, tok_B1, decode=True,
                                  mutable=["cache"])
    return logits, mutated["cache"]

  hlo = jax.jit(step, donate_argnums=1).lower(
      params, cache, jnp.zeros((batch, 1), jnp.int32)).compile().as_text()
  shapes = {",".join(map(str, x.shape)) for x in jax.tree.leaves(cache) if x.ndim > 1}
  copied = [line for line in hlo[hlo.index("\nENTRY"):].splitlines()
            if re.match(r"\s*%\S+ = f32\[([\d,]*)\]\S* copy\(", line)
            and re.match(r"\s*%\S+ = f32\[([\d,]*)\]", line).group(1) in shapes]
  assert not copied, copied[:2]


def test_one_head_lowrank_and_one_sequence_decode_match_full_forward():
  """Unit axes the caches drop or keep (attention/cache.py): one head, one sequence (the
  long-prefill test covers mqa at batch 1)."""
  for cfg, batch in ((_one_layer(tiny_lm_config("lowrank_gated", num_heads=1)), 1),
                     (_one_layer(tiny_lm_config("head_gated", head_gated_top_k=1)), 2)):
    model, params, tokens_BT = _setup(cfg, b=batch)
    decoded_BTV, _ = _decode(model, params, tokens_BT, (4, 1, 1, 4), jit=True)
    assert_f32_close(decoded_BTV, _forward(model, params, tokens_BT),
                     terms=lm_terms(cfg, tokens_BT.shape[1]))


def test_generate_top_k_samples_only_from_top_k():
  model, params, prompt_BT = _setup(_one_layer(tiny_lm_config("mla")), t=3)
  new_BN = generate(model, params, prompt_BT, jax.random.key(3), max_new_tokens=6,
                    temperature=1.0, top_k=2)
  logits_BTV = _forward(model, params, jnp.concatenate([prompt_BT, new_BN], 1))
  top2_BN2 = jax.lax.top_k(logits_BTV[:, 2:-1], 2)[1]
  assert bool(jnp.all((top2_BN2 == new_BN[..., None]).any(-1)))


def test_attention_only_blocks_have_no_mlp_and_decode_exactly():
  cfg = tiny_lm_config("mha")
  cfg.mlp_dim = 0  # Zoology's MQAR models: attention-only blocks.
  model, params, tokens_BT = _setup(cfg)
  assert not any("mlp" in k for block in ("block_0", "block_1") for k in params[block])
  decoded_BTV, _ = _decode(model, params, tokens_BT, (4, 1, 5), jit=True)
  assert_f32_close(decoded_BTV, _forward(model, params, tokens_BT),
                   terms=lm_terms(cfg, tokens_BT.shape[1]))
