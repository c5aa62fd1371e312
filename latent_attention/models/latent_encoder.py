"""A one-layer Perceiver encoder: the latent side of the input-length scaling benchmark.

M learned latents cross-attend to the N inputs, then run one latent self-attention block:
O(N·M + M²) against a full self-attention block's O(N²) (Jaegle et al. 2021, arXiv 2103.03206,
section 2). Each block is attention + GELU MLP with pre-norm residuals
(`attention.induced.AttentionBlock`), the same block the full encoder uses.
"""

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import AttentionConfig
from latent_attention.attention.induced import AttentionBlock


class LatentEncoder(nn.Module):
  """M learned latents cross-attend to the input, then one latent self-attention block."""

  cfg: AttentionConfig
  d_model: int
  num_latents: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BSD):
    latents_MD = self.param("latents", nn.initializers.truncated_normal(0.02),
                            (self.num_latents, self.d_model))
    z_BMD = jnp.broadcast_to(latents_MD.astype(self.dtype), (x_BSD.shape[0], *latents_MD.shape))
    block = dict(d_model=self.d_model, mlp_dim=4 * self.d_model, dtype=self.dtype)
    z_BMD = AttentionBlock(self.cfg, name="cross", **block)(z_BMD, x_BSD)
    return AttentionBlock(self.cfg, name="self", **block)(z_BMD)
