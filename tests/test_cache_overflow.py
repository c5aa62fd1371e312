"""The decode cache refuses to overflow (attention/cache.py, docs/design.md section 4).

`dynamic_update_slice` clamps its start, so before the check a chunk past the end overwrote the
last slots and gave wrong logits with no error. Now: a ValueError at trace time where the chunk
is longer than the cache, a ValueError at a concrete (eager) position, a checkify error under jit
(`decoding.checked_apply`); `generate` compiles to the same program as without the check.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from latent_attention.attention import cache as cache_lib
from latent_attention.config import default_section
from latent_attention.models import PerceiverARConfig, build_model
from latent_attention.models.decoding import checked_apply, generate, init_cache

from conftest import assert_f32_close, lm_terms, tiny_lm_config

S = 6  # cache length of every test.


def _perceiver_ar():
  """tests/test_perceiver_ar.py's tiny Perceiver AR (M = 4 latents), absorbed MLA, with one
  latent self-attention layer (not 2): its cross-attention's cache and one self-attention's."""
  cfg = default_section(PerceiverARConfig)
  cfg.update(vocab_size=23, d_model=32, num_latents=4, num_layers=1, mlp_dim=64)
  cfg.attention.update(kind="mla", num_heads=4, num_kv_heads=4, head_dim=8, kv_lora_rank=12,
                       qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                       mla_decode_mode="absorbed")
  return cfg


def _one_layer_lm(kind, **attention):
  """Each layer checks its own cache (attention/cache.py): one layer has the whole check at half
  the compile time (the Perceiver AR keeps two caches, its cross- and self-attention's)."""
  cfg = tiny_lm_config(kind, **attention)
  cfg.num_layers = 1
  return cfg


MODELS = {"mha_lm": lambda: _one_layer_lm("mha"),
          "mla_absorbed_lm": lambda: _one_layer_lm("mla", mla_decode_mode="absorbed"),
          "perceiver_ar": _perceiver_ar}


@functools.lru_cache
def _setup(name):
  cfg = MODELS[name]()
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  tokens_BT = jax.random.randint(jax.random.key(1), (2, S + 2), 0, cfg.vocab_size)
  return cfg, model, params, tokens_BT


def _decode_apply(model):
  return functools.partial(model.apply, decode=True, mutable=["cache"])


@pytest.mark.parametrize("name", MODELS)
def test_a_chunk_longer_than_the_cache_is_a_trace_time_error(name):
  """A prefill of S + 2 tokens into an S-slot cache: refused while tracing (eval_shape runs
  nothing), naming both lengths; before the check it traced and clamped."""
  _, model, params, tokens_BT = _setup(name)
  variables = {"params": params, "cache": init_cache(model, 2, S)}
  with pytest.raises(ValueError, match=rf"a decode chunk of {S + 2} tokens overflows the "
                                       rf"decode cache of {S} positions"):
    jax.eval_shape(_decode_apply(model), variables, tokens_BT)
  jax.eval_shape(_decode_apply(model), variables, tokens_BT[:, :S])  # a full prefill fits.


@pytest.mark.parametrize("name", MODELS)
def test_a_step_past_the_end_at_a_concrete_position_is_an_error(name):
  """Eager apply on a full cache (position S, as after an S-token prefill): the position is a
  concrete number, so the step is refused with a ValueError naming it."""
  _, model, params, tokens_BT = _setup(name)
  full = dict(init_cache(model, 2, S), index=jnp.int32(S))
  with pytest.raises(ValueError, match=rf"a decode chunk of 1 tokens at position {S} overflows "
                                       rf"the decode cache of {S} positions \({S} \+ 1 > {S}\)"):
    model.apply({"params": params, "cache": full}, tokens_BT[:, :1], decode=True,
                mutable=["cache"])


@pytest.mark.parametrize("name", MODELS)
def test_a_traced_overflow_is_a_checkify_error_and_steps_that_fit_are_unchanged(name):
  """Under jit the position is traced. checked_apply decodes what fits as plain jit does, and a
  step at position S, or a 3-token chunk from position S - 2, is a checkify error naming the
  position; before the check both ran and returned logits off by O(max |logits|)."""
  cfg, model, params, tokens_BT = _setup(name)
  checked, plain = checked_apply(model), jax.jit(_decode_apply(model))

  def run(apply, chunks):
    cache, start, outs = init_cache(model, 2, S), 0, []
    for size in chunks:
      logits, mutated = apply({"params": params, "cache": cache}, tokens_BT[:, start:start + size])
      cache, start = mutated["cache"], start + size
      outs.append(logits)
    return jnp.concatenate(outs, axis=1)

  layers = cfg.num_layers + (name == "perceiver_ar")  # its cross-attention is one more layer.
  assert_f32_close(run(checked, (4, 1, 1)), run(plain, (4, 1, 1)),
                   terms=lm_terms(cfg, S, layers=layers))
  with pytest.raises(checkify.JaxRuntimeError, match=rf"a decode chunk of 1 tokens at position "
                                                     rf"{S} overflows the decode cache of {S} "
                                                     rf"positions"):
    run(checked, (4, 1, 1, 1))
  with pytest.raises(checkify.JaxRuntimeError, match=rf"a decode chunk of 3 tokens at position "
                                                     rf"{S - 2} overflows"):
    run(checked, (4, 3))
  run(plain, (4, 1, 1, 1))  # Unchecked jit still compiles and runs (the check is dropped).


def test_an_overflow_inside_a_scanned_decode_loop_is_caught():
  """A generate-like `lax.scan` of single steps whose third step passes the end of the cache,
  under checkify: the loop's traced position is checked too."""
  _, model, params, tokens_BT = _setup("mha_lm")
  step = _decode_apply(model)

  def loop(params, cache, tok_B1, steps):
    def body(cache, _):
      logits, mutated = step({"params": params, "cache": cache}, tok_B1)
      return mutated["cache"], logits
    return jax.lax.scan(body, cache, length=steps)[1]

  _, mutated = jax.jit(step)({"params": params, "cache": init_cache(model, 2, S)},
                             tokens_BT[:, :S - 2])
  for steps, fails in ((2, False), (3, True)):
    err, _ = jax.jit(checkify.checkify(loop, errors=checkify.user_checks), static_argnums=3)(
        params, mutated["cache"], tokens_BT[:, :1], steps)
    assert (err.get() is not None) == fails, err.get()
    if fails:
      assert f"at position {S} overflows the decode cache of {S} positions" in err.get()


def _instructions(compiled_text):
  """The instructions of a compiled HLO module (opcode, shapes, operands' order, attributes),
  without metadata (source lines differ) and names (their numbering may differ)."""
  lines = [re.sub(r",? metadata=\{[^}]*\}", "", line).strip()
           for line in compiled_text.splitlines()]
  return [re.sub(r"%[^\s,(){}]+", "%", line) for line in lines
          if re.match(r"(ROOT )?%\S+ = ", line)]


@pytest.mark.parametrize("name", MODELS)
def test_generate_compiles_to_the_same_program_as_without_the_check(name, monkeypatch):
  """generate never overflows (it sizes its cache): the check costs it nothing. Its compiled
  program, instruction for instruction, equals the one with the check removed, and it samples
  the same tokens for a fixed seed (temperature 1)."""
  cfg, model, params, tokens_BT = _setup(name)
  prompt_BT = tokens_BT[:, :5]

  def compile_and_sample():
    args = (model, params, prompt_BT, jax.random.key(2))
    kwargs = dict(max_new_tokens=4, temperature=1.0)
    text = generate.lower(*args, **kwargs).compile().as_text()
    return _instructions(text), np.asarray(generate(*args, **kwargs))

  with_check, tokens = compile_and_sample()
  generate.clear_cache()
  monkeypatch.setattr(cache_lib, "check_fits", lambda *args: None)
  without_check, tokens_before = compile_and_sample()
  generate.clear_cache()  # Later tests trace generate with the check again.
  assert with_check and with_check == without_check
  np.testing.assert_array_equal(tokens, tokens_before)
  assert tokens.shape == (2, 4) and tokens.max() < cfg.vocab_size
