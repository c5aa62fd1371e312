"""Decoder-only Transformer language model (pre-norm, RMSNorm, RoPE), any attention kind."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import (AttentionConfig, cache_elements_per_token,
                                        make_attention, projection)
from latent_attention.attention.config import check_width
from latent_attention.config import check_fields
from latent_attention.kernels import paged_cache

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


CLA_KINDS = ("mha", "gqa", "mqa", "mla", "gla", "gta", "tpa")  # kinds that take shared_kv.
# model.remat_policy -> what jax.checkpoint keeps of a block for the backward pass (MaxText's
# names); None: no checkpointing.
REMAT_POLICIES = {"none": None, "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Fields of `config.model` for `name='lm'`."""

  name: str = "lm"  # model family; see models.build_model.
  vocab_size: int = 65  # V.
  d_model: int = 128  # D.
  num_layers: int = 4  # Transformer blocks.
  mlp_dim: int = 512  # F, hidden width of the GELU MLP; 0 = attention-only blocks (Zoology).
  tie_embeddings: bool = True  # output head = embedding matrix transposed.
  dtype: str = "float32"  # compute dtype (float32|bfloat16|float16); params stay float32.
  # CLA (Brandon et al. 2024, arXiv 2405.12981): layers 0, s, 2s, ... compute and cache keys and
  # values; the s - 1 layers after each reuse them. 1 = every layer its own (no sharing).
  kv_share_every: int = 1
  # Decode cache of mla / gla: "contiguous" buffers per row, or "paged" pages of `page_size`
  # tokens with a block table per row (kernels/paged_cache.py; docs/design.md section 4.1).
  decode_cache: str = "contiguous"
  page_size: int = 16  # tokens per page of the paged cache.
  # Paged single-token decode steps: "xla" (pages gathered, then the XLA absorbed path),
  # "pallas" (kernels/latent_decode.py; interpret mode off TPU), "auto" (pallas on TPU).
  decode_kernel: str = "auto"
  # What the backward pass recomputes instead of keeping (jax.checkpoint on each block): "none";
  # "minimal" keeps the projections' outputs and recomputes the rest, attention's [T, S]
  # logits and probabilities included (dots_with_no_batch_dims_saveable); "full" keeps only
  # each block's input. Training memory against FLOPs (docs/design.md 7.2).
  remat_policy: str = "none"
  attention: AttentionConfig = AttentionConfig()

  def __post_init__(self):
    check_fields(self, "model", positive=("vocab_size", "d_model", "num_layers", "kv_share_every",
                                          "page_size"),
                 non_negative=("mlp_dim",), choices={"dtype": tuple(DTYPES),
                                                     "decode_cache": ("contiguous", "paged"),
                                                     "decode_kernel": ("auto", "xla", "pallas"),
                                                     "remat_policy": tuple(REMAT_POLICIES)})
    check_width(self.attention, self.d_model)  # here, not first when the model is built.
    check_paged(self)
    if self.kv_share_every > 1 and self.attention.kind not in CLA_KINDS:
      raise ValueError(f"model.kv_share_every={self.kv_share_every} is invalid with "
                       f"attention.kind={self.attention.kind!r}: layers share keys and values "
                       f"for {', '.join(CLA_KINDS)}")
    if self.kv_share_every > 1 and self.attention.index_topk:
      raise ValueError(f"model.kv_share_every={self.kv_share_every} is invalid with "
                       f"attention.index_topk={self.attention.index_topk}: each DSA layer "
                       "caches its own indexer keys (set 1)")
    if self.kv_share_every > 1 and self.attention.kind in ("mla", "gla") and (
        self.attention.mla_decode_mode == "naive"):
      raise ValueError(f"model.kv_share_every={self.kv_share_every} is invalid with "
                       "attention.mla_decode_mode='naive': its cache holds each layer's own "
                       "expanded keys; layers share the latent (latent or absorbed)")
    groups = self.attention.mla_rope_pairs.split("|")
    if self.attention.kind in ("mla", "gla") and len(groups) not in (1, self.num_layers):
      raise ValueError(f"model.attention.mla_rope_pairs has {len(groups)} '|'-separated "
                       f"layers: give one group for all layers or one per layer "
                       f"(num_layers={self.num_layers})")
    s = self.kv_share_every
    if len(groups) > 1 and any(groups[i] != groups[i - i % s] for i in range(len(groups))):
      raise ValueError(f"model.kv_share_every={s} is invalid with per-layer "
                       "model.attention.mla_rope_pairs: a layer reusing another's RoPE key "
                       "must rotate with the same pairs; give equal groups within each block "
                       "of layers sharing keys")


def check_paged(cfg: LMConfig) -> None:
  """The paged cache holds one latent (per group) and one RoPE key per token, per layer."""
  a = cfg.attention
  if cfg.decode_cache == "paged":
    why = [(a.kind not in ("mla", "gla"), f"attention.kind={a.kind!r} (mla or gla)"),
           (a.mla_decode_mode == "naive", "attention.mla_decode_mode='naive' (latent, absorbed)"),
           (a.mla_rope_heads != 1, f"attention.mla_rope_heads={a.mla_rope_heads} (1)"),
           (cfg.kv_share_every != 1, f"kv_share_every={cfg.kv_share_every} (1)"),
           (a.index_topk > 0, f"attention.index_topk={a.index_topk} (0: DSA's indexer keys "
                              "are not paged yet)")]
    for bad, what in why:
      if bad:
        raise ValueError(f"model.decode_cache='paged' is invalid with model.{what}: pages hold "
                         "each layer's own latent and one RoPE key")
  if cfg.decode_kernel == "pallas" and (cfg.decode_cache != "paged"
                                        or a.mla_decode_mode != "absorbed"):
    raise ValueError(f"model.decode_kernel='pallas' is invalid with model.decode_cache="
                     f"{cfg.decode_cache!r}, attention.mla_decode_mode={a.mla_decode_mode!r}: "
                     "the kernel is absorbed decoding over the paged cache")


class Mlp(nn.Module):
  mlp_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BTD):
    h_BTF = nn.gelu(projection.dense(x_BTD, self.mlp_dim, name="up", dtype=self.dtype))
    return projection.dense(h_BTF, x_BTD.shape[-1], name="down", dtype=self.dtype)


class Block(nn.Module):
  """x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)) unless mlp_dim is 0."""

  cfg: LMConfig
  layer: int = 0  # index in the stack (a converted MLA's RoPE pairs differ per layer).

  @nn.compact
  def __call__(self, x_BTD, pos_BT, mask_BTS, decode, shared_kv=None, pages=None):
    """Returns (x, the keys and values this layer attended to: its own or `shared_kv`); `pages`:
    the paged cache's bookkeeping (`TransformerLM._pages`), for mla / gla only."""
    dtype = DTYPES[self.cfg.dtype]
    attn = make_attention(self.cfg.attention.for_layer(self.layer), self.cfg.d_model, dtype,
                          name="attn")
    h_BTD = projection.RMSNorm(dtype=dtype, name="attn_norm")(x_BTD)
    if getattr(self.cfg, "kv_share_every", 1) > 1:  # Perceiver AR's config has no CLA.
      y_BTD, shared_kv = attn(h_BTD, pos_BT=pos_BT, mask_BTS=mask_BTS, decode=decode,
                              shared_kv=shared_kv, return_kv=True)
    else:
      y_BTD = attn(h_BTD, pos_BT=pos_BT, mask_BTS=mask_BTS, decode=decode,
                   **({"pages": pages} if pages else {}))
    x_BTD = x_BTD + y_BTD
    if self.cfg.mlp_dim:
      h_BTD = projection.RMSNorm(dtype=dtype, name="mlp_norm")(x_BTD)
      x_BTD = x_BTD + Mlp(self.cfg.mlp_dim, dtype, name="mlp")(h_BTD)
    return x_BTD, shared_kv


class TransformerLM(nn.Module):
  """tokens_BT -> logits_BTV, with a KV-cached decode path (Flax `cache` collection)."""

  cfg: LMConfig

  def cache_elements(self, seq_len: int, batch: int) -> int:
    """Analytic decode-cache size in elements for `seq_len` tokens of `batch` rows."""
    caching_layers = -(-self.cfg.num_layers // self.cfg.kv_share_every)  # CLA: every s-th.
    if self.cfg.decode_cache == "paged":  # whole pages: `init_cache` gives ceil(S / page) each.
      seq_len = -(-seq_len // self.cfg.page_size) * self.cfg.page_size
    return caching_layers * cache_elements_per_token(self.cfg.attention) * seq_len * batch

  @nn.compact
  def __call__(self, tokens_BT, *, decode=False, padding_mask_BT=None, positions_BP=None):
    """Full causal forward, or (decode=True) the next chunk after what the cache holds.

    padding_mask_BT (True = real token) masks padded keys in the full forward pass; decoding
    assumes unpadded rows that all sit at the same position (the paged cache, model.decode_cache,
    keeps a position per row). positions_BP (int [B, P]) returns logits [B, P, V] at those
    positions only: a loss that scores few positions (MQAR) then skips
    the vocabulary-sized head, which dominates the step at V = 8192, everywhere else.
    """
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    b, t = tokens_BT.shape
    start, pages = 0, None
    if decode and cfg.decode_cache == "paged":
      pages, start = self._pages(b, t)
    elif decode:
      creating = not self.has_variable("cache", "index")
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      if not creating:
        start = index.value
        index.value = start + t
    pos_BT = jnp.broadcast_to(jnp.reshape(start, (-1, 1)) + jnp.arange(t, dtype=jnp.int32),
                              (b, t))
    mask_BTS = None
    if padding_mask_BT is not None and not decode:
      mask_BTS = jnp.broadcast_to(padding_mask_BT[:, None, :], (b, t, t))
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, name="embed",
                     embedding_init=nn.initializers.normal(0.02))
    x_BTD = embed(tokens_BT)
    shared_kv = None
    block = Block
    if REMAT_POLICIES[cfg.remat_policy] is not None and not decode:
      # `decode` (argument 4, counting the module) is a Python bool: static.
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=(4,))
    for i in range(cfg.num_layers):
      x_BTD, shared_kv = block(cfg, i, name=f"block_{i}")(
          x_BTD, pos_BT, mask_BTS, decode, shared_kv if i % cfg.kv_share_every else None, pages)
    if positions_BP is not None:
      x_BTD = jnp.take_along_axis(x_BTD, positions_BP[..., None], axis=1)
      t = positions_BP.shape[1]
    x_BTD = projection.RMSNorm(dtype=dtype, name="final_norm")(x_BTD)
    if cfg.tie_embeddings:  # On flattened rows, as in attention/projection.py.
      logits_BTV = embed.attend(x_BTD.reshape(b * t, -1)).reshape(b, t, -1)
    else:
      logits_BTV = projection.dense(x_BTD, cfg.vocab_size, name="head", dtype=dtype)
    return logits_BTV.astype(jnp.float32)

  def _pages(self, b: int, t: int):
    """The paged cache's bookkeeping for a decode chunk of t tokens per row, and each row's first
    position [B]: pages for the chunk are allocated before any layer writes it. Created (model
    init on T tokens) with ceil(T / page_size) pages per row, B times that in each pool."""
    cfg = self.cfg
    ps = cfg.page_size
    creating = not self.has_variable("cache", "lengths")
    per_seq = -(-t // ps)
    state = paged_cache.init_state(b, per_seq, b * per_seq)
    table, lengths, taken = (self.variable("cache", name, lambda x=x: x)
                             for name, x in zip(("block_table", "lengths", "page_taken"), state))
    if creating:
      return {"num_pages": b * per_seq, "page_size": ps}, jnp.zeros((b,), jnp.int32)
    start_B = lengths.value
    state = paged_cache.allocate(paged_cache.PageState(table.value, start_B, taken.value),
                                 start_B + t, ps)
    table.value, lengths.value, taken.value = state
    kernel = cfg.decode_kernel
    if kernel == "auto":
      kernel = "pallas" if jax.default_backend() == "tpu" else "xla"
    return {"num_pages": taken.value.shape[0], "page_size": ps, "block_table": state[0],
            "lengths": state[1], "kernel": kernel}, start_B
