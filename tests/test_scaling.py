"""The input-length scaling benchmark (bench/scaling.py): its fit and its encoders."""

import jax
import jax.numpy as jnp
import numpy as np

from latent_attention import timing
from latent_attention.attention import AttentionConfig
from latent_attention.bench import scaling


def test_fit_exponent_recovers_a_power_law():
  lengths = [64, 128, 256, 512, 1024]
  seconds = [3e-6 * n ** 1.7 for n in lengths]
  assert abs(scaling.fit_exponent(lengths, seconds, 64) - 1.7) < 1e-9
  # Points below min_len and skipped points (None) are left out of the fit.
  seconds[0], seconds[1] = 1.0, None
  assert abs(scaling.fit_exponent(lengths, seconds, 256) - 1.7) < 1e-9
  assert np.isnan(scaling.fit_exponent(lengths, seconds, 1024))


def test_latent_encoder_output_is_its_latents_and_timings_are_positive():
  cfg = AttentionConfig(kind="mha", num_heads=2, num_kv_heads=2, head_dim=8)
  enc = scaling.encoders(cfg, 16, 4, jnp.float32)
  x = jnp.ones((2, 32, 16))
  params = enc["perceiver"].init(jax.random.key(0), x)
  assert enc["perceiver"].apply(params, x).shape == (2, 4, 16)  # M latents, not N inputs.
  params = enc["full"].init(jax.random.key(0), x)
  assert enc["full"].apply(params, x).shape == (2, 32, 16)
  fwd, bwd = scaling.time_encoder(enc["perceiver"], 32, batch=1, d_model=16, dtype=jnp.float32,
                                  repeats=2)
  assert fwd > 0 and bwd > 0


def test_time_calls_warms_up_then_times_each_call():
  calls = []
  times = timing.time_calls(lambda: calls.append(1) or jnp.zeros(()), repeats=3, warmup=2)
  assert len(calls) == 5 and len(times) == 3 and min(times) >= 0
