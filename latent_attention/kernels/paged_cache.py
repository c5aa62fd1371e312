"""A paged, ragged latent cache (vLLM's PagedAttention, Kwon et al. 2023, arXiv 2309.06180).

Pure functions on arrays, all jittable. The cache of one layer is a pool of `num_pages` pages
of `page_size` tokens (P and S in array names; G is the latent groups, 1 for MLA, as in
attention/mla.py): c_KV pages ckv_PGSC [num_pages, G, page_size, d_c] and RoPE-key pages
k_rope_PSR [num_pages, page_size, d_R], exactly G·d_c + d_R values per token
(`pool_bytes`). A `PageState`, shared by every layer (the same token sits at the same page and
slot in every layer's pool), holds each sequence's block table (its pages in order), its
length, and which pages are taken. Sequences are ragged: each has its own length and holds
ceil(length / page_size) pages, the first entries of its row of the block table (later entries
are stale and never read). The all-zero state is the empty cache (`models.decoding.init_cache`
zero-fills every buffer).

`allocate` gives every sequence the pages a new length needs, `write` stores a chunk at its
positions, `free` returns a finished sequence's pages for reuse, `gather` lays each sequence's
pages out contiguously for the XLA decode path (the Pallas kernel, kernels/latent_decode.py,
reads the pages in place). Running out of pages is refused as `attention/cache.py` refuses an
overflow: a ValueError on concrete values, a checkify check under jit.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


class PageState(NamedTuple):
  """Bookkeeping shared by every layer's pool."""

  block_table_BP: jax.Array  # int32 [B, pages per sequence]: each sequence's pages in order.
  lengths_B: jax.Array  # int32 [B]: tokens cached per sequence.
  taken_P: jax.Array  # bool [num_pages]: held by some sequence.


def init_state(batch: int, pages_per_seq: int, num_pages: int) -> PageState:
  """Every page free, every sequence empty."""
  return PageState(jnp.zeros((batch, pages_per_seq), jnp.int32),
                   jnp.zeros((batch,), jnp.int32), jnp.zeros((num_pages,), bool))


def held(lengths_B, page_size: int):
  """Pages a sequence of each length holds."""
  return (lengths_B + page_size - 1) // page_size


def init_pool(num_pages: int, page_size: int, groups: int, d_c: int, d_r: int, dtype):
  """One layer's zeroed pages: (ckv_PGSC, k_rope_PSR)."""
  return (jnp.zeros((num_pages, groups, page_size, d_c), dtype),
          jnp.zeros((num_pages, page_size, d_r), dtype))


def pool_bytes(num_pages: int, page_size: int, groups: int, d_c: int, d_r: int, dtype) -> int:
  """Bytes of one layer's pool: (G·d_c + d_R) values per token of every page."""
  return num_pages * page_size * (groups * d_c + d_r) * np.dtype(dtype).itemsize


def _check(ok, message: str) -> None:
  """ValueError on a concrete `ok`, a checkify check (free unless checkified) on a traced one."""
  if isinstance(ok, jax.core.Tracer):
    checkify.debug_check(ok, message)
  elif not bool(ok):
    raise ValueError(message)


def allocate(state: PageState, new_lengths_B, page_size: int) -> PageState:
  """Gives each sequence the pages `new_lengths_B` tokens need (lowest free pages first) and
  sets its length; pages it holds already are kept."""
  b, per_seq = state.block_table_BP.shape
  wanted_B = held(new_lengths_B, page_size)
  _check(jnp.all(wanted_B <= per_seq), f"a sequence needs more than the {per_seq} pages of its "
         f"block table: size the paged cache for every position decoded")
  p_BP = jnp.arange(per_seq)[None, :]
  need_BP = (p_BP < wanted_B[:, None]) & (p_BP >= held(state.lengths_B, page_size)[:, None])
  need = need_BP.reshape(-1)
  num_pages = state.taken_P.shape[0]
  free_pages = num_pages - jnp.sum(state.taken_P)
  _check(jnp.sum(need) <= free_pages, "the paged cache has too few free pages for this chunk: "
         "free finished sequences or allocate more pages")
  # Free pages in ascending order (a stable sort on "taken"); the k-th page needed takes the
  # k-th free page.
  free_order = jnp.argsort(state.taken_P, stable=True).astype(jnp.int32)
  new_pages = free_order[jnp.clip(jnp.cumsum(need) - 1, 0, num_pages - 1)]
  block_table_BP = jnp.where(need_BP, new_pages.reshape(b, per_seq), state.block_table_BP)
  taken_P = state.taken_P.at[jnp.where(need, new_pages, num_pages)].set(True, mode="drop")
  return PageState(block_table_BP, new_lengths_B.astype(jnp.int32), taken_P)


def free(state: PageState, seq, page_size: int) -> PageState:
  """Returns sequence `seq`'s pages to the pool and empties it (its slot can start anew)."""
  per_seq = state.block_table_BP.shape[1]
  mine_P = jnp.where(jnp.arange(per_seq) < held(state.lengths_B[seq], page_size),
                     state.block_table_BP[seq], state.taken_P.shape[0])
  return PageState(state.block_table_BP, state.lengths_B.at[seq].set(0),
                   state.taken_P.at[mine_P].set(False, mode="drop"))


def write(ckv_PGSC, k_rope_PSR, block_table_BP, pos_BT, ckv_BTGC, k_rope_BTR):
  """Stores a chunk at positions pos_BT (pages already allocated); returns the new pools."""
  page_size = ckv_PGSC.shape[2]
  page_BT = jnp.take_along_axis(block_table_BP, pos_BT // page_size, axis=1)
  slot_BT = pos_BT % page_size
  groups = jnp.arange(ckv_PGSC.shape[1])[None, None, :]
  ckv_PGSC = ckv_PGSC.at[page_BT[..., None], groups, slot_BT[..., None]].set(
      ckv_BTGC.astype(ckv_PGSC.dtype))
  k_rope_PSR = k_rope_PSR.at[page_BT, slot_BT].set(k_rope_BTR.astype(k_rope_PSR.dtype))
  return ckv_PGSC, k_rope_PSR


def gather(ckv_PGSC, k_rope_PSR, block_table_BP):
  """Each sequence's pages in order, contiguous: (ckv_BGSC, k_rope_BSR) with S = pages per
  sequence × page_size. Slots past a sequence's length hold other data: mask them by length."""
  b, per_seq = block_table_BP.shape
  _, g, page_size, c = ckv_PGSC.shape
  ckv_BGSC = ckv_PGSC[block_table_BP].transpose(0, 2, 1, 3, 4).reshape(b, g, per_seq * page_size, c)
  return ckv_BGSC, k_rope_PSR[block_table_BP].reshape(b, per_seq * page_size, -1)
