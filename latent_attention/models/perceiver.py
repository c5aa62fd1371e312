"""Perceiver / Perceiver IO image classifier (Jaegle et al. 2021, arXiv 2103.03206 and
2107.14795).

A learned latent array (M x D) cross-attends to the pixels (Q from the latents, K/V from the
input), then runs `num_self_attends` latent self-attention blocks; every attention is followed by
an MLP, with residuals and LayerNorm (pre-norm, or the seed's post-norm Add & Norm). The block
repeats `num_blocks` times over the same input: as in the Perceiver paper the first repeat has its
own weights and repeats 2..R share one set. Cost O(R·(S·M + M²)) for S input tokens.

The image first becomes a grid of tokens (`model.preprocess`, models/image_prep.py: the pixels,
space-to-depth patches, a strided 1x1 conv or a conv stem, as in Perceiver IO); the tokens enter
with 2-D Fourier position features of their grid concatenated (not added), then one linear
projection to D. A Perceiver IO decoder (one learned output query cross-attending to the latents)
or the mean of the latents gives the logits. encoder='induced' replaces the latent encoder by
`num_blocks` Set Transformer ISABs, which keep one vector per token.

Here images are [B, H, W, C] (H, W, C: image height, width, channels), S the number of tokens
(on an h x w grid), F the features of a token, E = F + position features, I the width they are
projected to (input_dim); other letters as in `latent_attention`.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import AttentionConfig, projection
from latent_attention.attention.induced import NORMS, AttentionBlock, InducedSetAttention
from latent_attention.attention.config import check_no_indexer, check_width
from latent_attention.config import check_fields
from latent_attention.models import image_prep
from latent_attention.models.lm import DTYPES

DECODERS = ("query", "mean")
ENCODERS = ("latent", "induced")
_init = nn.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
  """Fields of `config.model` for `name='perceiver'`."""

  name: str = "perceiver"  # model family; see models.build_model.
  num_classes: int = 10
  d_model: int = 128  # D, width of the latents.
  # Width of the projected tokens, the keys/values' input (the Perceiver's C); 0 = d_model. A
  # narrow input makes the per-token work (projection, LayerNorm, K/V) cheap while the latents
  # stay wide. encoder='induced' keeps one vector per token of width D, so it needs 0 or D.
  input_dim: int = 0
  # Image -> tokens (models/image_prep.py): pixels | patches | conv1x1 | conv (Perceiver IO).
  preprocess: str = "pixels"
  # k: pixels and conv1x1 keep every k-th pixel per axis, patches are k x k, conv: 4, 16...
  downsample: int = 1
  # Token features of conv and conv1x1; patches: a linear map of each patch to this width
  # (0 = the raw k·k·C pixels). Unused by pixels.
  prep_channels: int = 64
  num_latents: int = 64  # M, latents (ISAB inducing points for encoder='induced').
  num_blocks: int = 2  # R, repeats of cross-attend + self-attends (ISAB layers if 'induced').
  num_self_attends: int = 2  # latent self-attention blocks per repeat.
  mlp_dim: int = 256  # F, hidden width of every GELU MLP.
  norm: str = "pre"  # pre: x + f(LN(x)); post: the seed's Add & Norm LN(x + f(x)).
  fourier_bands: int = 8  # frequencies per token-grid axis of the position features.
  # Image side; the token grid's top frequency is max_resolution / downsample / 2 (Nyquist).
  max_resolution: int = 28
  decoder: str = "query"  # query: Perceiver IO output query; mean: mean-pool the latents.
  encoder: str = "latent"  # latent: Perceiver; induced: ISAB stack (Set Transformer).
  dtype: str = "float32"  # compute dtype (float32|bfloat16|float16); params stay float32.
  # Latents <-> input and the decoder's query <-> latents; one head as in the Perceiver.
  cross_attention: AttentionConfig = AttentionConfig(num_heads=1, num_kv_heads=1, head_dim=128)
  # Latent self-attention (and both attentions of encoder='induced').
  attention: AttentionConfig = AttentionConfig()

  def __post_init__(self):
    check_fields(self, "model",
                 positive=("num_classes", "d_model", "num_latents", "num_blocks", "mlp_dim",
                           "max_resolution", "downsample"),
                 non_negative=("num_self_attends", "fourier_bands", "input_dim",
                               "prep_channels"),
                 choices={"norm": NORMS, "decoder": DECODERS, "encoder": ENCODERS,
                          "dtype": tuple(DTYPES), "preprocess": image_prep.PREPROCESSORS})
    check_width(self.cross_attention, self.d_model, "cross_attention")
    check_width(self.attention, self.d_model)
    check_no_indexer(self.cross_attention, self.name, "cross_attention")
    check_no_indexer(self.attention, self.name)
    if self.preprocess == "conv":
      image_prep.conv_layers(self.downsample)
    if self.preprocess in ("conv", "conv1x1") and not self.prep_channels:
      raise ValueError(f"model.prep_channels=0 is invalid for preprocess={self.preprocess!r}: "
                       "its convolution needs a positive number of output channels")
    if self.encoder == "induced" and self.input_dim not in (0, self.d_model):
      raise ValueError(f"model.input_dim={self.input_dim} is invalid for encoder='induced': "
                       f"its blocks keep the input width, so use 0 or d_model={self.d_model}")


def fourier_features(height: int, width: int, num_bands: int, max_resolution: int):
  """[H·W, 2·(2·num_bands + 1)] position features of the Perceiver (its appendix, Fourier).

  Per axis: the coordinate in [-1, 1], then sin and cos of π·f·coordinate for `num_bands`
  frequencies f spaced linearly from 1 to max_resolution / 2.
  """
  axes = (jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width))
  coords_S2 = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
  freqs = jnp.linspace(1.0, max_resolution / 2, num_bands)
  angles = (jnp.pi * coords_S2[:, :, None] * freqs).reshape(coords_S2.shape[0], -1)
  return jnp.concatenate([coords_S2, jnp.sin(angles), jnp.cos(angles)], axis=-1)


def image_tokens(images_BHWC, cfg: PerceiverConfig, use_position_features=True):
  """[B, S, E]: the preprocessed tokens (S on their grid) + the grid's position features.

  uint8 pixels are mapped to [-1, 1] first (floats are used as given).
  use_position_features=False puts zeros in place of the features: the same parameters apply,
  but the model no longer knows where a token is (it becomes permutation invariant).
  """
  x_BHWC = images_BHWC.astype(jnp.float32)
  if jnp.issubdtype(images_BHWC.dtype, jnp.integer):
    x_BHWC = x_BHWC / 127.5 - 1.0
  x_BhwF = image_prep.ImagePreprocessor(cfg.preprocess, cfg.downsample, cfg.prep_channels,
                                        DTYPES[cfg.dtype], name="preprocess")(x_BHWC)
  b, height, width, features = x_BhwF.shape
  pos_SE = fourier_features(height, width, cfg.fourier_bands,
                            cfg.max_resolution / cfg.downsample)
  if not use_position_features:
    pos_SE = jnp.zeros_like(pos_SE)
  x_BSF = x_BhwF.reshape(b, height * width, features).astype(jnp.float32)
  return jnp.concatenate([x_BSF, jnp.broadcast_to(pos_SE, (b, *pos_SE.shape))], axis=-1)


class PerceiverBlock(nn.Module):
  """Latents cross-attend to the input, then `num_self_attends` latent self-attention blocks."""

  cfg: PerceiverConfig

  @nn.compact
  def __call__(self, z_BMD, x_BSI):
    cfg = self.cfg
    block = dict(d_model=cfg.d_model, mlp_dim=cfg.mlp_dim, norm=cfg.norm,
                 dtype=DTYPES[cfg.dtype])
    z_BMD = AttentionBlock(cfg.cross_attention, name="cross", **block)(z_BMD, x_BSI)
    for i in range(cfg.num_self_attends):
      z_BMD = AttentionBlock(cfg.attention, name=f"self_{i}", **block)(z_BMD)
    return z_BMD


class Perceiver(nn.Module):
  """images [B, H, W, C] (uint8 or float) -> logits [B, num_classes]."""

  cfg: PerceiverConfig

  @nn.compact
  def __call__(self, images_BHWC, use_position_features=True):
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    b = images_BHWC.shape[0]
    x_BSE = image_tokens(images_BHWC, cfg, use_position_features)
    x_BSI = projection.dense(x_BSE, cfg.input_dim or cfg.d_model, name="input_proj", dtype=dtype)
    if cfg.encoder == "latent":
      latents_MD = self.param("latents", _init, (cfg.num_latents, cfg.d_model))
      z_BMD = jnp.broadcast_to(latents_MD.astype(dtype), (b, *latents_MD.shape))
      z_BMD = PerceiverBlock(cfg, name="block_0")(z_BMD, x_BSI)
      if cfg.num_blocks > 1:
        shared = PerceiverBlock(cfg, name="block_shared")  # One module called R-1 times.
        for _ in range(cfg.num_blocks - 1):
          z_BMD = shared(z_BMD, x_BSI)
    else:
      z_BMD = x_BSI  # ISAB keeps one vector per token: the decoder reads S vectors, not M.
      for i in range(cfg.num_blocks):
        z_BMD = InducedSetAttention(cfg.attention, cfg.d_model, cfg.num_latents, cfg.mlp_dim,
                                    cfg.norm, dtype, name=f"isab_{i}")(z_BMD)
    if cfg.decoder == "query":
      query_1D = self.param("output_query", _init, (1, cfg.d_model))
      query_B1D = jnp.broadcast_to(query_1D.astype(dtype), (b, 1, cfg.d_model))
      out_BD = AttentionBlock(cfg.cross_attention, cfg.d_model, cfg.mlp_dim, cfg.norm, dtype,
                              name="decoder")(query_B1D, z_BMD)[:, 0]
    else:
      out_BD = z_BMD.mean(axis=1)
    if cfg.norm == "pre":  # Post-norm outputs are normalised already.
      out_BD = nn.LayerNorm(dtype=dtype, name="final_norm")(out_BD)
    logits = nn.Dense(cfg.num_classes, dtype=dtype, name="head")(out_BD)
    return logits.astype(jnp.float32)


def cross_attention_maps(model: Perceiver, params, images_BHWC, use_position_features=True):
  """Softmax weights [B, heads, M, S] of the first cross-attention (latents over the S tokens:
  H·W pixels for preprocess='pixels', the h x w grid of patches or conv features otherwise).

  For encoder='induced' the queries are the first ISAB's inducing points. The probabilities are
  recomputed from the queries and keys that the attention module projects on its way (captured
  with `nn.intercept_methods`), so the forward pass itself stays untouched.
  """
  cfg = model.cfg
  if cfg.encoder == "latent":
    prefix, attn_cfg = ("block_0", "cross", "attn"), cfg.cross_attention
  else:
    prefix, attn_cfg = ("isab_0", "induce", "attn"), cfg.attention
  captured = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path[:-1] == prefix:
      captured[context.module.path[-1]] = out
    return out

  with nn.intercept_methods(capture):
    model.apply({"params": params}, images_BHWC, use_position_features=use_position_features)
  if attn_cfg.kind == "mla":  # No RoPE here (pos_BT=None): keys are [W_UK c_KV ; k_R].
    q_BTNH = captured["q_up" if attn_cfg.q_lora_rank else "query"]
    ckv_BSC = captured["kv_norm" if attn_cfg.mla_kv_norm else "kv_down"]
    w_uk_CNH = params[prefix[0]][prefix[1]][prefix[2]].get(  # none when d_nope = 0.
        "k_up", jnp.zeros((ckv_BSC.shape[-1], attn_cfg.num_heads, 0)))
    k_nope_BSNH = jnp.einsum("BSC,CNH->BSNH", ckv_BSC, w_uk_CNH)
    k_rope_BSKR = captured["k_rope"].reshape(*ckv_BSC.shape[:2], attn_cfg.mla_rope_heads, -1)
    k_rope_BSNR = jnp.repeat(k_rope_BSKR, k_nope_BSNH.shape[2] // attn_cfg.mla_rope_heads,
                             axis=2)
    k_BSKH = jnp.concatenate([k_nope_BSNH, k_rope_BSNR], axis=-1)
  elif attn_cfg.kind in ("mha", "gqa", "mqa"):
    q_BTNH, k_BSKH = captured["query"], captured["key"]
  else:
    raise ValueError(f"cross_attention_maps supports mha, gqa, mqa and mla, not "
                     f"{attn_cfg.kind!r}")
  b, t, n, h = q_BTNH.shape
  k = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                            preferred_element_type=jnp.float32) * h ** -0.5
  return jax.nn.softmax(logits_BKGTS, axis=-1).reshape(b, n, t, -1)
