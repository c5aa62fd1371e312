"""The paged latent cache (kernels/paged_cache.py) and the Pallas absorbed decode kernel
(kernels/latent_decode.py) in interpret mode, against the XLA absorbed path
(`core.cached_attention` over the pages gathered contiguously, what attention/mla.py runs) and a
naive float64 reference that re-expands every head's keys and values from the latent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from latent_attention.attention.core import cached_attention
from latent_attention.kernels import paged_cache
from latent_attention.kernels.latent_decode import paged_latent_attention

from conftest import F32_EPS, assert_f32_close

C, R, NOPE, DV = 16, 8, 8, 8
BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2**-7


def _case(lengths, *, page_size=4, per_seq=3, groups=1, heads=4, shuffle=False, seed=0,
          dtype=jnp.float32):
  """Ragged sequences written into a pool through `allocate` and `write`; `shuffle` relabels
  the pages by a random permutation, so every block table is out of order."""
  rng = np.random.default_rng(seed)
  b = len(lengths)
  num_pages = b * per_seq + 2  # two pages nobody holds.
  state = paged_cache.allocate(paged_cache.init_state(b, per_seq, num_pages),
                               jnp.asarray(lengths, jnp.int32), page_size)
  if shuffle:
    perm = rng.permutation(num_pages)
    state = state._replace(block_table_BP=jnp.asarray(perm)[state.block_table_BP])
  s = max(lengths)
  pos_BT = np.minimum(np.arange(s)[None, :], np.asarray(lengths)[:, None] - 1)
  # Scores of order 1: entries of 1/sqrt(width), so exp and the sums stay well scaled.
  ckv_BTGC = rng.normal(size=(b, s, groups, C)) / np.sqrt(C)
  k_rope_BTR = rng.normal(size=(b, s, R)) / np.sqrt(R)
  # Positions past a length repeat the last one; writing the same value twice is harmless.
  ckv_BTGC = np.take_along_axis(ckv_BTGC, pos_BT[:, :, None, None], axis=1)
  k_rope_BTR = np.take_along_axis(k_rope_BTR, pos_BT[:, :, None], axis=1)
  pools = paged_cache.init_pool(num_pages, page_size, groups, C, R, dtype)
  ckv_PGSC, k_rope_PSR = paged_cache.write(*pools, state.block_table_BP, jnp.asarray(pos_BT),
                                           jnp.asarray(ckv_BTGC), jnp.asarray(k_rope_BTR))
  q_nope_BNH = rng.normal(size=(b, heads, NOPE))
  q_rope_BNR = rng.normal(size=(b, heads, R))
  w_uk_CNH = rng.normal(size=(C, heads, NOPE)) / np.sqrt(NOPE)
  w_uv_CNH = rng.normal(size=(C, heads, DV)) / np.sqrt(C)
  q_abs_BNC = np.einsum("bnh,cnh->bnc", q_nope_BNH, w_uk_CNH)
  return dict(state=state, ckv_PGSC=ckv_PGSC, k_rope_PSR=k_rope_PSR, q_abs_BNC=q_abs_BNC,
              q_nope_BNH=q_nope_BNH, q_rope_BNR=q_rope_BNR, w_uk_CNH=w_uk_CNH,
              w_uv_CNH=w_uv_CNH, lengths=list(lengths), scale=(NOPE + R) ** -0.5,
              dtype=dtype)


def _kernel(case, **blocks):
  dt = case["dtype"]
  return paged_latent_attention(
      jnp.asarray(case["q_abs_BNC"], dt), jnp.asarray(case["q_rope_BNR"], dt),
      case["ckv_PGSC"], case["k_rope_PSR"], case["state"].block_table_BP,
      case["state"].lengths_B, scale=case["scale"], interpret=True, **blocks)


def _xla(case):
  """The XLA absorbed path of attention/mla.py over the gathered pages, masked by length."""
  ckv_BGSC, k_rope_BSR = paged_cache.gather(case["ckv_PGSC"], case["k_rope_PSR"],
                                            case["state"].block_table_BP)
  mask_BTS = (jnp.arange(ckv_BGSC.shape[2])[None, None, :]
              < case["state"].lengths_B[:, None, None])
  ckv = ckv_BGSC[:, 0] if ckv_BGSC.shape[1] == 1 else ckv_BGSC
  q_abs_BTNC = jnp.asarray(case["q_abs_BNC"], jnp.float32)[:, None]
  q_rope_BTNR = jnp.asarray(case["q_rope_BNR"], jnp.float32)[:, None]
  return cached_attention((q_abs_BTNC, q_rope_BTNR), (ckv, k_rope_BSR), ckv, mask_BTS=mask_BTS,
                          scale=case["scale"])[:, 0]


def _naive(case):
  """float64, one sequence and one head at a time: each page read by its block-table entry,
  keys and values expanded per head (k = [c W_UK, k_R], v = c W_UV); returns out_BNH."""
  ckv = np.asarray(case["ckv_PGSC"], np.float64)
  k_rope = np.asarray(case["k_rope_PSR"], np.float64)
  table = np.asarray(case["state"].block_table_BP)
  page_size, groups = ckv.shape[2], ckv.shape[1]
  heads = case["q_nope_BNH"].shape[1]
  out = np.zeros((len(case["lengths"]), heads, DV))
  for b, length in enumerate(case["lengths"]):
    pages, slots = table[b, np.arange(length) // page_size], np.arange(length) % page_size
    for n in range(heads):
      c_SC = ckv[pages, n // (heads // groups), slots]
      k_SH = np.concatenate([c_SC @ case["w_uk_CNH"][:, n], k_rope[pages, slots]], axis=-1)
      q_H = np.concatenate([case["q_nope_BNH"][b, n], case["q_rope_BNR"][b, n]])
      s_S = k_SH @ q_H * case["scale"]
      p_S = np.exp(s_S - s_S.max())
      out[b, n] = (p_S / p_S.sum()) @ (c_SC @ case["w_uv_CNH"][:, n])
  return out


def _terms(case):
  """Rounded operations on an output's path: the score contraction (C + R, and NOPE when W_UK
  is folded into the query), exp and the sums over the keys (2·S), one rescale per page, and
  W_UV (C)."""
  s = case["state"].block_table_BP.shape[1] * case["ckv_PGSC"].shape[2]
  return NOPE + 2 * C + R + 2 * s + s


CASES = {
    # lengths 1 (one page, one token), 8 (a full last page), 6 and 11 (several pages).
    "ragged": dict(lengths=[1, 8, 6, 11]),
    "out_of_order": dict(lengths=[5, 12, 3], shuffle=True),
    "gla_2_groups": dict(lengths=[7, 2, 12], groups=2, shuffle=True),
    "batch_1": dict(lengths=[9]),
    "one_page": dict(lengths=[4, 2], per_seq=1),
}


@pytest.mark.parametrize("name", CASES)
def test_kernel_equals_xla_absorbed_and_naive(name):
  case = _case(**CASES[name])
  o_BNC = _kernel(case)
  # Same math, two summation orders: the score contraction, exp, the sums over keys, pages.
  assert_f32_close(o_BNC, _xla(case), terms=_terms(case))
  out_BNH = jnp.einsum("bnc,cnh->bnh", o_BNC, jnp.asarray(case["w_uv_CNH"], jnp.float32))
  naive = _naive(case)
  assert_f32_close(out_BNH, naive, terms=_terms(case))


@pytest.mark.parametrize("blocks", [dict(pages_per_block=2), dict(pages_per_block=3),
                                    dict(heads_per_block=2), dict(heads_per_block=1,
                                                                  pages_per_block=2)])
def test_block_sizes_change_nothing(blocks):
  """pages_per_block need not divide the pages per sequence (4 here, blocks of 3 pad with the
  last page, masked); heads_per_block splits each group's heads over the grid."""
  case = _case([1, 16, 9, 13], per_seq=4, groups=2, heads=8, shuffle=True)
  assert_f32_close(_kernel(case, **blocks), _kernel(case), terms=_terms(case))


def test_bfloat16_within_its_rounding():
  """bf16 pages and queries against the f32 naive path on the same (bf16-rounded) values. The
  scores are exact products summed in f32; the kernel then rounds the probabilities to bf16
  (relative 2**-8 each: at most 2**-8 · max|c| on the weighted sum) and the output (2**-8 ·
  |o|): together BF16_EPS · max|c|, plus the f32 terms."""
  case = _case([3, 12, 7], groups=2, shuffle=True, dtype=jnp.bfloat16)
  for key in ("q_abs_BNC", "q_rope_BNR"):
    case[key] = np.asarray(jnp.asarray(case[key], jnp.bfloat16), np.float64)
  o_BNC = _kernel(case)
  assert o_BNC.dtype == jnp.bfloat16
  max_c = float(jnp.abs(case["ckv_PGSC"].astype(jnp.float32)).max())
  expected = _xla(dict(case, ckv_PGSC=case["ckv_PGSC"].astype(jnp.float32),
                       k_rope_PSR=case["k_rope_PSR"].astype(jnp.float32)))
  atol = BF16_EPS * max_c + _terms(case) * F32_EPS * max_c
  np.testing.assert_allclose(np.asarray(o_BNC, np.float64), np.asarray(expected), rtol=0,
                             atol=atol)


def test_allocate_takes_the_lowest_free_pages_and_free_returns_them():
  state = paged_cache.allocate(paged_cache.init_state(3, 3, 8), jnp.array([5, 1, 9]), 4)
  np.testing.assert_array_equal(state.block_table_BP[:, :1], [[0], [2], [3]])
  np.testing.assert_array_equal(state.block_table_BP[0, :2], [0, 1])
  np.testing.assert_array_equal(state.block_table_BP[2], [3, 4, 5])
  assert int(state.taken_P.sum()) == 6
  state = paged_cache.free(state, 0, 4)
  assert int(state.lengths_B[0]) == 0 and not bool(state.taken_P[0] | state.taken_P[1])
  grown = paged_cache.allocate(state, jnp.array([0, 6, 9]), 4)  # sequence 1 takes page 0.
  np.testing.assert_array_equal(grown.block_table_BP[1, :2], [2, 0])


def test_running_out_of_pages_is_refused():
  state = paged_cache.init_state(2, 3, 4)
  with pytest.raises(ValueError, match="too few free pages"):
    paged_cache.allocate(state, jnp.array([12, 8]), 4)  # 5 pages wanted, 4 exist.
  with pytest.raises(ValueError, match="more than the 3 pages"):
    paged_cache.allocate(state, jnp.array([13, 0]), 4)
  checked = jax.jit(checkify.checkify(lambda s, n: paged_cache.allocate(s, n, 4),
                                      errors=checkify.user_checks))
  err, _ = checked(state, jnp.array([12, 8]))
  with pytest.raises(checkify.JaxRuntimeError, match="too few free pages"):
    err.throw()


def test_freeing_and_reusing_pages_leaves_other_sequences_unchanged():
  """Sequence 1 finishes; its pages go to a new sequence in its slot. Sequences 0 and 2 read the
  same outputs, bit for bit: their pages were never touched."""
  case = _case([6, 9, 5], per_seq=3, groups=2, shuffle=True)
  before = np.asarray(_kernel(case))
  state = paged_cache.free(case["state"], 1, 4)
  emptied = np.asarray(_kernel(dict(case, state=state)))
  np.testing.assert_array_equal(emptied[[0, 2]], before[[0, 2]])
  np.testing.assert_array_equal(emptied[1], 0.0)  # an empty sequence attends to nothing.
  state = paged_cache.allocate(state, jnp.array([6, 7, 5]), 4)
  freed = set(np.asarray(case["state"].block_table_BP[1, :3]).tolist())
  assert set(np.asarray(state.block_table_BP[1, :2]).tolist()) <= freed | {
      p for p in range(case["ckv_PGSC"].shape[0]) if not bool(case["state"].taken_P[p])}
  rng = np.random.default_rng(1)
  pos_BT = jnp.broadcast_to(jnp.arange(7), (1, 7))
  ckv_PGSC, k_rope_PSR = paged_cache.write(
      case["ckv_PGSC"], case["k_rope_PSR"], state.block_table_BP[1:2], pos_BT,
      jnp.asarray(rng.normal(size=(1, 7, 2, C)), jnp.float32),
      jnp.asarray(rng.normal(size=(1, 7, R)), jnp.float32))
  after = np.asarray(_kernel(dict(case, state=state, ckv_PGSC=ckv_PGSC, k_rope_PSR=k_rope_PSR)))
  np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
  assert not np.allclose(after[1], before[1])


def test_pool_bytes_is_the_latent_and_rope_key_per_token():
  ckv_PGSC, k_rope_PSR = paged_cache.init_pool(10, 16, 2, 512, 64, jnp.bfloat16)
  measured = ckv_PGSC.nbytes + k_rope_PSR.nbytes
  assert measured == paged_cache.pool_bytes(10, 16, 2, 512, 64, jnp.bfloat16)
  assert measured == 10 * 16 * (2 * 512 + 64) * 2
