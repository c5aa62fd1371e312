"""YaRN scaling of RoPE: DeepSeek-V3's frequencies and softmax scale, identity at factor 1,
decoding with scaling equals the full forward pass, one-line config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention.attention import AttentionConfig
from latent_attention.attention.rope import inv_frequencies, softmax_scale
from latent_attention.models import build_model
from latent_attention.models.decoding import decode_chunks

from conftest import F32_EPS, assert_f32_close, lm_terms, tiny_lm_config

DEEPSEEK_V3 = dict(rope_scaling="yarn", rope_factor=40.0, rope_beta_fast=32.0,
                   rope_beta_slow=1.0, rope_original_len=4096, rope_mscale=1.0,
                   rope_theta=10_000.0)


def test_yarn_frequencies_and_scale_at_deepseek_v3_settings():
  freqs = inv_frequencies(64, AttentionConfig(**DEEPSEEK_V3))
  # Pair i turns 4096 / (2π · 10000^(i/32)) times over the original context: 32 turns at
  # i = 32 · ln(4096 / 64π) / ln(10000) = 10.47 (floor: 10), one turn at
  # i = 32 · ln(4096 / 2π) / ln(10000) = 22.51 (ceil: 23). Pairs up to 10 keep their frequency,
  # from 23 on it is divided by 40, and between the two the weight of the divided one grows
  # linearly from 0 at pair 10 to 1 at pair 23.
  plain = [10_000.0 ** (-i / 32) for i in range(32)]
  expected = []
  for i, f in enumerate(plain):
    w = min(max((i - 10) / 13, 0.0), 1.0)
    expected.append(f * (1 - w) + f / 40 * w)
  # Float32 frequencies of float64 arithmetic: one rounding, relative.
  np.testing.assert_allclose(freqs, expected, rtol=2 * np.finfo(np.float32).eps, atol=0)
  assert freqs[10] == np.float32(plain[10]) and freqs[23] == np.float32(plain[23] / 40)
  # Softmax scale: 1/sqrt(qk dim 192 = 128 nope + 64 rope) times (1 + 0.1 ln 40)^2 = 1.87385.
  mla = AttentionConfig(kind="mla", qk_nope_head_dim=128, qk_rope_head_dim=64, **DEEPSEEK_V3)
  assert softmax_scale(192, mla) == pytest.approx(1.8738542070926265 / math.sqrt(192),
                                                  rel=1e-12)
  assert softmax_scale(192, AttentionConfig()) == 192 ** -0.5


@pytest.mark.parametrize("kind,extra", [("mha", {}), ("mla", {"mla_decode_mode": "absorbed"}),
                                        ("lowrank_gated", {})])
def test_factor_one_is_plain_rope_and_scaled_decoding_equals_forward(kind, extra):
  plain = tiny_lm_config(kind, **extra)
  yarn1 = tiny_lm_config(kind, rope_scaling="yarn", rope_factor=1.0, rope_original_len=4,
                         **extra)
  yarn = tiny_lm_config(kind, rope_scaling="yarn", rope_factor=4.0, rope_original_len=4,
                        rope_mscale=0.7, **extra)
  tokens_BT = jax.random.randint(jax.random.key(1), (2, 10), 0, plain.vocab_size)
  params = jax.jit(build_model(plain).init)(jax.random.key(0), tokens_BT)["params"]
  logits = {name: build_model(cfg).apply({"params": params}, tokens_BT)
            for name, cfg in (("plain", plain), ("yarn1", yarn1), ("yarn", yarn))}
  terms = lm_terms(plain, t=10)  # the whole LM over t=10 keys, relative to max |logits|.
  assert_f32_close(logits["yarn1"], logits["plain"], terms=terms)
  change = float(jnp.abs(logits["yarn"] - logits["plain"]).max())
  assert change > 100 * terms * F32_EPS * float(jnp.abs(logits["plain"]).max())  # not rounding.
  model = build_model(yarn)
  decoded, _ = decode_chunks(model, params, tokens_BT, (4, 1, 3, 1, 1),
                             jax.jit(model.apply, static_argnames=("decode", "mutable")))
  assert_f32_close(decoded, logits["yarn"], terms=terms)


@pytest.mark.parametrize("overrides,message", [
    ({"rope_scaling": "ntk"}, "model.attention.rope_scaling='ntk' is invalid: choose one of "
                              "none, yarn"),
    ({"rope_scaling": "yarn"}, "model.attention.rope_original_len=0 is invalid: rope_scaling="
                               "yarn needs the training context length"),
    ({"rope_scaling": "yarn", "rope_original_len": 64, "rope_factor": 0.5},
     "model.attention.rope_factor=0.5 is invalid: must be >= 1"),
    ({"rope_scaling": "yarn", "rope_original_len": 64, "rope_beta_slow": 40.0},
     "model.attention.rope_beta_slow=40.0 is invalid: must be > 0 and < rope_beta_fast=32.0"),
])
def test_bad_scaling_is_a_one_line_error(overrides, message):
  with pytest.raises(ValueError) as e:
    AttentionConfig(**overrides)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
