"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2-Exp: `Indexer` in
inference/model.py; the paper DeepSeek_V3_2.pdf, section 2.1).

Beside MLA, per query t it scores every visible position s cheaply and keeps the `index_topk`
best; MLA's softmax then runs over those alone:

  q_h(t) = W_q_idx c_Q(t)          H_I = index_n_heads heads of d_I = index_head_dim
  k(s)   = LayerNorm(W_k_idx h(s))  one key per token: the only thing the indexer caches
  w(t)   = W_w h(t) · H_I^-1/2
  score(t, s) = Σ_h w_h(t) · ReLU(q_h(t) · k(s)) · d_I^-1/2

with RoPE on the first d_R = qk_rope_head_dim dims of each q_h and of k (c_Q is MLA's compressed
query latent; a model without query compression, q_lora_rank = 0, reads h instead). The
reference rotates q and k by a Hadamard matrix and quantises them to fp8: the rotation is
orthonormal, so in exact arithmetic no score changes, and fp8 is a speed device; here the math
runs in the model's dtype, scores in float32.

The indexer reads the block input through `stop_gradient` in every mode: its gradient comes
from its KL loss alone (the paper detaches it in sparse training; in the dense warm-up the main
model is frozen, or, with train.freeze_main=False, trained by the LM loss alone), and the
top-k choice passes no gradient to the indexer either.

Ties: ReLU makes exact-zero scores common, and a selection that depends on the width of the
scored row (the prompt's length in prefill, the cache's in decode) makes prefill and decode
attend to different sets. Here the lowest position wins a tie: `jax.lax.top_k` returns equal
values in index order, invisible positions score -inf and so come after every visible one, and
-0.0 is made +0.0 first (a float's sign of zero would otherwise order two equal scores).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from latent_attention.attention import projection
from latent_attention.attention.config import AttentionConfig
from latent_attention.attention.rope import apply_rope, inv_frequencies


class LightningIndexer(nn.Module):
  """The indexer's queries, head weights and keys for one chunk; see the module docstring."""

  cfg: AttentionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h_BTD, cq_BTC, pos_BT):
    """h_BTD: the block's (normed) input; cq_BTC: MLA's query latent, or h_BTD.
    Returns (q_BTIH, w_BTI, k_BTH) with I = index_n_heads, H = index_head_dim."""
    cfg = self.cfg
    heads, dim, r = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
    h_BTD, cq_BTC = jax.lax.stop_gradient(h_BTD), jax.lax.stop_gradient(cq_BTC)
    q_BTIH = projection.dense(cq_BTC, (heads, dim), name="q", dtype=self.dtype)
    k_BTH = nn.LayerNorm(dtype=self.dtype, name="k_norm")(
        projection.dense(h_BTD, dim, name="k", dtype=self.dtype))
    w_BTI = projection.dense(h_BTD, heads, name="weights", dtype=self.dtype) * heads ** -0.5
    inv_freq = inv_frequencies(r, cfg)
    q_BTIH = jnp.concatenate([apply_rope(q_BTIH[..., :r], pos_BT, inv_freq), q_BTIH[..., r:]], -1)
    k_BTH = jnp.concatenate([apply_rope(k_BTH[:, :, None, :r], pos_BT, inv_freq)[:, :, 0],
                             k_BTH[..., r:]], -1)
    return q_BTIH, w_BTI, k_BTH


def scores(q_BTIH, w_BTI, k_BSH):
  """score(t, s) = Σ_h w_h(t) ReLU(q_h(t) · k(s)) / sqrt(d_I), float32 [B, T, S]."""
  dots_BTIS = jnp.einsum("BTIH,BSH->BTIS", q_BTIH, k_BSH, preferred_element_type=jnp.float32)
  return jnp.einsum("BTIS,BTI->BTS", jax.nn.relu(dots_BTIS), w_BTI.astype(jnp.float32)) * (
      q_BTIH.shape[-1] ** -0.5)


def select(scores_BTS, visible_BTS, k: int):
  """The top min(k, S) visible positions per query, the lowest position winning ties.

  Returns (idx_BTK, valid_BTK): positions in descending score, and whether each is visible (a
  query that sees fewer than k positions gets invisible ones too, marked invalid).
  """
  k = min(k, scores_BTS.shape[-1])
  ranked_BTS = jnp.where(visible_BTS, jnp.where(scores_BTS == 0, 0.0, scores_BTS), -jnp.inf)
  _, idx_BTK = jax.lax.top_k(jax.lax.stop_gradient(ranked_BTS), k)
  return idx_BTK, jnp.take_along_axis(visible_BTS, idx_BTK, axis=-1)


def selected_mask(idx_BTK, valid_BTK, s: int):
  """The boolean [B, T, S] mask of the selected visible positions (a scatter, not one-hots)."""
  b, t, _ = idx_BTK.shape  # top_k's positions are distinct: no two writes meet.
  return jnp.zeros((b, t, s), bool).at[
      jnp.arange(b)[:, None, None], jnp.arange(t)[None, :, None], idx_BTK].set(valid_BTK)


def kl_loss(target_BTS, scores_BTS, mask_BTS):
  """KL(target ‖ softmax(scores over mask)), averaged over queries (paper, eq. 3 and 4).

  target_BTS: the main attention's distribution summed over heads and L1-normalised over the
  same positions (zero outside the mask); the gradient reaches only the scores.
  """
  logits_BTS = jnp.where(mask_BTS, scores_BTS, jnp.finfo(jnp.float32).min)
  log_p_BTS = jax.nn.log_softmax(logits_BTS, axis=-1)
  target_BTS = jax.lax.stop_gradient(target_BTS.astype(jnp.float32))
  terms_BTS = jnp.where(target_BTS > 0, target_BTS * (
      jnp.log(jnp.where(target_BTS > 0, target_BTS, 1.0)) - log_p_BTS), 0.0)
  return terms_BTS.sum(-1).mean()
