"""Induced set attention (Set Transformer ISAB, Lee et al. 2019, arXiv 1810.00825).

Seed 002's "latent vectors" (L x D, L << N) are the Set Transformer's inducing points: M learned
vectors I first attend to the T inputs (Q from I, K/V from the input), then the input attends
back to the M summaries (Q from the input, K/V from the summaries):

  H = MAB(I, X)    M x D, cost O(T·M)
  Y = MAB(X, H)    T x D, cost O(T·M)

The output keeps one vector per input, every input reaches every other through the M summaries
(bidirectional: no causal form and no decode cache), and no T x T array is ever formed.
MAB(X, Y) is an attention block: X attends to Y, then an MLP, each with a residual and LayerNorm.
Both attentions are any `make_attention` kind; the Perceiver builds its blocks from MAB too.
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import AttentionConfig, make_attention, projection

NORMS = ("pre", "post")


def _residual(norm, x_BTD, sublayer, layer_norm):
  """x + f(LN(x)) (pre-norm), or the Add & Norm LN(x + f(x)) (post-norm: Perceiver, Set
  Transformer)."""
  if norm == "pre":
    return x_BTD + sublayer(layer_norm(x_BTD))
  return layer_norm(x_BTD + sublayer(x_BTD))


class AttentionBlock(nn.Module):
  """MAB(x, kv): x attends to kv (to itself when kv is None), then a GELU MLP.

  Bidirectional (causal=False) and position-free (pos_BT=None). With norm='pre' the keys and
  values get their own LayerNorm; with norm='post' they enter as given, as in the Set Transformer.
  """

  cfg: AttentionConfig
  d_model: int
  mlp_dim: int
  norm: str = "pre"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD, kv_BSD=None):
    if self.norm not in NORMS:
      raise ValueError(f"model.norm={self.norm!r} is invalid: choose one of {', '.join(NORMS)}")
    layer_norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    attn = make_attention(self.cfg, self.d_model, self.dtype, name="attn")
    if self.norm == "pre" and kv_BSD is not None:
      kv_BSD = layer_norm(name="kv_norm")(kv_BSD)
    x_BTD = _residual(self.norm, x_BTD, lambda h_BTD: attn(h_BTD, kv_BSD=kv_BSD, causal=False),
                      layer_norm(name="attn_norm"))

    def mlp(h_BTD):
      h_BTF = nn.gelu(projection.dense(h_BTD, self.mlp_dim, name="mlp_up", dtype=self.dtype))
      return projection.dense(h_BTF, self.d_model, name="mlp_down", dtype=self.dtype)

    return _residual(self.norm, x_BTD, mlp, layer_norm(name="mlp_norm"))


class InducedSetAttention(nn.Module):
  """ISAB_M(X) = MAB(X, MAB(I, X)) with M = num_inducing learned inducing points I."""

  cfg: AttentionConfig
  d_model: int
  num_inducing: int
  mlp_dim: int
  norm: str = "pre"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD):
    block = functools.partial(AttentionBlock, self.cfg, self.d_model, self.mlp_dim, self.norm,
                              self.dtype)
    inducing_MD = self.param("inducing", nn.initializers.truncated_normal(0.02),
                             (self.num_inducing, self.d_model))
    i_BMD = jnp.broadcast_to(inducing_MD.astype(self.dtype),
                             (x_BTD.shape[0], *inducing_MD.shape))
    h_BMD = block(name="induce")(i_BMD, x_BTD)
    return block(name="attend")(x_BTD, h_BMD)
