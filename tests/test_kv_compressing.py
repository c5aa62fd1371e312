"""GTA, GLA (arXiv 2505.21487) and TPA (arXiv 2501.06425) against plain numpy layers that
materialise every head's queries, keys and values from the parameters; GLA with one latent head
is MLA; TPA decodes from its factors without forming K or V."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention import kv_cache_bytes, kv_cache_formula_bytes
from latent_attention.attention import AttentionConfig, make_attention
from latent_attention.attention.rope import inv_frequencies
from latent_attention.models import build_model
from latent_attention.models.decoding import init_cache

from conftest import assert_f32_close, jaxpr_shapes, tiny_lm_config

B, T, D = 2, 9, 32


def _rope(x, pos, inv_freq):
  """Half-split RoPE in numpy: pair (i, i + H/2) turned by pos · inv_freq[i]."""
  angle = pos[:, :, None, None] * np.asarray(inv_freq, np.float64)
  x1, x2 = np.split(x, 2, axis=-1)
  return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def _attend(q_BTNH, k_BSNH, v_BSNH, scale):
  """Causal softmax attention, one query head at a time, keys and values given per head."""
  s = np.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH) * scale
  s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v_BSNH)


def _layer(cfg):
  attn = make_attention(cfg, D, jnp.float32)
  x_BTD = jax.random.normal(jax.random.key(0), (B, T, D))
  pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T)) + 3  # not starting at 0.
  params = attn.init(jax.random.key(1), x_BTD, pos_BT=pos_BT)
  out = attn.apply(params, x_BTD, pos_BT=pos_BT)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  return np.asarray(x_BTD, np.float64), np.asarray(pos_BT, np.float64), p, out


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gta_equals_tied_keys_and_values_materialised(kv_heads):
  cfg = AttentionConfig(kind="gta", num_heads=4, num_kv_heads=kv_heads, head_dim=8,
                        qk_rope_head_dim=4)
  x, pos, p, out = _layer(cfg)
  n, h, r = 4, 8, 4
  inv_freq = inv_frequencies(r, cfg)
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"])
  q = np.concatenate([q[..., :h - r], _rope(q[..., h - r:], pos, inv_freq)], -1)
  kv = np.einsum("bsd,dkh->bskh", x, p["kv"]["kernel"])
  k_rope = _rope(np.einsum("bsd,dr->bsr", x, p["k_rope"]["kernel"])[:, :, None], pos, inv_freq)
  group = np.arange(n) // (n // kv_heads)
  k = np.concatenate([kv[:, :, group, :h - r], np.repeat(k_rope, n, axis=2)], -1)
  o = _attend(q, k, kv[:, :, group], h ** -0.5)
  expected = np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])
  # Projections over D, scores over H, sum over T keys, output over N·H: 2D + H + T.
  assert_f32_close(out, expected, terms=2 * D + h + T)


@pytest.mark.parametrize("latent_heads", [2, 4])
def test_gla_equals_per_head_keys_and_values_from_each_groups_latent(latent_heads):
  cfg = AttentionConfig(kind="gla", num_heads=4, gla_latent_heads=latent_heads,
                        kv_lora_rank=6, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=5)
  x, pos, p, out = _layer(cfg)
  g, c, n, nope, r = latent_heads, 6, 4, 8, 4
  inv_freq = inv_frequencies(r, cfg)
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"])
  q = np.concatenate([q[..., :nope], _rope(q[..., nope:], pos, inv_freq)], -1)
  latent = np.einsum("bsd,dl->bsl", x, p["kv_down"]["kernel"]).reshape(B, T, g, c)
  latent = latent / np.sqrt((latent ** 2).mean(-1, keepdims=True) + 1e-6)  # RMSNorm per head.
  latent = latent * p["kv_norm"]["scale"].reshape(g, c)
  mine = latent[:, :, np.arange(n) // (n // g)]  # [B, S, N, d_c]: each head's own latent.
  k_nope = np.einsum("bsnc,cnh->bsnh", mine, p["k_up"])
  v = np.einsum("bsnc,cnh->bsnh", mine, p["v_up"])
  k_rope = _rope(np.einsum("bsd,dr->bsr", x, p["k_rope"]["kernel"])[:, :, None], pos, inv_freq)
  k = np.concatenate([k_nope, np.repeat(k_rope, n, axis=2)], -1)
  o = _attend(q, k, v, (nope + r) ** -0.5)
  expected = np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])
  # Projections over D, the norm over d_c, up-projections over d_c, scores over d_nope + d_R,
  # sum over T keys, output over N·d_v.
  assert_f32_close(out, expected, terms=2 * D + 2 * c + nope + r + T + n * 5)


@pytest.mark.parametrize("ranks", [(6, 2, 2), (1, 3, 1)])
def test_tpa_equals_queries_keys_values_materialised_from_factors(ranks):
  rq, rk, rv = ranks
  cfg = AttentionConfig(kind="tpa", num_heads=4, head_dim=6, tpa_q_rank=rq, tpa_k_rank=rk,
                        tpa_v_rank=rv)
  x, pos, p, out = _layer(cfg)
  inv_freq = inv_frequencies(6, cfg)

  def factors(name, rotate):
    a = np.einsum("btd,drn->btrn", x, p[f"{name}_head"]["kernel"])
    b = np.einsum("btd,drh->btrh", x, p[f"{name}_feature"]["kernel"])
    if rotate:  # RoPE of each rank's feature factor (_rope rotates [B, T, heads, H]).
      b = _rope(b, pos, inv_freq)
    return np.einsum("btrn,btrh->btnh", a, b) / a.shape[2]  # the mean of R outer products.

  o = _attend(factors("q", True), factors("k", True), factors("v", False), 6 ** -0.5)
  expected = np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])
  # Factor projections over D, products over R (<= 6), scores over H, sum over T, out over N·H.
  assert_f32_close(out, expected, terms=2 * D + 6 + 6 + T + 24)


def test_tpa_decode_step_never_forms_keys_or_values():
  """A one-token step over a 37-slot cache: no intermediate holds S x N x H numbers (N = 4,
  H = 6, S = 37 are distinct sizes), while a full forward pass of 37 tokens does."""
  cfg = tiny_lm_config("tpa", head_dim=6)
  model = build_model(cfg)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  cache = init_cache(model, 1, 37)
  step = jax.make_jaxpr(lambda p, c, tok: model.apply({"params": p, "cache": c}, tok,
                                                      decode=True, mutable=["cache"]))(
      params, cache, jnp.zeros((1, 1), jnp.int32))

  def expanded(shape):
    return 37 in shape and 4 in shape and 6 in shape

  assert not any(expanded(s) for s in jaxpr_shapes(step.jaxpr))
  full = jax.make_jaxpr(lambda p, tok: model.apply({"params": p}, tok))(
      params, jnp.zeros((1, 37), jnp.int32))
  assert any(expanded(s) for s in jaxpr_shapes(full.jaxpr))  # the check can see an expansion.


def test_gla_with_one_latent_head_is_mla():
  """The same parameters (GLA's G·d_c latent with G = 1 is MLA's d_c) give the same logits."""
  mla = tiny_lm_config("mla", kv_lora_rank=12)
  gla = tiny_lm_config("gla", kv_lora_rank=12, gla_latent_heads=1)
  tokens_BT = jax.random.randint(jax.random.key(3), (2, 10), 0, mla.vocab_size)
  params = build_model(mla).init(jax.random.key(0), tokens_BT)["params"]
  assert (jax.tree.map(jnp.shape, build_model(gla).init(jax.random.key(0), tokens_BT)["params"])
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_array_equal(build_model(gla).apply({"params": params}, tokens_BT),
                                build_model(mla).apply({"params": params}, tokens_BT))


def test_gla_paper_sized_cache_per_token():
  """GLA-2 at the size of the paper's largest model (1.47B; its public code gives head dim 128,
  two latent heads of 2·128 and d_R = 64; 24 layers of width 2048 assumed), with
  jax.eval_shape only: 24·(2·256 + 64) = 13,824 cached elements per token."""
  cfg = tiny_lm_config("gla", num_heads=16, gla_latent_heads=2, kv_lora_rank=256,
                       qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
  cfg.update(vocab_size=50_304, d_model=2048, num_layers=24, mlp_dim=8192)
  b, t = 2, 16
  shapes = jax.eval_shape(lambda: init_cache(build_model(cfg), b, t))
  assert kv_cache_bytes(shapes) // (b * t * 4) == 13_824
  assert kv_cache_formula_bytes(cfg, t, b) == 13_824 * b * t * 4


def _numpy_lm(p, tokens, cfg, share_every):
  """A pre-norm mha LM in numpy (RMSNorm, RoPE, causal attention, tanh-GELU MLP, tied head)
  in which layer i attends to the keys and values of layer i - i % share_every (CLA)."""
  def norm(x, scale):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale

  inv_freq = inv_frequencies(cfg.attention.head_dim, cfg.attention)
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).astype(np.float64)
  x = p["embed"]["embedding"][tokens]
  for i in range(cfg.num_layers):
    b = p[f"block_{i}"]
    h = norm(x, b["attn_norm"]["scale"])
    q = _rope(np.einsum("btd,dnh->btnh", h, b["attn"]["query"]["kernel"]), pos, inv_freq)
    if i % share_every == 0:
      k = _rope(np.einsum("btd,dnh->btnh", h, b["attn"]["key"]["kernel"]), pos, inv_freq)
      v = np.einsum("btd,dnh->btnh", h, b["attn"]["value"]["kernel"])
    o = _attend(q, k, v, cfg.attention.head_dim ** -0.5)
    x = x + np.einsum("btnh,nhd->btd", o, b["attn"]["out"]["kernel"])
    u = norm(x, b["mlp_norm"]["scale"]) @ b["mlp"]["up"]["kernel"]
    gelu = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    x = x + gelu @ b["mlp"]["down"]["kernel"]
  return norm(x, p["final_norm"]["scale"]) @ p["embed"]["embedding"].T


@pytest.mark.parametrize("share_every", [1, 2])
def test_cla_lm_equals_a_numpy_lm_reusing_the_first_layers_keys_and_values(share_every):
  """CLA (arXiv 2405.12981) with s = 2 over 3 layers: layer 1 reads layer 0's keys and values and
  has no key/value weights; s = 1 is the plain model (the same reference, no sharing)."""
  cfg = tiny_lm_config("mha")
  cfg.update(num_layers=3, kv_share_every=share_every)
  model = build_model(cfg)
  tokens = jax.random.randint(jax.random.key(5), (B, T), 0, cfg.vocab_size)
  params = model.init(jax.random.key(0), tokens)["params"]
  assert ("key" in params["block_1"]["attn"]) == (share_every == 1)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  expected = _numpy_lm(p, np.asarray(tokens), cfg, share_every)
  # Per layer: 2 norms, projections over D, scores over H, sum over T, out over N·H, MLP over D
  # and F; then the final norm and the head over D.
  terms = cfg.num_layers * (6 * D + cfg.mlp_dim + 2 * T) + 2 * D
  assert_f32_close(model.apply({"params": params}, tokens), expected, terms=terms)
