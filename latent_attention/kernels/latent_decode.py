"""A Pallas kernel for absorbed latent (MLA / GLA) decode attention over a paged cache.

One query token per sequence (a decode step). W_UK is already folded into the query
(q_abs = q_nope W_UK, docs/design.md section 3.3), so each query head scores the cached latent
c_KV and the shared RoPE key k_R directly and sums the latent itself: the output is in latent
space [B, N, d_c] and the caller applies W_UV. GLA is the same kernel per latent group: query
head n reads group n // (N / G).

The grid walks each sequence's block table a block of `pages_per_block` pages at a time and
keeps an online softmax (running max m, sum l, and accumulator; Milakov & Gimelshein 2018,
arXiv 1805.02867, as in FlashAttention), so only one block of pages is resident. The block table
and the lengths are scalar-prefetched (`PrefetchScalarGridSpec`, the idiom of jax's
`pallas/ops/tpu/paged_attention` and tpu-inference's `mla_ragged_paged_attention`) so each
page's block index is read before its copy starts; a block past a sequence's length maps to the
sequence's last page (the pipeline sees the same block index and skips the copy) and skips its
compute. On CPU the kernel runs in Pallas's interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Masked scores: finite, so a row whose block is partly masked never computes inf - inf.
_MASKED = -1e30


def _kernel(block_table_ref, lengths_ref, q_abs_ref, q_rope_ref, *refs, scale: float,
            page_size: int, pages_per_block: int):
  """One (sequence b, group g, head block, page block p) step of the online softmax; N here is
  the heads of one block, S the tokens of one page."""
  ckv_refs, k_rope_refs = refs[:pages_per_block], refs[pages_per_block:2 * pages_per_block]
  o_ref, m_ref, l_ref, acc_ref = refs[2 * pages_per_block:]
  b, p = pl.program_id(0), pl.program_id(3)
  length = lengths_ref[b]

  @pl.when(p == 0)
  def _():
    m_ref[...] = jnp.full(m_ref.shape, _MASKED, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  block_start = p * pages_per_block * page_size

  @pl.when(block_start < length)
  def _():
    q_abs_NC, q_rope_NR = q_abs_ref[...], q_rope_ref[...]
    for j in range(pages_per_block):  # static: each page is its own input block.
      ckv_SC, k_rope_SR = ckv_refs[j][...], k_rope_refs[j][...]
      s_NS = (jax.lax.dot_general(q_abs_NC, ckv_SC, (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)
              + jax.lax.dot_general(q_rope_NR, k_rope_SR, (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32)) * scale
      key_pos = block_start + j * page_size + jax.lax.broadcasted_iota(
          jnp.int32, s_NS.shape, 1)
      s_NS = jnp.where(key_pos < length, s_NS, _MASKED)
      m_prev = m_ref[...]
      m_new = jnp.maximum(m_prev, s_NS.max(axis=1, keepdims=True))
      alpha = jnp.exp(m_prev - m_new)
      p_NS = jnp.exp(s_NS - m_new)  # masked keys: exp(-1e30 - m) = 0 (m is a real score).
      l_ref[...] = alpha * l_ref[...] + p_NS.sum(axis=1, keepdims=True)
      acc_ref[...] = alpha * acc_ref[...] + jax.lax.dot_general(
          p_NS.astype(ckv_SC.dtype), ckv_SC, (((1,), (0,)), ((), ())),
          preferred_element_type=jnp.float32)
      m_ref[...] = m_new

  @pl.when(p == pl.num_programs(3) - 1)
  def _():
    l = l_ref[...]  # 0 only for an empty sequence (length 0): its output is 0.
    o_ref[...] = (acc_ref[...] / jnp.where(l > 0, l, 1.0)).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "pages_per_block", "heads_per_block",
                                             "interpret"))
def paged_latent_attention(q_abs_BNC, q_rope_BNR, ckv_PGSC, k_rope_PSR, block_table_BP,
                           lengths_B, *, scale: float, pages_per_block: int = 1,
                           heads_per_block: int | None = None, interpret: bool = False):
  """Absorbed latent decode attention over a paged cache; returns o_BNC (before W_UV).

  q_abs_BNC: the queries with W_UK folded in; q_rope_BNR: their RoPE parts. ckv_PGSC: the
  latent pages [num_pages, G, page_size, d_c]; k_rope_PSR: the RoPE-key pages [num_pages,
  page_size, d_R]. block_table_BP: int32 [B, pages per sequence], the pages of sequence b in
  order (entries past its pages are never read). lengths_B: int32 tokens cached per
  sequence. pages_per_block: pages per grid step (the tpu-inference kernel's
  num_kv_pages_per_block); heads_per_block: query heads per grid step (default all N / G of a
  group; a divisor of N / G, on TPU also a multiple of 8). interpret: Pallas's interpret mode
  (any backend, CPU included). The defaults are tested, not tuned: tuning needs a TPU.
  """
  b, n, c = q_abs_BNC.shape
  _, g, page_size, _ = ckv_PGSC.shape
  r = q_rope_BNR.shape[-1]
  pages = block_table_BP.shape[1]
  if n % g:
    raise ValueError(f"{n} query heads do not divide into {g} latent groups")
  per_group = n // g
  hb = heads_per_block or per_group
  if per_group % hb:
    raise ValueError(f"heads_per_block={hb} does not divide the {per_group} heads per group")
  blocks = -(-pages // pages_per_block)
  q_abs_BGMC = q_abs_BNC.reshape(b, g, per_group, c)
  q_rope_BGMR = q_rope_BNR.reshape(b, g, per_group, r)

  def page(bi, pi, j, block_table, lengths):
    """Page j of block pi of sequence bi; past the last written page, the last one again. The
    table is flat: SMEM pads a 2-D array's last axis (tpu-inference flattens it too)."""
    # lax.div, not //: floor division lowers through `sign`, whose Mosaic rule asks the local
    # device's TPU generation (none when compiling on CPU for a topology); both are >= 0 here.
    last = jnp.maximum(jax.lax.div(lengths[bi] + page_size - 1, page_size) - 1, 0)
    return block_table[bi * pages + jnp.minimum(pi * pages_per_block + j, last)]

  ckv_specs = [pl.BlockSpec((None, None, page_size, c),
                            lambda bi, gi, hi, pi, bt, ln, j=j: (page(bi, pi, j, bt, ln), gi, 0, 0))
               for j in range(pages_per_block)]
  rope_specs = [pl.BlockSpec((None, page_size, r),
                             lambda bi, gi, hi, pi, bt, ln, j=j: (page(bi, pi, j, bt, ln), 0, 0))
                for j in range(pages_per_block)]
  q_spec = lambda width: pl.BlockSpec((None, None, hb, width),
                                      lambda bi, gi, hi, pi, bt, ln: (bi, gi, hi, 0))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, g, per_group // hb, blocks),
      in_specs=[q_spec(c), q_spec(r), *ckv_specs, *rope_specs],
      out_specs=q_spec(c),
      scratch_shapes=[pltpu.VMEM((hb, 1), jnp.float32), pltpu.VMEM((hb, 1), jnp.float32),
                      pltpu.VMEM((hb, c), jnp.float32)])
  o_BGMC = pl.pallas_call(
      functools.partial(_kernel, scale=scale, page_size=page_size,
                        pages_per_block=pages_per_block),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((b, g, per_group, c), q_abs_BNC.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(block_table_BP.reshape(-1).astype(jnp.int32), lengths_B.astype(jnp.int32), q_abs_BGMC,
    q_rope_BGMR, *([ckv_PGSC] * pages_per_block), *([k_rope_PSR] * pages_per_block))
  return o_BGMC.reshape(b, n, c)
