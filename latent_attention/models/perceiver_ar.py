"""Perceiver AR language model (Hawthorne et al. 2022, arXiv 2202.07765).

The last M positions of the window are the latents. They cross-attend causally to the whole
window (each latent sees every position up to its own: O(T·M)), then run `num_layers` causal
self-attention blocks among themselves (O(M²) each); logits, and so the loss, cover those M
positions only. Pre-norm RMSNorm, RoPE and MLPs as in models/lm.py; any attention kind.

Decoding (Flax `cache` collection, as in models/lm.py): every decoded token is one more latent.
Each chunk's last min(M, t) positions become latents (`num_latents` overrides M): the prefill's
last M, then every token of later steps. `init(..., decode=True)` on T tokens sizes the
cross-attention cache for all T positions and each self-attention cache for T latents, the most
there can be (a prompt no longer than M makes every position a latent). The self-attention layers
number the latents 0, 1, 2, ... (RoPE is relative, so only differences matter), so the prefix never
enters their cache. The attention modules write their cache at the query chunk's position, so a
decode chunk's cross-attention takes every position of the chunk as a query (causal attention
over the cache) and keeps the latent rows: the prefill pays O(P²) once instead of O(P·M); each
later token costs O(T), as in any KV-cached decoder.
"""

import dataclasses

import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import (AttentionConfig, cache_elements_per_token,
                                        make_attention, projection)
from latent_attention.attention.config import check_no_indexer, check_width
from latent_attention.config import check_fields
from latent_attention.models.lm import DTYPES, Block, Mlp


@dataclasses.dataclass(frozen=True)
class PerceiverARConfig:
  """Fields of `config.model` for `name='perceiver_ar'`."""

  name: str = "perceiver_ar"  # model family; see models.build_model.
  vocab_size: int = 65  # V.
  d_model: int = 128  # D.
  num_latents: int = 64  # M, the last M positions of the window.
  num_layers: int = 4  # latent self-attention blocks after the cross-attention.
  mlp_dim: int = 512  # F, hidden width of the GELU MLP; 0 = attention-only blocks (Zoology).
  tie_embeddings: bool = True  # output head = embedding matrix transposed.
  dtype: str = "float32"  # compute dtype (float32|bfloat16|float16); params stay float32.
  attention: AttentionConfig = AttentionConfig()  # cross- and self-attention.

  def __post_init__(self):
    check_fields(self, "model",
                 positive=("vocab_size", "d_model", "num_latents", "num_layers"),
                 non_negative=("mlp_dim",), choices={"dtype": tuple(DTYPES)})
    check_width(self.attention, self.d_model)
    check_no_indexer(self.attention, self.name)


class PerceiverAR(nn.Module):
  """tokens_BT -> logits [B, M, V] for the last M positions, with a KV-cached decode path."""

  cfg: PerceiverARConfig

  def cache_elements(self, seq_len: int, batch: int) -> int:
    """Analytic decode-cache size in elements for `seq_len` tokens of `batch` rows."""
    return ((1 + self.cfg.num_layers) * cache_elements_per_token(self.cfg.attention)
            * seq_len * batch)

  @nn.compact
  def __call__(self, tokens_BT, *, decode=False, num_latents=None, positions_BP=None):
    """Logits of the last min(num_latents or M, T) positions (see the module docstring)."""
    if positions_BP is not None:
      raise ValueError("data.scored_positions=True is invalid for model.name='perceiver_ar': it "
                       "scores its last M positions; set data.scored_positions=False")
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    b, t = tokens_BT.shape
    m = min(cfg.num_latents if num_latents is None else num_latents, t)
    if m < 1:
      raise ValueError(f"num_latents={num_latents!r} is invalid: must be a positive integer")
    start = latent_start = 0
    if decode:
      creating = not self.has_variable("cache", "index")
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      latent_index = self.variable("cache", "latent_index", lambda: jnp.zeros((), jnp.int32))
      if creating:
        m = t  # Size the self-attention caches for every position.
      else:
        start, latent_start = index.value, latent_index.value
        index.value = start + t
        latent_index.value = latent_start + m
    pos_BT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    latent_pos_BM = jnp.broadcast_to(latent_start + jnp.arange(m, dtype=jnp.int32), (b, m))

    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, name="embed",
                     embedding_init=nn.initializers.normal(0.02))
    x_BTD = embed(tokens_BT)
    cross = make_attention(cfg.attention, cfg.d_model, dtype, name="cross_attn")
    h_BTD = projection.RMSNorm(dtype=dtype, name="cross_norm")(x_BTD)
    if decode:
      y_BMD = cross(h_BTD, pos_BT=pos_BT, decode=True)[:, t - m:]
    else:
      y_BMD = cross(h_BTD[:, t - m:], kv_BSD=h_BTD, pos_BT=pos_BT[:, t - m:], kv_pos_BS=pos_BT)
    z_BMD = x_BTD[:, t - m:] + y_BMD
    if cfg.mlp_dim:
      h_BMD = projection.RMSNorm(dtype=dtype, name="cross_mlp_norm")(z_BMD)
      z_BMD = z_BMD + Mlp(cfg.mlp_dim, dtype, name="cross_mlp")(h_BMD)
    for i in range(cfg.num_layers):
      # models/lm.py's block reads only d_model, mlp_dim, dtype and attention from its config.
      z_BMD, _ = Block(cfg, name=f"block_{i}")(z_BMD, latent_pos_BM, None, decode)
    z_BMD = projection.RMSNorm(dtype=dtype, name="final_norm")(z_BMD)
    if cfg.tie_embeddings:
      logits_BMV = embed.attend(z_BMD)
    else:
      logits_BMV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, name="head")(z_BMD)
    return logits_BMV.astype(jnp.float32)
