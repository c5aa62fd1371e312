"""Mechanisms against independent float64 numpy references written from the papers' equations
(tests/numpy_reference.py), with the modules' parameters loaded by name, and cache sizes derived
by hand from the papers' formulas.

Paths that had no independent reference before: partial-RoPE MHA/GQA -> MLA conversion with
pairs dropped (MHA2MLA, arXiv 2502.14837); CLA (arXiv 2405.12981) for gqa, mqa, gta, tpa, mla
and gla, forward and decoding (only an mha forward had one); MLA with query compression
(DeepSeek-V2 section 2.1) in every decode mode; the cache bytes of gta, tpa and lowrank_gated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention import kv_cache_bytes, kv_cache_formula_bytes
from latent_attention.attention import AttentionConfig, make_attention
from latent_attention.models import build_model, mla_conversion, parse_config
from latent_attention.models.decoding import decode_chunks, init_cache

import numpy_reference as ref
from conftest import assert_f32_close, lm_terms, tiny_lm_config, variant_id

B, T, D = 2, 9, 32


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _jit_apply(model):
  """model.apply jitted: one compile instead of hundreds of eager ops (none of these tests is
  about the eager path)."""
  return jax.jit(model.apply, static_argnames=("decode", "mutable"))


# -- Partial RoPE: MHA2MLA's conversion at full latent rank with frequency pairs dropped. --

def _partial_rope_source(pairs_by_layer, kv_heads):
  """The source MHA/GQA attention with RoPE on the kept pairs only (MHA2MLA section 3.2):
  per kv head k, pairs (j, j + H/2) with j in its kept list rotate by pos·θ^(-2j/H) in the
  keys and in the queries of its group; the other pairs stay unrotated. Source weights only."""
  def attention(layer, p, h, pos):
    q = np.einsum("btd,dnh->btnh", h, p["query"]["kernel"])
    k = np.einsum("btd,dkh->btkh", h, p["key"]["kernel"])
    v = np.einsum("btd,dkh->btkh", h, p["value"]["kernel"])
    n, hd = q.shape[2], q.shape[3]
    g = n // kv_heads
    for kv, kept in enumerate(pairs_by_layer[layer]):
      k[:, :, kv:kv + 1] = ref.rotate_pairs(k[:, :, kv:kv + 1], pos, kept, hd)
      q[:, :, kv * g:(kv + 1) * g] = ref.rotate_pairs(q[:, :, kv * g:(kv + 1) * g], pos, kept, hd)
    o = ref.attend(q, ref.per_query_head(k, n), ref.per_query_head(v, n), hd ** -0.5)
    return np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])
  return attention


@pytest.mark.parametrize("kind,kv_heads", [("mha", 4), ("gqa", 2)])
def test_partial_rope_conversion_at_full_rank_is_the_source_with_dropped_pairs_unrotated(
    kind, kv_heads):
  """rope_dims = H/2: each kv head keeps 2 of its 4 pairs (chosen per head and layer by the
  2-norm criterion). At full latent rank C = min(D, K·(2H - d_R)) the converted MLA computes
  the source with the dropped pairs unrotated, forward and decoding (absorbed); the source with
  every pair rotated is far from it, so the dropped pairs are what the reference checks."""
  cfg = tiny_lm_config(kind, num_kv_heads=kv_heads)
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  batches = [np.asarray(jax.random.randint(jax.random.key(i), (2, 16), 0, 31)) for i in (1, 2)]
  h, rope_dims = 8, 4
  model_cfg, new_params, report = mla_conversion.convert(
      params, model, cfg.to_dict(), batches, kv_lora_rank=min(D, kv_heads * (2 * h - rope_dims)),
      rope_dims=rope_dims)
  pairs = [layer["rope_pairs"] for layer in report]
  assert all(len(p) == kv_heads and all(len(kept) == 2 for kept in p) for p in pairs)
  tokens_BT = jax.random.randint(jax.random.key(7), (B, 12), 0, cfg.vocab_size)
  expected = ref.lm_logits(_f64(params), np.asarray(tokens_BT), kind=kind,
                           num_layers=cfg.num_layers,
                           attention=_partial_rope_source(pairs, kv_heads))
  converted = build_model(parse_config(model_cfg))
  # The whole LM (conftest.lm_terms) plus the latent's D-long contraction per layer.
  terms = lm_terms(cfg, 12) + cfg.num_layers * D
  assert_f32_close(_jit_apply(converted)({"params": new_params}, tokens_BT), expected,
                   terms=terms)
  decoded, _ = decode_chunks(converted, new_params, tokens_BT, (5, 1, 6), _jit_apply(converted))
  assert_f32_close(decoded, expected, terms=terms)
  every_pair = _jit_apply(model)({"params": params}, tokens_BT)
  tol = terms * float(np.finfo(np.float32).eps) * float(np.abs(expected).max())
  assert float(np.abs(every_pair - expected).max()) > 100 * tol


# -- CLA for every kind that shares keys and values, forward and decoding. --

CLA_VARIANTS = [("mha", {}), ("gqa", {"num_kv_heads": 2}), ("mqa", {}),
                ("gta", {"num_kv_heads": 2}), ("tpa", {"head_dim": 6}),
                ("mla", {"mla_decode_mode": "latent"}), ("mla", {"mla_decode_mode": "absorbed"}),
                ("gla", {"gla_latent_heads": 2, "kv_lora_rank": 8,
                         "mla_decode_mode": "absorbed"})]
# What only a caching layer owns (the sharing layer has no such weights).
_KV_PARAMS = {"mha": "key", "gqa": "key", "mqa": "key", "gta": "kv", "tpa": "k_feature",
              "mla": "kv_down", "gla": "kv_down"}


@pytest.mark.parametrize("variant", CLA_VARIANTS, ids=variant_id)
def test_cla_equals_a_numpy_lm_whose_second_layer_reuses_the_first_layers_state(variant):
  """kv_share_every = 2 over 3 layers: layer 1 attends with its own query (MLA: and its own
  W_UK, W_UV) to what layer 0 computed from layer 0's input; layer 2 computes its own. The
  forward pass and decoding (prefill, a step, a 3-token chunk) both equal the numpy LM."""
  kind, extra = variant
  cfg = tiny_lm_config(kind, **extra)
  cfg.update(num_layers=3, kv_share_every=2)
  model = build_model(cfg)
  tokens_BT = jax.random.randint(jax.random.key(5), (B, T), 0, cfg.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), tokens_BT)["params"]
  owned = [_KV_PARAMS[kind] in params[f"block_{i}"]["attn"] for i in range(3)]
  assert owned == [True, False, True]
  latent = {"nope": cfg.attention.qk_nope_head_dim,
            "latent_heads": cfg.attention.gla_latent_heads if kind == "gla" else 1}
  expected = ref.lm_logits(_f64(params), np.asarray(tokens_BT), kind=kind, num_layers=3,
                           share_every=2, cfg=latent)
  terms = lm_terms(cfg, T)  # conftest.lm_terms: q.k and the latents counted as D-long sums.
  apply = _jit_apply(model)
  assert_f32_close(apply({"params": params}, tokens_BT), expected, terms=terms)
  decoded, _ = decode_chunks(model, params, tokens_BT, (5, 1, 3), apply)
  assert_f32_close(decoded, expected, terms=terms)


# -- MLA with query compression (DeepSeek-V2 section 2.1), every decode mode. --

@pytest.mark.parametrize("mode", ["naive", "latent", "absorbed"])
def test_mla_with_query_compression_equals_deepseek_v2_equations(mode):
  """c_Q = RMSNorm(W_DQ h), q_C = W_UQ c_Q, q_R = RoPE(W_QR c_Q), c_KV = RMSNorm(W_DKV h),
  k_R = RoPE(W_KR h), k_C = W_UK c_KV, v = W_UV c_KV: one layer's forward pass and its decoding
  (prefill 4, a step, a 4-token chunk) against numpy, the module's parameters read by name."""
  nope, r, c, cq, dv, n = 8, 4, 12, 24, 6, 4
  cfg = AttentionConfig(kind="mla", num_heads=n, q_lora_rank=cq, kv_lora_rank=c,
                        qk_nope_head_dim=nope, qk_rope_head_dim=r, v_head_dim=dv,
                        mla_decode_mode=mode)
  attn = make_attention(cfg, D, jnp.float32)
  x_BTD = jax.random.normal(jax.random.key(0), (B, T, D))
  pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  variables = jax.jit(functools.partial(attn.init, decode=True))(jax.random.key(1), x_BTD,
                                                                 pos_BT=pos_BT)
  p = _f64(variables["params"])
  assert {"q_down", "q_norm", "q_up"} <= set(p) and "query" not in p
  x, pos = np.asarray(x_BTD, np.float64), np.asarray(pos_BT, np.float64)
  expected = ref.mla_attention(p, x, pos, ref.mla_kv(p, x, pos, {}), {"nope": nope})
  # Along the longest path: q_down over D, its norm and q_up over d_c', kv_down over D, its norm
  # and the up-projections over d_c, scores over d_nope + d_R, softmax and sum over T, output
  # over N·d_v.
  terms = 2 * D + 2 * cq + 2 * c + nope + r + 2 * T + n * dv
  assert_f32_close(jax.jit(attn.apply)({"params": variables["params"]}, x_BTD, pos_BT=pos_BT),
                   expected, terms=terms)
  step = jax.jit(functools.partial(attn.apply, decode=True, mutable=["cache"]))
  cache, start, outs = variables["cache"], 0, []
  for size in (4, 1, 4):
    y, mutated = step({"params": variables["params"], "cache": cache},
                      x_BTD[:, start:start + size], pos_BT=pos_BT[:, start:start + size])
    cache, start = mutated["cache"], start + size
    outs.append(y)
  assert_f32_close(jnp.concatenate(outs, axis=1), expected, terms=terms)


# -- Cache bytes derived by hand from each paper's formula. --

# (kind, attention overrides, layers, kv_share_every, elements per token per caching layer as
# the paper counts them, written out with the overrides' numbers).
HAND_CACHES = [
    # GTA (arXiv 2505.21487 section 3.1): per group one tied head of H, the values and the keys'
    # non-RoPE part; plus ONE RoPE key of d_R for all heads. K = 2, H = 8, d_R = 4.
    ("gta", {"num_kv_heads": 2, "qk_rope_head_dim": 4}, 2, 1, 2 * 8 + 4),
    # TPA (arXiv 2501.06425, "KV Caching and Memory Reduction"): per token the key factors
    # A_K [R_K, N], B_K [R_K, H] and the value factors A_V [R_V, N], B_V [R_V, H].
    # R_K = 3, R_V = 1, N = 4, H = 6.
    ("tpa", {"tpa_k_rank": 3, "tpa_v_rank": 1, "head_dim": 6}, 2, 1, 3 * 4 + 3 * 6 + 1 * 4 + 1 * 6),
    # lowrank_gated (seed 003, docs/design.md 3.4): the per-head rank-r key latent U_k x and
    # value latent U_v x, [N, r] each, before V_k and V_v. N = 4, r = 3.
    ("lowrank_gated", {"lowrank_rank": 3}, 2, 1, 4 * 3 + 4 * 3),
    # The same GTA and TPA with CLA over 3 layers, s = 2: layers 0 and 2 cache, layer 1 none.
    ("gta", {"num_kv_heads": 2, "qk_rope_head_dim": 4}, 3, 2, 2 * 8 + 4),
    ("tpa", {"tpa_k_rank": 3, "tpa_v_rank": 1, "head_dim": 6}, 3, 2, 3 * 4 + 3 * 6 + 1 * 4 + 1 * 6),
]


@pytest.mark.parametrize("kind,extra,layers,share,per_token", HAND_CACHES,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_cache_bytes_equal_the_papers_formula_derived_by_hand(kind, extra, layers, share,
                                                              per_token):
  """The cache a prefill of S tokens leaves (jax.eval_shape: shapes only), for B = 3 and B = 1
  (the one-sequence layout), holds caching layers · B · S · elements · 4 float32 bytes."""
  cfg = tiny_lm_config(kind, **extra)
  cfg.update(num_layers=layers, kv_share_every=share)
  model = build_model(cfg)
  caching_layers = {(2, 1): 2, (3, 2): 2}[(layers, share)]
  s = 7
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  for b in (3, 1):
    _, mutated = jax.eval_shape(
        functools.partial(model.apply, decode=True, mutable=["cache"]),
        {"params": params, "cache": init_cache(model, b, s)}, jnp.zeros((b, s), jnp.int32))
    by_hand = caching_layers * b * s * per_token * 4
    assert kv_cache_bytes(mutated["cache"]) == by_hand
    assert kv_cache_formula_bytes(cfg, s, b) == by_hand
