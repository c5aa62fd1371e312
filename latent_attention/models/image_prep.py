"""Image preprocessors of Perceiver IO: images -> a grid of input tokens.

The four `prep_type`s of Perceiver IO's `ImagePreprocessor` (Jaegle et al. 2021, arXiv
2107.14795, appendix; deepmind-research `perceiver/io_processors.py`), with `k` the spatial
downsampling factor:

  pixels   every k-th pixel of every k-th row (k = 1: all pixels, the original Perceiver).
  patches  space-to-depth: each k x k block becomes one token of k·k·C features, optionally
           followed by a linear map to `channels` (Perceiver IO's `conv_after_patching`).
  conv1x1  a 1x1 convolution with stride k to `channels` features.
  conv     log4(k) layers of [7x7 conv, stride 2 -> ReLU -> 3x3 max-pool, stride 2], each 4x
           smaller per side. Perceiver IO follows the conv with BatchNorm; here it has a bias
           and no BatchNorm (its `conv2d_use_batchnorm=False`), so the train step keeps no
           batch statistics; the cross-attention's LayerNorm normalises the tokens anyway.

Position features are added by the Perceiver on the token grid, not here: every token here
depends on its own patch only (pixels, patches, conv1x1) or on a neighbourhood (conv), never on
where it is, so the Perceiver stays permutation invariant over the tokens.
"""

import math

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import projection

PREPROCESSORS = ("pixels", "patches", "conv1x1", "conv")


def space_to_depth(images_BHWC, k: int):
  """[B, H/k, W/k, k·k·C]: token (i, j) holds block (i, j)'s pixels, row-major, channels last."""
  b, height, width, channels = images_BHWC.shape
  if height % k or width % k:
    raise ValueError(f"model.downsample={k} is invalid for preprocess='patches' on "
                     f"{height}x{width} images: choose a patch side that divides both "
                     f"(e.g. {', '.join(str(d) for d in _divisors(math.gcd(height, width)))})")
  x = images_BHWC.reshape(b, height // k, k, width // k, k, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height // k, width // k, k * k * channels)


def _divisors(n):
  return [d for d in range(2, n + 1) if n % d == 0]


def conv_layers(k: int) -> int:
  """Stem layers for downsampling k (a power of 4), or a ValueError naming the valid ones."""
  layers = round(math.log(k, 4)) if k >= 1 else -1
  if layers < 1 or 4 ** layers != k:
    raise ValueError(f"model.downsample={k} is invalid for preprocess='conv': each stem layer "
                     "shrinks 4x per side, so choose 4, 16 or 64")
  return layers


class ImagePreprocessor(nn.Module):
  """[B, H, W, C] float images -> [B, h, w, F] tokens on an h x w grid (see the module doc)."""

  preprocess: str = "pixels"
  downsample: int = 1  # k.
  channels: int = 64  # F of conv and conv1x1; patches: width of the linear map, 0 = none.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC):
    k = self.downsample
    if self.preprocess == "pixels":
      return x_BHWC[:, ::k, ::k]
    if self.preprocess == "patches":
      x_BhwF = space_to_depth(x_BHWC, k)
      if self.channels:
        x_BhwF = projection.dense(x_BhwF, self.channels, name="patches_linear", dtype=self.dtype)
      return x_BhwF
    if self.preprocess == "conv1x1":
      return nn.Conv(self.channels, (1, 1), strides=(k, k), dtype=self.dtype,
                     name="conv1x1")(x_BHWC)
    if self.preprocess == "conv":
      for i in range(conv_layers(k)):
        x_BHWC = nn.relu(nn.Conv(self.channels, (7, 7), strides=(2, 2), padding="SAME",
                                 dtype=self.dtype, name=f"conv_{i}")(x_BHWC))
        x_BHWC = nn.max_pool(x_BHWC, (3, 3), strides=(2, 2), padding="SAME")
      return x_BHWC
    raise ValueError(f"model.preprocess={self.preprocess!r} is invalid: choose one of "
                     f"{', '.join(PREPROCESSORS)}")
