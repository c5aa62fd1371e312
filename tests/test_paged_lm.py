"""The LM on the paged latent cache (`model.decode_cache='paged'`, `model.decode_kernel`): the
same tokens as the contiguous cache, its bytes, its config checks; the Pallas kernel compiled
for a TPU topology (where libtpu is installed)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_attention import kv_cache_bytes, kv_cache_formula_bytes
from latent_attention.kernels import paged_cache
from latent_attention.kernels.latent_decode import paged_latent_attention
from latent_attention.models import build_model
from latent_attention.models.decoding import decode_chunks, generate, init_cache

from conftest import assert_f32_close, lm_terms, tiny_lm_config

# Every LM kind with a latent cache, in each decode mode that caches the latent.
LATENT = {"mla-absorbed": ("mla", {"mla_decode_mode": "absorbed"}),
          "mla-latent": ("mla", {"mla_decode_mode": "latent"}),
          "gla-2": ("gla", {"gla_latent_heads": 2})}


def _models(name, kernel="xla", page_size=4, num_layers=2):
  kind, extra = LATENT[name]
  cfg = tiny_lm_config(kind, **extra)
  cfg.num_layers = num_layers
  contiguous = build_model(cfg)
  cfg.update(decode_cache="paged", decode_kernel=kernel, page_size=page_size)
  paged = build_model(cfg)
  params = contiguous.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return contiguous, paged, params


@pytest.mark.parametrize("name, kernel", [(name, kernel) for name in LATENT
                                          for kernel in ("xla", "pallas")
                                          if not (kernel == "pallas" and name == "mla-latent")])
def test_generate_paged_equals_contiguous_token_for_token(name, kernel):
  """A 6-token prompt (pages of 4: one full, one part) and 9 new tokens, greedy and sampled.
  (The kernel is absorbed decoding: decode_kernel='pallas' refuses mla_decode_mode='latent'.)
  One layer: generate compiles 4 programs a case; the pages' hand-over from layer to layer is
  checked by the 2-layer tests below (chunks against the forward, a freed row)."""
  contiguous, paged, params = _models(name, kernel, num_layers=1)
  prompt_BT = jax.random.randint(jax.random.key(1), (2, 6), 0, 31)
  for temperature in (0.0, 1.0):
    kw = dict(max_new_tokens=9, temperature=temperature)
    want = generate(contiguous, params, prompt_BT, jax.random.key(2), **kw)
    got = generate(paged, params, prompt_BT, jax.random.key(2), **kw)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", LATENT)
def test_paged_decode_chunks_equal_the_full_forward(name):
  """A prefill, single steps and a chunk of 3 through the pages (the kernel for the steps)."""
  kernel = "xla" if name == "mla-latent" else "pallas"
  contiguous, paged, params = _models(name, kernel, page_size=3)
  tokens_BT = jax.random.randint(jax.random.key(3), (2, 10), 0, 31)
  full_BTV = contiguous.apply({"params": params}, tokens_BT)
  apply = jax.jit(paged.apply, static_argnames=("decode", "mutable"))
  logits_BTV, cache = decode_chunks(paged, params, tokens_BT, [4, 1, 1, 3, 1], apply=apply)
  assert_f32_close(logits_BTV, full_BTV, terms=lm_terms(paged.cfg, 10))
  np.testing.assert_array_equal(cache["lengths"], [10, 10])
  assert int(cache["page_taken"].sum()) == 8  # ceil(10 / 3) pages per row.


@pytest.mark.parametrize("name", LATENT)
def test_paged_cache_bytes_equal_the_formula(name):
  """The pools hold whole pages: ceil(S / page_size) per row, (G·d_c + d_R) values a token."""
  _, paged, _ = _models(name, page_size=4)
  a = paged.cfg.attention
  for seq_len in (8, 10):
    cache = init_cache(paged, 3, seq_len)
    pages = 3 * -(-seq_len // 4)
    per_layer = paged_cache.pool_bytes(pages, 4, a.latent_heads, a.kv_lora_rank,
                                       a.qk_rope_head_dim, jnp.float32)
    assert kv_cache_bytes(cache) == paged.cfg.num_layers * per_layer
    assert kv_cache_bytes(cache) == kv_cache_formula_bytes(paged.cfg, seq_len, 3)


@pytest.mark.parametrize("bad, message", [
    (dict(kind="gqa"), "model.attention.kind='gqa'"),
    (dict(kind="mla", mla_decode_mode="naive"), "mla_decode_mode='naive'"),
    (dict(kind="mla", mla_rope_heads=2), "mla_rope_heads=2"),
])
def test_paged_cache_refuses_what_it_cannot_hold(bad, message):
  cfg = tiny_lm_config(**bad)
  cfg.decode_cache = "paged"
  with pytest.raises(ValueError, match=f"model.decode_cache='paged'.*{message}"):
    build_model(cfg)
  cfg = tiny_lm_config("mla")
  cfg.update(decode_cache="paged", kv_share_every=2)
  with pytest.raises(ValueError, match="kv_share_every=2"):
    build_model(cfg)
  for decode_cache, mode in (("contiguous", "absorbed"), ("paged", "latent")):
    cfg = tiny_lm_config("mla", mla_decode_mode=mode)
    cfg.update(decode_cache=decode_cache, decode_kernel="pallas")
    with pytest.raises(ValueError, match="model.decode_kernel='pallas'"):
      build_model(cfg)


# DeepSeek-V3 (arXiv 2412.19437): d_c 512, d_R 64, 128 heads; configs/lm1b.py: 256, 32, 12.
TPU_SHAPES = {"deepseek_v3": dict(heads=128, d_c=512, d_r=64),
              "lm1b": dict(heads=12, d_c=256, d_r=32)}


def _tpu_devices(generation):
  """One compile-only device of a 2x2 slice (bench/preflight.py's libtpu, installed by `make
  preflight-deps`), or a skip naming why there is none."""
  from latent_attention.bench import preflight
  if not preflight.extras_available():
    pytest.skip(preflight.MISSING)
  try:
    return preflight.devices(f"{generation}:2x2")[0]
  except ValueError as e:  # a generation this libtpu or the chip table does not know.
    pytest.skip(f"no {generation} topology: {e}")


@pytest.mark.parametrize("generation", ["v5e", "v6e"])
@pytest.mark.parametrize("shapes", TPU_SHAPES)
def test_kernel_compiles_for_a_tpu_topology(generation, shapes):
  """Mosaic lowering and compilation of a bf16 decode step at batch 8, 32 pages of 16 tokens
  per sequence (512 tokens of context), with the default block sizes and with 4 pages and half
  the heads (where that is a multiple of 8) a block; nothing runs."""
  device = _tpu_devices(generation)
  n, c, r = (TPU_SHAPES[shapes][k] for k in ("heads", "d_c", "d_r"))
  b, per_seq, page_size = 8, 32, 16
  sharding = jax.sharding.SingleDeviceSharding(device)
  arg = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  args = (arg((b, n, c)), arg((b, n, r)), arg((b * per_seq, 1, page_size, c)),
          arg((b * per_seq, page_size, r)), arg((b, per_seq), jnp.int32), arg((b,), jnp.int32))
  half = n // 2 if n // 2 % 8 == 0 else n  # Mosaic: a head block of 8k rows or all of them.
  for blocks in ({}, {"pages_per_block": 4, "heads_per_block": half}):
    step = jax.jit(lambda *a: paged_latent_attention(*a, scale=(128 + r) ** -0.5, **blocks))
    assert "tpu_custom_call" in step.lower(*args).compile().as_text()


@pytest.mark.parametrize("kernel", ["xla", "pallas"])
def test_a_freed_row_restarts_while_the_other_continues(kernel):
  """Continuous batching on the paged cache: row 1 finishes after 5 tokens, its pages are freed
  and a new sequence starts in its slot (lengths now 5 and 0, then ragged) while row 0 goes on.
  Each row's logits equal that sequence decoded alone."""
  _, paged, params = _models("gla-2", kernel, page_size=2)
  tokens_BT = jax.random.randint(jax.random.key(4), (3, 9), 0, 31)  # rows 0, 1, then the new.
  apply = jax.jit(lambda cache, tok_B1: paged.apply({"params": params, "cache": cache}, tok_B1,
                                                     decode=True, mutable=["cache"]))
  cache = init_cache(paged, 2, 9)
  logits = []
  for i in range(9):
    if i == 5:
      state = paged_cache.free(paged_cache.PageState(
          cache["block_table"], cache["lengths"], cache["page_taken"]), 1, 2)
      cache = dict(cache, block_table=state[0], lengths=state[1], page_taken=state[2])
    row1 = tokens_BT[1, i] if i < 5 else tokens_BT[2, i - 5]
    out, mutated = apply(cache, jnp.stack([tokens_BT[0, i], row1])[:, None])
    cache = mutated["cache"]
    logits.append(out[:, 0])
  logits_BTV = jnp.stack(logits, axis=1)
  np.testing.assert_array_equal(cache["lengths"], [9, 4])
  one_row = jax.jit(paged.apply, static_argnames=("decode", "mutable"))  # one compile for all.
  alone = lambda toks: decode_chunks(paged, params, toks[None], [1] * toks.shape[0],
                                     apply=one_row)[0][0]
  terms = lm_terms(paged.cfg, 9)
  assert_f32_close(logits_BTV[0], alone(tokens_BT[0]), terms=terms)
  assert_f32_close(logits_BTV[1, :5], alone(tokens_BT[1, :5]), terms=terms)
  assert_f32_close(logits_BTV[1, 5:], alone(tokens_BT[2, :4]), terms=terms)
