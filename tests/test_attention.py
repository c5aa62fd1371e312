"""Attention modules: causality by gradient, the core against a plain reference, bad configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention.attention import AttentionConfig, make_attention
from latent_attention.attention import core
from latent_attention.attention.core import cached_attention, dot_product_attention
from latent_attention.attention.rope import apply_rope, inv_frequencies, lowrank_key_logits
from latent_attention.config import from_config
from latent_attention.models import build_model

from conftest import F32_EPS, assert_f32_close, tiny_lm_config, variant_id


def _attention(cfg_section, d_model=32):
  cfg = from_config(AttentionConfig, cfg_section, "model.attention")
  return make_attention(cfg, d_model, jnp.float32)


# Causality of the whole LM also follows from decoding = the full forward for every kind
# (tests/test_lm_decode.py: a decode step sees no later token). Here, by gradient, the kinds
# whose forward masks in its own way: grouped heads, latents (with a query projection), factors
# and the sequence-pooled head gate (its pooled score must not see later positions).
@pytest.mark.parametrize("variant", [
    ("gqa", {"num_kv_heads": 2}), ("mla", {"mla_decode_mode": "absorbed", "q_lora_rank": 24}),
    ("tpa", {}), ("head_gated", {"head_gated_top_k": 2})], ids=variant_id)
def test_causal_by_gradient(variant):
  attn = _attention(tiny_lm_config(*variant[:1], **variant[1]).attention)
  x_BTD = jax.random.normal(jax.random.key(0), (1, 7, 32))
  pos_BT = jnp.arange(7)[None]
  params = jax.jit(attn.init)(jax.random.key(1), x_BTD, pos_BT=pos_BT)  # one compile.

  def out_T(x_BTD):  # each position's output, summed over features.
    return attn.apply(params, x_BTD, pos_BT=pos_BT)[0].sum(-1)

  jac_TBTD = jax.jit(jax.jacrev(out_T))(x_BTD)  # d out[t] / d x: row t is grad of out[t].
  for t in range(7):
    assert float(jnp.abs(jac_TBTD[t, 0, t + 1:]).max(initial=0)) == 0.0
    assert float(jnp.abs(jac_TBTD[t, 0, : t + 1]).min()) > 0.0


def _reference_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale):
  """Per-head loops with K/V repeated: an independent plain implementation."""
  n, k = q_BTNH.shape[2], k_BSKH.shape[2]
  out = []
  for i in range(n):
    j = i // (n // k)
    s_BTS = np.einsum("bth,bsh->bts", q_BTNH[:, :, i], k_BSKH[:, :, j]) * scale
    s_BTS = np.where(mask_BTS, s_BTS, -np.inf)
    p_BTS = np.exp(s_BTS - s_BTS.max(-1, keepdims=True))
    p_BTS /= p_BTS.sum(-1, keepdims=True)
    out.append(np.einsum("bts,bsh->bth", p_BTS, v_BSKH[:, :, j]))
  return np.stack(out, axis=2)


@pytest.mark.parametrize("implementation", ["xla", "einsum", "auto"])
@pytest.mark.parametrize("num_kv,v_dim", [(4, 8), (2, 8), (1, 8), (1, 5)])
def test_core_matches_reference(implementation, num_kv, v_dim):
  if implementation == "xla" and v_dim != 8:
    pytest.skip("jax.nn.dot_product_attention needs the value dim to equal the qk dim")
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, 5, 4, 8))
  k = jax.random.normal(keys[1], (2, 6, num_kv, 8))
  v = jax.random.normal(keys[2], (2, 6, num_kv, v_dim))
  mask = jax.random.bernoulli(keys[3], 0.7, (2, 5, 6)).at[:, :, 0].set(True)
  for fn in (dot_product_attention, jax.jit(dot_product_attention,
                                            static_argnames=("implementation", "scale"))):
    out = fn(q, k, v, mask_BTS=mask, scale=0.3, implementation=implementation)
    ref = _reference_attention(*map(np.asarray, (q, k, v, mask)), 0.3)
    # q.k over H=8 (exp scales its rounding by the logits, |0.3 q.k| <~ 4: 32), softmax over
    # S=6 and the weighted sum over S=6: 44, rounded up to 64.
    assert_f32_close(out, ref, terms=64)


@pytest.mark.parametrize("layout", ["heads_major_k2", "shared_head_3d", "two_parts_mixed_k",
                                    "query_chunks"])
def test_cached_attention_matches_reference(layout, monkeypatch):
  """The decode core against per-head loops over the [B, S, K, H] cache it replaces."""
  b, t, n, s = 2, 5, 4, 9
  keys = jax.random.split(jax.random.key(1), 6)
  q = jax.random.normal(keys[0], (b, t, n, 8))
  mask = jax.random.bernoulli(keys[3], 0.7, (b, t, s)).at[:, :, 0].set(True)
  heads_major = lambda x_BSKH: jnp.swapaxes(x_BSKH, 1, 2)
  if layout == "two_parts_mixed_k":  # A per-head nope part and one RoPE part shared by all.
    k_nope, k_rope = (jax.random.normal(keys[1], (b, s, n, 6)),
                      jax.random.normal(keys[2], (b, s, 1, 2)))
    v = jax.random.normal(keys[4], (b, s, n, 3))
    attend = jax.jit(cached_attention, static_argnames="scale")  # one compile, not many ops.
    out = attend((q[..., :6], q[..., 6:]), (heads_major(k_nope), k_rope[:, :, 0]),
                 heads_major(v), mask_BTS=mask, scale=0.3)
    k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rope, (b, s, n, 2))], -1)
  else:
    num_kv = {"heads_major_k2": 2, "shared_head_3d": 1, "query_chunks": 2}[layout]
    k, v = (jax.random.normal(keys[i], (b, s, num_kv, 8)) for i in (1, 2))
    cache_k, cache_v = ((x[:, :, 0] if num_kv == 1 else heads_major(x)) for x in (k, v))
    attend = jax.jit(cached_attention, static_argnames="scale")
    if layout == "query_chunks":  # T=5 queries in blocks of 2: three blocks, one padded.
      monkeypatch.setattr(core, "QUERY_CHUNK", 2)
      attend = cached_attention  # Not jitted: a cached trace would not see the patched size.
      assert "scan[" in str(jax.make_jaxpr(lambda q, k, v: cached_attention(
          (q,), (k,), v, mask_BTS=mask, scale=0.3))(q, cache_k, cache_v))  # lax.map's loop.
    out = attend((q,), (cache_k,), cache_v, mask_BTS=mask, scale=0.3)
  ref = _reference_attention(*map(np.asarray, (q, k, v, mask)), 0.3)
  # As test_core_matches_reference: q.k over H=8, softmax and sum over S=9: 2 (8 + 9) < 64.
  assert_f32_close(out, ref, terms=64)


def test_lowrank_key_logits_equal_rotating_expanded_keys():
  b, t, n, s, r, h = 2, 3, 4, 11, 3, 8
  keys = jax.random.split(jax.random.key(2), 3)
  freqs = inv_frequencies(h, AttentionConfig())
  q_BTNH = apply_rope(jax.random.normal(keys[0], (b, t, n, h)), jnp.arange(t)[None] + 4, freqs)
  c_BNSC = jax.random.normal(keys[1], (b, n, s, r))
  w_CH = jax.random.normal(keys[2], (r, h))
  k_BSNH = apply_rope(jnp.einsum("BNSC,CH->BSNH", c_BNSC, w_CH), jnp.arange(s)[None], freqs)
  expected = np.einsum("btnh,bsnh->bnts", np.asarray(q_BTNH), np.asarray(k_BSNH))
  # Angles up to s·1 rad (rounded by eps·s in float32 sin/cos, 10 here), then sums over C=3
  # and H=8 of products of O(|q| |c| |w|) terms: ~ 10 + 3 + 8, rounded up. Jitted: one compile
  # (the frequencies a numpy constant, as in the model).
  logits = jax.jit(lambda q, c, w: lowrank_key_logits(q, c, w, freqs))(q_BTNH, c_BNSC, w_CH)
  assert_f32_close(logits, expected, terms=32)


def test_core_causal_flag_equals_explicit_mask():
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 6, 2, 4)) for i in range(3))
  tri = jnp.tril(jnp.ones((1, 6, 6), bool))
  for impl in ("xla", "einsum"):
    # q.k over H=4, softmax over S=6, weighted sum over S=6, both sides: 2 * (H + S) = 20.
    assert_f32_close(dot_product_attention(q, k, v, is_causal=True, implementation=impl),
                     dot_product_attention(q, k, v, mask_BTS=tri, implementation=impl), terms=20)


@pytest.mark.parametrize("scaling", [{}, {"rope_scaling": "yarn", "rope_factor": 4.0,
                                          "rope_original_len": 16}], ids=["plain", "yarn"])
def test_rope_is_relative(scaling):
  q, k = (jax.random.normal(jax.random.key(i), (1, 1, 1, 8)) for i in range(2))
  freqs = inv_frequencies(8, AttentionConfig(**scaling))
  def score(pq, pk):
    return float(jnp.sum(apply_rope(q, jnp.array([[pq]]), freqs)
                         * apply_rope(k, jnp.array([[pk]]), freqs)))
  # The angle pos * freq (pos <= 14) rounds by eps * 14, which sin/cos pass on to both rotated
  # vectors (2), then a dot of 8 values: 2 * 14 * 8 terms on values up to ||q|| * ||k||.
  tol = 2 * 14 * 8 * F32_EPS * float(jnp.linalg.norm(q) * jnp.linalg.norm(k))
  assert score(7, 3) == pytest.approx(score(14, 10), rel=0, abs=tol)
  assert abs(score(7, 3) - score(7, 4)) > 100 * tol


@pytest.mark.parametrize("overrides,message", [
    ({"kind": "flash"}, "model.attention.kind='flash' is invalid: choose one of mha, gqa"),
    ({"kind": "gqa", "num_heads": 6, "num_kv_heads": 4},
     "model.attention.num_kv_heads=4 is invalid: must divide num_heads=6"),
    ({"head_dim": 7}, "model.attention.head_dim=7 is invalid: RoPE needs an even head dim"),
    ({"kind": "mla", "qk_rope_head_dim": 3}, "model.attention.qk_rope_head_dim=3 is invalid"),
    ({"kind": "mla", "kv_lora_rank": 64},
     "model.attention.kv_lora_rank=64 is invalid: must be <= model.d_model=32"),
    ({"kind": "mla", "mla_decode_mode": "fast"},
     "model.attention.mla_decode_mode='fast' is invalid: choose one of naive, latent, absorbed"),
    ({"kind": "mla", "mla_rope_heads": 3},
     "model.attention.mla_rope_heads=3 is invalid: must divide num_heads=4"),
    ({"kind": "mla", "mla_rope_heads": 2, "mla_rope_pairs": "0,1;2,4"},
     "model.attention.mla_rope_pairs='0,1;2,4' is invalid: '|'-separated layers of 2 "
     "';'-separated groups (mla_rope_heads) of 2 distinct ','-separated integers in "
     "[0, head_dim/2=4)"),
    ({"kind": "mla", "mla_rope_pairs": "0,1|1,2|2,3"},
     "model.attention.mla_rope_pairs has 3 '|'-separated layers: give one group for all layers "
     "or one per layer (num_layers=2)"),
    ({"kind": "gla", "gla_latent_heads": 3},
     "model.attention.gla_latent_heads=3 is invalid: must divide num_heads=4"),
    ({"kind": "gla", "kv_lora_rank": 24},
     "model.attention.kv_lora_rank=24 is invalid: must be <= model.d_model=32 / "
     "gla_latent_heads=2"),
    ({"kind": "gta", "qk_rope_head_dim": 8},
     "model.attention.qk_rope_head_dim=8 is invalid: gta needs an even RoPE width below "
     "head_dim=8"),
    ({"num_heads": 0}, "model.attention.num_heads=0 is invalid: must be a positive integer"),
    ({"implementation": "flash"}, "model.attention.implementation='flash' is invalid"),
])
def test_bad_attention_config_errors(overrides, message):
  cfg = tiny_lm_config()
  cfg.attention.update(overrides)
  with pytest.raises(ValueError) as err:
    model = build_model(cfg)
    model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  assert message in str(err.value)


def test_bad_model_config_errors():
  cfg = tiny_lm_config()
  cfg.dtype = "float8"
  with pytest.raises(ValueError, match="model.dtype='float8' is invalid: choose one of"):
    build_model(cfg)
  cfg = tiny_lm_config().to_dict()
  cfg["attention"]["num_kv_head"] = 2
  with pytest.raises(ValueError, match="model.attention.num_kv_head is not a field"):
    build_model(cfg)
  cfg = tiny_lm_config("lowrank_gated")
  cfg.kv_share_every = 2
  with pytest.raises(ValueError, match="model.kv_share_every=2 is invalid with attention.kind="
                                       "'lowrank_gated': layers share keys and values for mha"):
    build_model(cfg)
  cfg = tiny_lm_config("mla", mla_decode_mode="naive")
  cfg.kv_share_every = 2
  with pytest.raises(ValueError, match="kv_share_every=2 is invalid with attention.mla_decode_"
                                       "mode='naive'"):
    build_model(cfg)
  cfg = tiny_lm_config("mla", mla_rope_pairs="0,1|1,2")
  cfg.kv_share_every = 2
  with pytest.raises(ValueError, match="kv_share_every=2 is invalid with per-layer model."
                                       "attention.mla_rope_pairs: a layer reusing"):
    build_model(cfg)
  cfg = tiny_lm_config()
  cfg.name = "rnn"
  with pytest.raises(ValueError, match="model.name='rnn' is invalid: choose one of"):
    build_model(cfg)
