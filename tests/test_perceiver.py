"""Perceiver classifier: shapes, learning, weight sharing, permutation invariance, maps."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from latent_attention import config_files
from latent_attention.config import default_section
from latent_attention.models import PerceiverConfig, build_model, image_prep
from latent_attention.models.perceiver import cross_attention_maps
from latent_attention.plots.attention_maps import plot_attention_maps
from latent_attention.training.loop import train_and_evaluate

from conftest import F32_EPS, ROOT, assert_f32_close

_SMALL_MLA = dict(kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)


def tiny_config(cross=(), attention=(), **overrides):
  """A width-16 Perceiver for 8x8 images, 4 classes; cross/attention: override items."""
  cfg = default_section(PerceiverConfig)
  cfg.update(num_classes=4, d_model=16, num_latents=4, num_blocks=2, num_self_attends=1,
             mlp_dim=32, fourier_bands=3, max_resolution=8)
  cfg.cross_attention.update(head_dim=16, **_SMALL_MLA)
  cfg.attention.update(num_heads=2, num_kv_heads=2, head_dim=8, **_SMALL_MLA)
  cfg.cross_attention.update(dict(cross))
  cfg.attention.update(dict(attention))
  cfg.update(overrides)
  return cfg


def _logit_terms(cfg, channels=1, pixels=64):
  """Rounded-operation count on the logits' path of a latent-encoder, query-decoder Perceiver.

  The input projection sums E = channels + 2·(2·bands + 1) features. An attention block over
  `keys` keys: three LayerNorms (2D each: mean and variance), the projections (D), q.k (head
  dim <= D), softmax and weighted sum (2·keys), the output projection (heads x head dim <= D),
  the MLP up (D) and down (F): 10D + F + 2·keys. Each of R repeats holds a cross-attention over
  the pixels and `num_self_attends` blocks over M latents; the decoder attends over M latents;
  then the final LayerNorm (2D) and the head (D).
  """
  d, f, m = cfg.d_model, cfg.mlp_dim, cfg.num_latents
  def block(keys):
    return 10 * d + f + 2 * keys
  repeat = block(pixels) + cfg.num_self_attends * block(m)
  return (channels + 2 * (2 * cfg.fourier_bands + 1) + cfg.num_blocks * repeat + block(m)
          + 3 * d)


def _images(key, b=3):
  return jax.random.randint(key, (b, 8, 8, 1), 0, 256).astype(jnp.uint8)


def _numpy_init(model, *args):
  """Parameters at model.init's shapes, drawn with numpy (LayerNorm at identity).

  XLA-compiling the initialisers costs seconds per configuration on CPU; numpy costs nothing.
  A std of prod(shape[:-1])^-1/2 never exceeds fan-in^-1/2 for Dense/DenseGeneral kernels.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if path[-1].key in ("scale", "bias"):
      return jnp.full(leaf.shape, float(path[-1].key == "scale"), leaf.dtype)
    std = float(np.prod(leaf.shape[:-1])) ** -0.5
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache
def _setup(cross=(), attention=(), **overrides):
  """(model, params, images, jitted apply), shared by the tests of one configuration."""
  model = build_model(tiny_config(cross, attention, **overrides))
  images = _images(jax.random.key(1))
  apply = jax.jit(model.apply, static_argnames="use_position_features")
  return model, _numpy_init(model, images), images, apply


@pytest.mark.parametrize("encoder,decoder,norm,input_dim", [
    ("latent", "query", "pre", 0), ("latent", "mean", "post", 0), ("latent", "query", "pre", 8),
    ("induced", "query", "post", 0), ("induced", "mean", "pre", 16)])
def test_logits_shape(encoder, decoder, norm, input_dim):
  _, params, images, apply = _setup(encoder=encoder, decoder=decoder, norm=norm,
                                    input_dim=input_dim)
  logits = apply({"params": params}, images)
  assert logits.shape == (3, 4) and bool(jnp.isfinite(logits).all())
  assert params["input_proj"]["kernel"].shape[-1] == (input_dim or 16)


def test_uint8_pixels_are_mapped_to_plus_minus_one():
  model, params, images, apply = _setup(encoder="latent", decoder="query", norm="pre")
  as_float = images.astype(jnp.float32) / 127.5 - 1.0
  # The whole model's path (_logit_terms), relative to max |logits|.
  assert_f32_close(apply({"params": params}, as_float), apply({"params": params}, images),
                   terms=_logit_terms(model.cfg))


def _num_params(cfg):
  shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0), _images(jax.random.key(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_weights_shared_after_first_repeat():
  counts = [_num_params(tiny_config(num_blocks=r)) for r in (1, 2, 4)]
  assert counts[0] < counts[1] == counts[2]
  params = jax.eval_shape(build_model(tiny_config(num_blocks=4)).init, jax.random.key(0),
                          _images(jax.random.key(0)))["params"]
  assert {"block_0", "block_shared"} <= set(params) and "block_1" not in params


def test_permutation_invariant_without_position_features():
  model, params, images, apply = _setup(encoder="latent", decoder="query", norm="pre")
  perm = np.random.default_rng(0).permutation(64)
  shuffled = images.reshape(3, 64, 1)[:, perm].reshape(images.shape)

  def logits(x, use):
    return apply({"params": params}, x, use_position_features=use)

  # The whole model's path (_logit_terms); shuffling reorders its sums over the 64 pixels.
  terms = _logit_terms(model.cfg)
  assert_f32_close(logits(shuffled, False), logits(images, False), terms=terms)
  # With position features the logits move by far more than that rounding tolerance.
  with_pos = logits(images, True)
  tol = terms * F32_EPS * float(jnp.abs(with_pos).max())
  assert float(jnp.abs(logits(shuffled, True) - with_pos).max()) > 100 * tol


def _quadrant_task(key, b):
  """Class c = the quadrant holding a bright 4x4 square, on noise: needs position features."""
  k_label, k_noise = jax.random.split(key)
  labels = jax.random.randint(k_label, (b,), 0, 4)
  rows, cols = (labels // 2) * 4, (labels % 2) * 4
  r_8, c_8 = jnp.arange(8), jnp.arange(8)
  in_row = (r_8 >= rows[:, None]) & (r_8 < rows[:, None] + 4)
  in_col = (c_8 >= cols[:, None]) & (c_8 < cols[:, None] + 4)
  square = in_row[:, :, None] & in_col[:, None, :]
  noise = jax.random.uniform(k_noise, (b, 8, 8), maxval=120.0)
  return (noise + 120.0 * square).astype(jnp.uint8)[..., None], labels


_PREPS = {"pixels": dict(downsample=2), "patches": dict(downsample=2, prep_channels=0),
          "conv1x1": dict(downsample=2, prep_channels=6), "conv": dict(downsample=4)}


@pytest.mark.parametrize("prep", sorted(_PREPS))
def test_learns_a_separable_task(prep):
  model, params, _, _ = _setup(encoder="latent", decoder="mean", norm="pre", num_blocks=1,
                               preprocess=prep, **_PREPS[prep])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, key):
    """One Adam step; also the accuracy on this fresh batch before training on it."""
    images, labels = _quadrant_task(key, 32)

    def loss_fn(params):
      logits = model.apply({"params": params}, images)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits.argmax(-1) == labels).mean()

    (_, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, accuracy

  opt_state, accuracies = tx.init(params), []
  for key in jax.random.split(jax.random.key(1), 60):
    params, opt_state, accuracy = step(params, opt_state, key)
    accuracies.append(float(accuracy))
  assert np.mean(accuracies[-10:]) > 0.6, accuracies  # Held-out batches; chance is 0.25.


def _maps_and_cross_attention_call(model, params, images):
  """The maps; the logits and the outputs of the first cross-attention and its submodules."""
  captured = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path[:3] == ("block_0", "cross",
                                                                         "attn"):
      captured[context.module.path[3:]] = out
    return out

  with nn.intercept_methods(capture):
    logits = model.apply({"params": params}, images)
  return cross_attention_maps(model, params, images), logits, captured


@pytest.mark.parametrize("cross,attention", [
    ((("kind", "gqa"), ("num_heads", 2), ("num_kv_heads", 1)),
     (("kind", "mla"), ("q_lora_rank", 8))),
    ((("kind", "mla"),), (("kind", "gqa"), ("num_kv_heads", 1)))], ids=["gqa-mla", "mla-gqa"])
def test_attention_kinds_and_maps(cross, attention):
  """mla/gqa in cross and self attention; the maps reproduce the cross-attention's output."""
  model, params, images, _ = _setup(cross, attention)
  maps_BNMS, logits, captured = jax.jit(_maps_and_cross_attention_call, static_argnums=0)(
      model, params, images)
  assert bool(jnp.isfinite(logits).all())
  n = model.cfg.cross_attention.num_heads
  assert maps_BNMS.shape == (3, n, 4, 64)
  # Softmax over S=64 pixels: 64 rounded terms on probabilities up to 1.
  assert_f32_close(maps_BNMS.sum(-1), np.ones(maps_BNMS.shape[:-1]), terms=64, scale=1.0)
  p = params["block_0"]["cross"]["attn"]
  a = model.cfg.cross_attention
  if a.kind == "mla":  # q.k over nope + rope dims; k and v up-projections over the rank.
    qk, v_dim, up = a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim, 2 * a.kv_lora_rank
    v_BSNH = jnp.einsum("BSC,CNH->BSNH", captured[("kv_norm",)], p["v_up"])
  else:
    qk, v_dim, up = a.head_dim, a.head_dim, 0
    v_BSNH = jnp.repeat(captured[("value",)], n, axis=2)
  out_BMNH = jnp.einsum("BNMS,BSNH->BMNH", maps_BNMS, v_BSNH)
  # Maps @ v over S=64 pixels, their logits' q.k (+ MLA's up-projections), the output
  # projection over N*H: relative to max |cross-attention output|.
  assert_f32_close(jnp.einsum("BMNH,NHD->BMD", out_BMNH, p["out"]["kernel"]), captured[()],
                   terms=64 + qk + up + n * v_dim)


def test_attention_map_png(tmp_path):
  model, params, images, _ = _setup(encoder="induced", decoder="mean", norm="pre")
  maps_BNMS = jax.jit(cross_attention_maps, static_argnums=0)(model, params, images)
  assert maps_BNMS.shape == (3, 2, 4, 64)
  path = tmp_path / "maps.png"
  plot_attention_maps(images, maps_BNMS, path, num_latents=3, num_images=2)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("overrides,message", [
    ({"norm": "mid"}, "model.norm='mid' is invalid: choose one of pre, post"),
    ({"decoder": "cls"}, "model.decoder='cls' is invalid: choose one of query, mean"),
    ({"encoder": "conv"}, "model.encoder='conv' is invalid: choose one of latent, induced"),
    ({"num_blocks": 0}, "model.num_blocks=0 is invalid: must be a positive integer"),
    ({"fourier_bands": -1}, "model.fourier_bands=-1 is invalid: must be a non-negative"),
    ({"encoder": "induced", "input_dim": 8},
     "model.input_dim=8 is invalid for encoder='induced': its blocks keep the input width, so "
     "use 0 or d_model=16"),
    ({"preprocess": "vit"}, "model.preprocess='vit' is invalid: choose one of pixels, patches, "
     "conv1x1, conv"),
    ({"preprocess": "conv", "downsample": 2}, "model.downsample=2 is invalid for "
     "preprocess='conv': each stem layer shrinks 4x per side, so choose 4, 16 or 64"),
    ({"preprocess": "conv1x1", "prep_channels": 0}, "model.prep_channels=0 is invalid for "
     "preprocess='conv1x1'"),
])
def test_bad_config_errors(overrides, message):
  with pytest.raises(ValueError) as err:
    build_model(tiny_config(**overrides))
  assert message in str(err.value)


def test_cross_attention_section_is_parsed():
  assert build_model(tiny_config({"kind": "mla"})).cfg.cross_attention.kind == "mla"
  cfg = tiny_config().to_dict()
  cfg["cross_attention"]["num_head"] = 2
  with pytest.raises(ValueError, match="model.cross_attention.num_head is not a field"):
    build_model(cfg)


def test_space_to_depth_is_the_claimed_reshape():
  x = np.arange(4 * 4 * 2).reshape(1, 4, 4, 2)  # pixel (i, j) channel c holds 8i + 2j + c.
  tokens = np.asarray(image_prep.space_to_depth(jnp.asarray(x), 2))
  assert tokens.shape == (1, 2, 2, 8)
  # Token (1, 0) is block rows 2-3, columns 0-1: pixels (2,0) (2,1) (3,0) (3,1), channels last.
  np.testing.assert_array_equal(tokens[0, 1, 0], [16, 17, 18, 19, 24, 25, 26, 27])
  np.testing.assert_array_equal(tokens[0, 0, 1], [4, 5, 6, 7, 12, 13, 14, 15])
  with pytest.raises(ValueError, match="model.downsample=3 is invalid for preprocess='patches' "
                     "on 4x4 images: choose a patch side that divides both .e.g. 2, 4."):
    image_prep.space_to_depth(jnp.asarray(x), 3)


@pytest.mark.parametrize("prep", sorted(_PREPS))
def test_permutation_invariant_over_every_preprocessors_tokens(prep):
  """Without position features the logits ignore the order of the preprocessor's tokens."""
  model, params, images, apply = _setup(preprocess=prep, **_PREPS[prep])
  grids = {}

  def permute(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, image_prep.ImagePreprocessor):
      b, h, w, f = out.shape
      grids["shape"] = out.shape
      perm = np.random.default_rng(0).permutation(h * w)
      out = out.reshape(b, h * w, f)[:, perm].reshape(out.shape)
    return out

  def permuted(params, images):
    with nn.intercept_methods(permute):  # applies while tracing: the jitted program permutes.
      return model.apply({"params": params}, images, use_position_features=False)

  plain = apply({"params": params}, images, use_position_features=False)
  shuffled = jax.jit(permuted)(params, images)
  _, h, w, f = grids["shape"]
  assert h * w > 1 and (h, w) == ((2, 2) if prep == "conv" else (4, 4))
  # The body's sums over the h·w tokens are reordered; nothing before them changes.
  assert_f32_close(shuffled, plain, terms=_logit_terms(model.cfg, channels=f, pixels=h * w))


def test_default_config_parameters_stop_growing_after_the_first_repeat():
  """The shipped default (conv stem): eval_shape only, so its full size costs nothing."""
  cfg = config_files.load(os.path.join(ROOT, "configs/perceiver_fashion_mnist.py")).model
  images = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.uint8)

  def count(repeats):
    model = build_model(ml_collections.ConfigDict({**cfg.to_dict(), "num_blocks": repeats}))
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    assert jax.eval_shape(model.apply, shapes, images).shape == (2, 10)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))

  counts = [count(r) for r in (1, 2, 5)]
  assert cfg.preprocess == "conv" and counts[0] < counts[1] == counts[2]


@pytest.mark.e2e
def test_runlocal_training_on_fashion_mnist_beats_chance(tmp_path):
  """The default preprocessor (conv) through the training loop and the in-memory pipeline; every
  preprocessor learns the quadrant task above."""
  config = config_files.load(os.path.join(ROOT, "configs/perceiver_fashion_mnist.py:runlocal"))
  config.train.update(eval_every=1000, checkpoint_every=1000)  # the final evaluation only.
  result = train_and_evaluate(config, str(tmp_path))
  # 40 steps on 4000 training images, 1000 test images; chance is 0.1 on 10 balanced classes.
  assert config.model.preprocess == "conv" and result["step"] == 40
  assert result["eval"]["accuracy"] > 0.3, result
