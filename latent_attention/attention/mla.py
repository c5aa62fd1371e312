"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434, section 2.1 and appendix C).

Keys and values are up-projected from one low-rank latent c_KV = RMSNorm(W_DKV h) of rank d_c,
and position enters through a decoupled RoPE key k_R = RoPE(W_KR h) that ONE head shares with
all query heads. The cache therefore needs only c_KV and k_R: d_c + d_R elements per token per
layer. `mla_rope_heads` = K_R > 1 gives each group of N / K_R query heads its own RoPE key, as
MHA2MLA (arXiv 2502.14837) keeps one per kv head of a converted GQA model, with the frequency
pairs it kept (`mla_rope_pairs`): d_c + K_R·d_R.

Kind `gla` is grouped latent attention (Zadouri, Strauss & Dao 2025, arXiv 2505.21487): G =
`gla_latent_heads` latents of d_c each (own RMSNorm statistics and scales), query head n reading
latent n // (N / G), so the cache is G·d_c + d_R and each decode step reads a shard per group;
G = 1 is MLA. Decode modes (`mla_decode_mode`), equal in exact arithmetic:

  naive     caches the expanded per-head K and V (what MHA would cache), for reference;
  latent    caches c_KV and k_R and re-expands K and V over the whole cache every step;
  absorbed  caches c_KV and k_R and never expands: W_UK is folded into the query, so scores
            are taken against c_KV and k_R directly (one shared "kv head" of width d_c + d_R,
            read from the two buffers), and W_UV is applied after the weighted sum over c_KV.
            A chunk long enough that expanding is cheaper in FLOPs (a prefill;
            `absorb_is_cheaper`) expands instead.

Decoding reads the cache through `core.cached_attention` (naive mode: heads-major [B, N, S, H]).

`index_topk` > 0 is DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer
(attention/indexer.py) picks the positions each query attends to. Its key joins the cache
(d_c + d_R + d_I per token), and a one-token decode step gathers the selected positions' c_KV
and k_R, so it reads the indexer keys and index_topk · (d_c + d_R), not the whole latent cache.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from latent_attention.attention import cache, indexer, projection
from latent_attention.attention.config import AttentionConfig, rope_pairs
from latent_attention.attention.core import (and_masks, cached_attention, causal_mask,
                                             dot_product_attention, head_mean_probs, plan_masks)
from latent_attention.attention.rope import apply_rope, inv_frequencies, softmax_scale
from latent_attention.kernels import paged_cache
from latent_attention.kernels.latent_decode import paged_latent_attention

_init = nn.initializers.lecun_normal()


class MultiHeadLatentAttention(nn.Module):
  """MLA self- or cross-attention; see the module docstring."""

  cfg: AttentionConfig
  d_model: int
  dtype: Any = jnp.float32

  @staticmethod
  def cache_elements_per_token(cfg: AttentionConfig) -> int:
    index_key = cfg.index_head_dim if cfg.index_topk else 0  # DSA's indexer key.
    if cfg.mla_decode_mode == "naive":
      return cfg.num_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim
                              ) + index_key
    return (cfg.latent_heads * cfg.kv_lora_rank + cfg.mla_rope_heads * cfg.qk_rope_head_dim
            + index_key)

  @nn.compact
  def __call__(self, x_BTD, *, kv_BSD=None, pos_BT=None, kv_pos_BS=None, mask_BTS=None,
               causal=True, decode=False, shared_kv=None, return_kv=False, pages=None):
    """See `latent_attention.attention` for the shared call signature; `pages`: decode from the
    paged cache (`models.lm.TransformerLM._pages`; kernels/paged_cache.py)."""
    cfg = self.cfg
    dense = functools.partial(projection.dense, dtype=self.dtype)
    n, c, r = cfg.num_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    nope, dv, g, kr = cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.latent_heads, cfg.mla_rope_heads
    self_attn = kv_BSD is None
    kv_BSD = x_BTD if self_attn else kv_BSD
    kv_pos_BS, mask_BTS, is_causal = plan_masks(
        self_attn=self_attn, causal=causal, pos_BT=pos_BT, kv_pos_BS=kv_pos_BS,
        mask_BTS=mask_BTS, shared_kv=shared_kv)

    if cfg.q_lora_rank:
      cq_BTC = projection.RMSNorm(dtype=self.dtype, name="q_norm")(
          dense(x_BTD, cfg.q_lora_rank, name="q_down"))
      q_BTNH = dense(cq_BTC, (n, nope + r), name="q_up")
    else:
      cq_BTC = x_BTD  # no query latent: DSA's indexer reads the input.
      q_BTNH = dense(x_BTD, (n, nope + r), name="query")
    index_qwk = None
    if cfg.index_topk:
      if not self_attn or shared_kv is not None or pos_BT is None:
        raise ValueError("DSA (model.attention.index_topk > 0) is causal self-attention with "
                         "positions and its own cache: no kv_BSD, shared_kv or pos_BT=None")
      index_qwk = indexer.LightningIndexer(cfg, self.dtype, name="indexer")(
          x_BTD, cq_BTC, pos_BT)
    q_nope_BTNH, q_rope_BTNR = q_BTNH[..., :nope], q_BTNH[..., nope:]
    inv_freq = rope_frequencies(cfg) if pos_BT is not None else None
    if inv_freq is not None:
      q_rope_BTNR = apply_rope(q_rope_BTNR, pos_BT, np.repeat(inv_freq, n // kr, axis=0)
                               if inv_freq.ndim == 2 else inv_freq)
    # d_nope = 0 (every key dim rotated, e.g. a converted model keeping all RoPE pairs): no W_UK.
    # Query head n reads latent head n // (N / G) through its own slice W_UK[:, n].
    w_uk_CNH = (self.param("k_up", _init, (c, n, nope)).astype(self.dtype) if nope
                else jnp.zeros((c, n, 0), self.dtype))
    w_uv_CNH = self.param("v_up", _init, (c, n, dv)).astype(self.dtype)
    scale = softmax_scale(nope + r, cfg)
    q_BTNH = jnp.concatenate([q_nope_BTNH, q_rope_BTNR], axis=-1)

    if shared_kv is None:  # this layer computes (and caches) its own latent and RoPE key.
      ckv_BSL = dense(kv_BSD, g * c, name="kv_down")  # L = G·d_c: G latent heads (GLA).
      if cfg.mla_kv_norm:
        ckv_BSL = projection.RMSNorm(dtype=self.dtype, groups=g, name="kv_norm")(ckv_BSL)
      ckv_BSGC = ckv_BSL.reshape(*ckv_BSL.shape[:2], g, c)
      # [B, S, K_R, d_R]; the kernel stays [D, d_R] with one RoPE key (DeepSeek's checkpoints).
      k_rope_BSKR = dense(kv_BSD, (kr, r) if kr > 1 else r, name="k_rope").reshape(
          *kv_BSD.shape[:2], kr, r)
      if inv_freq is not None:
        k_rope_BSKR = apply_rope(k_rope_BSKR, kv_pos_BS, inv_freq)
      if decode and pages:
        cached = self._paged(pos_BT, ckv_BSGC, k_rope_BSKR[:, :, 0], pages)
      else:
        cached = decode and self._cache(pos_BT, ckv_BSGC, k_rope_BSKR, w_uk_CNH, w_uv_CNH,
                                        index_qwk)
      shared_kv = {"cache": cached} if cached else {"ckv": ckv_BSGC, "k_rope": k_rope_BSKR}
    if "cache" not in shared_kv:
      ckv_BSGC = shared_kv["ckv"]
      k_rope_BSNR = _per_query_head(shared_kv["k_rope"], n, axis=2)
      k_BSNH = jnp.concatenate([_expand(ckv_BSGC, w_uk_CNH), k_rope_BSNR], axis=-1)
      if index_qwk is not None:  # DSA: the indexer's choice masks the keys.
        q_i, w_i, k_i = index_qwk
        mask_BTS = self._sparse_mask(indexer.scores(q_i, w_i, k_i), and_masks(
            mask_BTS, causal_mask(pos_BT, pos_BT) if is_causal else None), q_BTNH, k_BSNH,
            scale)
        is_causal = False
      out_BTNH = dot_product_attention(
          q_BTNH, k_BSNH, _expand(ckv_BSGC, w_uv_CNH), mask_BTS=mask_BTS, is_causal=is_causal,
          scale=scale, implementation=cfg.implementation)
      y_BTD = dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
      return (y_BTD, shared_kv) if return_kv else y_BTD
    buffers, mask_BTS = shared_kv["cache"]
    t = x_BTD.shape[1]
    if index_qwk is not None and cfg.index_mode == "sparse":
      buffers, mask_BTS = _sparse_cache(cfg, buffers, mask_BTS, index_qwk, t)
    if "ckv_PGSC" in buffers:  # a decode step over the pages, by the Pallas kernel.
      q_abs_BNC = jnp.einsum("BNH,CNH->BNC", q_nope_BTNH[:, 0], w_uk_CNH)
      o_BNC = paged_latent_attention(
          q_abs_BNC, q_rope_BTNR[:, 0], buffers["ckv_PGSC"], buffers["k_rope_PSR"],
          pages["block_table"], pages["lengths"], scale=float(scale),
          interpret=jax.default_backend() != "tpu")
      out_BTNH = jnp.einsum("BNC,CNH->BNH", o_BNC, w_uv_CNH)[:, None]
    elif cfg.mla_decode_mode == "naive":
      out_BTNH = cached_attention((q_BTNH,), (buffers["cached_key"],), buffers["cached_value"],
                                  mask_BTS=mask_BTS, scale=scale)
    elif cfg.mla_decode_mode == "absorbed" and absorb_is_cheaper(cfg, t):
      # Scores and the weighted sum against each query head's latent head, [B, (G,) S, d_c].
      ckv = buffers["cached_ckv"]
      q_parts, k_parts = (q_rope_BTNR,), (buffers["cached_k_rope"],)
      if nope:  # d_nope = 0: every score comes from the RoPE keys.
        q_abs_BTNC = jnp.einsum("BTNH,CNH->BTNC", q_nope_BTNH, w_uk_CNH)
        q_parts, k_parts = (q_abs_BTNC, *q_parts), (ckv, *k_parts)
      o_BTNC = cached_attention(q_parts, k_parts, ckv, mask_BTS=mask_BTS, scale=scale)
      out_BTNH = jnp.einsum("BTNC,CNH->BTNH", o_BTNC, w_uv_CNH)
    else:  # latent, or a chunk long enough that expanding K and V is cheaper (a prefill).
      ckv = buffers["cached_ckv"]
      out_BTNH = cached_attention(
          (q_nope_BTNH, q_rope_BTNR),
          (_expand_cached(ckv, w_uk_CNH), buffers["cached_k_rope"]),
          _expand_cached(ckv, w_uv_CNH), mask_BTS=mask_BTS, scale=scale)
    y_BTD = dense(out_BTNH, self.d_model, axis=(-2, -1), name="out")
    return (y_BTD, shared_kv) if return_kv else y_BTD

  def _cache(self, pos_BT, ckv_BSGC, k_rope_BSKR, w_uk_CNH, w_uv_CNH, index_qwk):
    """Writes this chunk into the cache (see `cache.update_heads`: a single latent or RoPE key
    is [B, S, X], several heads-major [B, G|K_R, S, X]); naive mode caches expanded heads.
    DSA adds the indexer keys, [B, S, d_I]."""
    index_key = {} if index_qwk is None else {"cached_index_key": index_qwk[2][:, :, None]}
    if self.cfg.mla_decode_mode != "naive":
      return cache.update_heads(self, pos_BT, cached_ckv=ckv_BSGC, cached_k_rope=k_rope_BSKR,
                                **index_key)
    k_rope_BSNR = _per_query_head(k_rope_BSKR, self.cfg.num_heads, axis=2)
    key_BSNH = jnp.concatenate([_expand(ckv_BSGC, w_uk_CNH), k_rope_BSNR], axis=-1)
    return cache.update_heads(self, pos_BT, cached_key=key_BSNH,
                              cached_value=_expand(ckv_BSGC, w_uv_CNH), **index_key)

  def _sparse_mask(self, scores_BTS, visible_BTS, q_BTNH, k_BSNH, scale):
    """DSA's attention mask in a full forward pass: the top index_topk visible positions
    (index_mode 'sparse') or all of them ('dense_warmup'). With the `losses` collection mutable
    (training), sows the indexer's KL to the main attention over that mask (paper, eq. 3-4)."""
    cfg = self.cfg
    if visible_BTS is None:
      visible_BTS = jnp.ones(scores_BTS.shape, bool)
    mask_BTS = visible_BTS
    if cfg.index_mode == "sparse":
      mask_BTS = visible_BTS & indexer.selected_mask(
          *indexer.select(scores_BTS, visible_BTS, cfg.index_topk), scores_BTS.shape[-1])
    if self.is_mutable_collection("losses"):
      target_BTS = head_mean_probs(jax.lax.stop_gradient(q_BTNH), jax.lax.stop_gradient(k_BSNH),
                                   mask_BTS=mask_BTS, scale=scale)
      self.sow("losses", "indexer_kl", indexer.kl_loss(target_BTS, scores_BTS, mask_BTS))
    return mask_BTS

  def _paged(self, pos_BT, ckv_BSGC, k_rope_BSR, pages):
    """Writes this chunk into this layer's pages. Returns the pools for the kernel (a one-token
    absorbed step with decode_kernel 'pallas'), else the pages gathered into contiguous buffers
    and their causal mask for the XLA paths; None while the cache is being created."""
    cfg = self.cfg
    created = self.has_variable("cache", "ckv_PGSC")

    def pool(i):  # called only when the cache is created.
      return paged_cache.init_pool(pages["num_pages"], pages["page_size"], cfg.latent_heads,
                                   cfg.kv_lora_rank, cfg.qk_rope_head_dim, ckv_BSGC.dtype)[i]

    ckv = self.variable("cache", "ckv_PGSC", pool, 0)
    k_rope = self.variable("cache", "k_rope_PSR", pool, 1)
    if not created:
      return None
    ckv.value, k_rope.value = paged_cache.write(ckv.value, k_rope.value, pages["block_table"],
                                                pos_BT, ckv_BSGC, k_rope_BSR)
    t = pos_BT.shape[1]
    if pages["kernel"] == "pallas" and t == 1 and cfg.mla_decode_mode == "absorbed":
      return {"ckv_PGSC": ckv.value, "k_rope_PSR": k_rope.value}, None
    ckv_BGSC, k_rope_BSR = paged_cache.gather(ckv.value, k_rope.value, pages["block_table"])
    s = k_rope_BSR.shape[1]
    buffers = {"cached_ckv": ckv_BGSC[:, 0] if cfg.latent_heads == 1 else ckv_BGSC,
               "cached_k_rope": k_rope_BSR}
    return buffers, causal_mask(pos_BT, jnp.arange(s)[None, :])


def _sparse_cache(cfg, buffers, mask_BTS, index_qwk, t):
  """DSA's view of the decode cache for a chunk of t queries: the indexer's top index_topk
  visible slots. One query (a decode step, latent or absorbed) gathers their c_KV and k_R, so
  it reads only those (mask [B, 1, K]); a longer chunk or the naive cache masks the rest."""
  q_i, w_i, _ = index_qwk
  scores_BTS = indexer.scores(q_i, w_i, buffers["cached_index_key"])
  idx_BTK, valid_BTK = indexer.select(scores_BTS, mask_BTS, cfg.index_topk)
  if t > 1 or cfg.mla_decode_mode == "naive":
    return buffers, mask_BTS & indexer.selected_mask(idx_BTK, valid_BTK, mask_BTS.shape[-1])
  idx_BK1 = idx_BTK[:, 0, :, None]
  return {"cached_ckv": jnp.take_along_axis(buffers["cached_ckv"], idx_BK1, axis=1),
          "cached_k_rope": jnp.take_along_axis(buffers["cached_k_rope"], idx_BK1, axis=1)
          }, valid_BTK


def _expand(ckv_BSGC, w_CNH):
  """Per-head keys or values [B, S, N, H] from G latent heads: head n reads n // (N / G)."""
  b, s, g, c = ckv_BSGC.shape
  if g == 1:  # One 2-D GEMM: XLA:CPU's fastest form (projection.apply_kernel).
    return projection.apply_kernel(ckv_BSGC[:, :, 0], w_CNH)
  _, n, h = w_CNH.shape
  return jnp.einsum("BSGC,CGMH->BSGMH", ckv_BSGC,
                    w_CNH.reshape(c, g, n // g, h)).reshape(b, s, n, h)


def _expand_cached(ckv, w_CNH):
  """`_expand` of a cache buffer ([B, S, d_c], or [B, G, S, d_c]), heads-major [B, N, S, H]."""
  if ckv.ndim == 3:
    return jnp.einsum("BSC,CNH->BNSH", ckv, w_CNH)
  b, g, s, c = ckv.shape
  _, n, h = w_CNH.shape
  return jnp.einsum("BGSC,CGMH->BGMSH", ckv, w_CNH.reshape(c, g, n // g, h)).reshape(b, n, s, h)


def rope_frequencies(cfg: AttentionConfig) -> np.ndarray:
  """RoPE frequencies of the decoupled keys: [d_R/2] shared by every RoPE key, or
  [K_R, d_R/2] with `mla_rope_pairs` (pair j of a head_dim-wide RoPE turns at its θ^(-2j/H))."""
  if not cfg.mla_rope_pairs:
    return inv_frequencies(cfg.qk_rope_head_dim, cfg)
  layers = rope_pairs(cfg)
  if len(layers) > 1:
    raise ValueError(f"model.attention.mla_rope_pairs={cfg.mla_rope_pairs!r} is invalid here: "
                     "per-layer pairs ('|') are for the LM, which gives each layer its own")
  return inv_frequencies(cfg.head_dim, cfg)[np.asarray(layers[0])]


def _per_query_head(x, n: int, axis: int):
  """Repeats K_R RoPE-key heads along `axis` to the N query heads (group n // (N / K_R))."""
  kr = x.shape[axis]
  if kr == 1:
    return jnp.broadcast_to(x, (*x.shape[:axis], n, *x.shape[axis + 1:]))
  return jnp.repeat(x, n // kr, axis=axis)


def absorb_is_cheaper(cfg: AttentionConfig, t: int) -> bool:
  """Absorbed attention of t queries takes fewer FLOPs than expanding K and V over the cache.

  Per cached token, absorbed costs t·N·(2·d_c + d_R) (scores and sum against the latent);
  expanding costs N·d_c·(d_nope + d_v) once, then t·N·(d_nope + d_R + d_v). Decoding (t = 1)
  absorbs; a long prefill expands, as a full forward pass does.
  """
  c, nope, dv = cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.v_head_dim
  return t * (2 * c - nope - dv) < c * (nope + dv)

