"""The one attention core: softmax(Q Kᵀ · scale) V with grouped heads.

Every mechanism in this package ends here; they differ only in how they build Q, K, V and what
they cache. Grouped heads (N query heads over K kv heads) are handled by reshaping the queries
to [B, T, K, G, H], never by repeating K/V. Logits and softmax are float32 whatever the input
dtype. On GPU/TPU, where its shape rules hold, `jax.nn.dot_product_attention` is used (it
selects cuDNN flash attention on GPU for bf16/fp16); otherwise (value dim != qk dim, as in MLA,
or on CPU) an einsum path. On XLA:CPU the einsum path, kept 4-D when every query head has its
own kv head, made the nanogpt_cpu train step ~8% faster than `jax.nn.dot_product_attention`.

Decoding reads a heads-major cache [B, K, S, H] through `cached_attention`: each head's keys are
contiguous, so one query per head against the cache is a batched matrix-vector product. XLA:CPU
ran it ~8x faster than the same einsum against a [B, S, K, H] cache (docs/design.md, "Decode
layout"); prompts longer than `QUERY_CHUNK` are attended in chunks of queries so the logits of a
long prefill never exceed [B, N, QUERY_CHUNK, S].
"""

import contextvars

import jax
import jax.numpy as jnp

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
QUERY_CHUNK = 512  # queries per block in cached_attention (bounds a long prefill's logits).


def causal_mask(q_pos_BT: jax.Array, k_pos_BS: jax.Array) -> jax.Array:
  """mask_BTS[b, t, s] = key position s is visible from query position t."""
  return q_pos_BT[:, :, None] >= k_pos_BS[:, None, :]


def and_masks(*masks_BTS):
  """AND of the given boolean masks, skipping None; None if all are None."""
  masks_BTS = [m for m in masks_BTS if m is not None]
  if not masks_BTS:
    return None
  out_BTS = masks_BTS[0]
  for m in masks_BTS[1:]:
    out_BTS = out_BTS & m
  return out_BTS


def plan_masks(*, self_attn, causal, pos_BT, kv_pos_BS, mask_BTS, shared_kv=None):
  """Resolves the shared call arguments of every attention module.

  Returns (kv_pos_BS, mask_BTS, is_causal): self-attention reuses the query positions and lets
  the core apply the causal mask (cuDNN can then skip masked blocks); causal cross-attention
  (Perceiver AR) masks by position, so it needs pos_BT and kv_pos_BS. Keys and values shared
  from another layer (`shared_kv`, CLA) come from self-attention over the same positions.
  """
  if shared_kv is not None and not self_attn:
    raise ValueError("shared_kv (cross-layer KV sharing, model.kv_share_every) is for "
                     "self-attention; this call also got kv_BSD")
  if self_attn:
    return pos_BT, mask_BTS, causal
  if causal:
    if pos_BT is None or kv_pos_BS is None:
      raise ValueError("causal cross-attention needs pos_BT and kv_pos_BS")
    mask_BTS = and_masks(mask_BTS, causal_mask(pos_BT, kv_pos_BS))
  return kv_pos_BS, mask_BTS, False


# The platform `auto` picks for: the default backend's, unless bench/preflight.py is tracing a
# step for the TPU ('tpu') or GPU ('cuda': XLA attention, as cuDNN needs its libraries to
# compile) it compiles for on a CPU.
target_platform = contextvars.ContextVar("target_platform", default=None)


def _pick_implementation(implementation, q_BTNH, v_BSKH, mask_BTS, is_causal):
  if implementation != "auto":
    return implementation
  platform = target_platform.get() or jax.default_backend()
  if q_BTNH.shape[-1] != v_BSKH.shape[-1] or platform == "cpu":
    return "einsum"
  if (platform == "gpu" and q_BTNH.dtype in _CUDNN_DTYPES and mask_BTS is None
      and q_BTNH.shape[-1] % 8 == 0 and q_BTNH.shape[-1] <= 128 and is_causal):
    return "cudnn"
  return "xla"


def _einsum_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale):
  b, t, n, h = q_BTNH.shape
  num_kv = k_BSKH.shape[2]
  if num_kv == n:  # No grouping: 4-D logits (a unit G axis cost XLA:CPU copies, ~4% of a step).
    logits_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH, k_BSKH,
                             preferred_element_type=jnp.float32) * scale
    if mask_BTS is not None:
      logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, jnp.finfo(jnp.float32).min)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(v_BSKH.dtype)
    return jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSKH)
  probs_BKGTS = _grouped_probs(q_BTNH, k_BSKH, mask_BTS, scale).astype(v_BSKH.dtype)
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS, v_BSKH)
  return out_BTKGH.reshape(b, t, n, v_BSKH.shape[-1])


def _grouped_probs(q_BTNH, k_BSKH, mask_BTS, scale):
  """Softmax over keys of the masked logits, float32 [B, K, G, T, S] (query head k·G + g)."""
  b, t, n, h = q_BTNH.shape
  num_kv = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(b, t, num_kv, n // num_kv, h)
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                            preferred_element_type=jnp.float32) * scale
  if mask_BTS is not None:
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS,
                             jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BKGTS, axis=-1)


def head_mean_probs(q_BTNH, k_BSKH, *, mask_BTS, scale):
  """The attention distribution averaged over query heads, float32 [B, T, S]: the target DSA's
  indexer learns (DeepSeek-V3.2, eq. 3: summed over heads, then L1-normalised)."""
  return _grouped_probs(q_BTNH, k_BSKH, mask_BTS, scale).mean(axis=(1, 2))


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, *, mask_BTS=None, is_causal=False,
                          scale=None, implementation="auto"):
  """Attention of N query heads over K = k_BSKH.shape[2] kv heads (N % K == 0).

  Args:
    q_BTNH: queries. k_BSKH: keys (same H as q). v_BSKH: values (any head dim).
    mask_BTS: optional boolean mask, True where a query may attend to a key.
    is_causal: additionally apply the lower-triangular mask (T == S, aligned at 0).
    scale: logit scale, default 1/sqrt(H).
    implementation: auto|xla|cudnn|einsum.
  Returns:
    out_BTNH with the value head dim.
  """
  n, num_kv = q_BTNH.shape[2], k_BSKH.shape[2]
  if n % num_kv:
    raise ValueError(f"query heads N={n} must be a multiple of kv heads K={num_kv}")
  scale = q_BTNH.shape[-1] ** -0.5 if scale is None else scale
  impl = _pick_implementation(implementation, q_BTNH, v_BSKH, mask_BTS, is_causal)
  if impl == "einsum":
    if is_causal:
      t, s = q_BTNH.shape[1], k_BSKH.shape[1]
      tri_TS = jnp.tril(jnp.ones((t, s), bool))[None]
      mask_BTS = tri_TS if mask_BTS is None else mask_BTS & tri_TS
    return _einsum_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale)
  mask = None if mask_BTS is None else mask_BTS[:, None]
  return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask, is_causal=is_causal,
                                      scale=scale, implementation=impl)


def cached_attention(q_parts, k_parts, v_BKSH, *, mask_BTS, scale, logits_BNTS=None):
  """Attention of N query heads over a decode cache in the heads-major layout.

  Args:
    q_parts: queries [B, T, N, H_i], one per key part.
    k_parts: keys [B, K_i, S, H_i] with K_i dividing N, or [B, S, H_i] for one head shared by
      all queries. The logits are the sum over parts of q_i · k_i, so a key kept as two cache
      buffers (MLA's latent and its RoPE key) is never concatenated or broadcast.
    v_BKSH: values [B, K, S, H_v], or [B, S, H_v] (K = 1); or a function of the unnormalised
      probabilities p_BNTS (float32) giving their weighted sum out_BTNH, linear in p: values the
      caller contracts its own way (TPA's factors, never expanded). The core normalises.
    mask_BTS: True where query t may see cache slot s.
    scale: logit scale.
    logits_BNTS: optional unscaled logits added to the parts' (a key the caller contracts its
      own way, e.g. `rope.lowrank_key_logits`); q_parts/k_parts may then be empty.
  Returns:
    out_BTNH with the value head dim.
  """
  b, t, n = q_parts[0].shape[:3] if q_parts else logits_BNTS.transpose(0, 2, 1, 3).shape[:3]
  num_kv = 1 if callable(v_BKSH) or v_BKSH.ndim == 3 else v_BKSH.shape[1]
  g = n // num_kv

  def logits(q_BTNH, k_BKSH):  # -> [B, K, T, G, S] in the values' grouping.
    tq, s = q_BTNH.shape[1], k_BKSH.shape[-2]
    if k_BKSH.ndim == 3:
      out_BQS = jnp.einsum("BQH,BSH->BQS", q_BTNH.reshape(b, tq * n, -1), k_BKSH,
                           preferred_element_type=jnp.float32)
      out_BKTGS, kk = out_BQS.reshape(b, 1, tq, n, s), 1
    else:
      # The G queries of each kv head and the T positions as rows of one matrix per (b, k):
      # one batched GEMM against that head's keys (XLA:CPU: 2x faster than a [T, G] batch).
      kk = k_BKSH.shape[1]
      q_BKQH = q_BTNH.reshape(b, tq, kk, n // kk, -1).transpose(0, 2, 1, 3, 4).reshape(
          b, kk, tq * (n // kk), -1)
      out_BKTGS = jnp.einsum("BKQH,BKSH->BKQS", q_BKQH, k_BKSH,
                             preferred_element_type=jnp.float32).reshape(b, kk, tq, n // kk, s)
    if kk == num_kv:
      return out_BKTGS
    out_BTNS = out_BKTGS.transpose(0, 2, 1, 3, 4).reshape(b, tq, n, s)
    return out_BTNS.reshape(b, tq, num_kv, g, s).transpose(0, 2, 1, 3, 4)

  def attend(q_parts, mask_BTS, logits_BNTS):
    tq = mask_BTS.shape[1]
    logits_BKTGS = sum(logits(q, k) for q, k in zip(q_parts, k_parts))
    if logits_BNTS is not None:
      logits_BKTGS = logits_BKTGS + logits_BNTS.reshape(b, num_kv, g, tq, -1).swapaxes(2, 3)
    logits_BKTGS = jnp.where(mask_BTS[:, None, :, None], logits_BKTGS * scale,
                             jnp.finfo(jnp.float32).min)
    # Softmax normalised after the weighted sum: one pass fewer over the [.., S] scores.
    p_BKTGS = jnp.exp(logits_BKTGS - jax.lax.stop_gradient(
        logits_BKTGS.max(axis=-1, keepdims=True)))
    if callable(v_BKSH):  # one kv "head" (num_kv = 1): [B, 1, T, N, S].
      return v_BKSH(p_BKTGS[:, 0].transpose(0, 2, 1, 3)) / p_BKTGS[:, 0].sum(axis=-1)[..., None]
    p_BKQS = p_BKTGS.astype(v_BKSH.dtype).reshape(b, num_kv, tq * g, -1)
    if v_BKSH.ndim == 3:
      out_BKQH = jnp.einsum("BQS,BSH->BQH", p_BKQS[:, 0], v_BKSH,
                            preferred_element_type=jnp.float32)[:, None]
    else:
      out_BKQH = jnp.einsum("BKQS,BKSH->BKQH", p_BKQS, v_BKSH,
                            preferred_element_type=jnp.float32)
    out_BKTGH = out_BKQH.reshape(b, num_kv, tq, g, -1) / p_BKTGS.sum(axis=-1)[..., None]
    return out_BKTGH.transpose(0, 2, 1, 3, 4).reshape(b, tq, n, -1).astype(v_BKSH.dtype)

  if t <= QUERY_CHUNK:
    return attend(q_parts, mask_BTS, logits_BNTS)
  if logits_BNTS is not None:
    raise ValueError(f"logits_BNTS is for short chunks: T={t} > QUERY_CHUNK={QUERY_CHUNK}")
  chunks = -(-t // QUERY_CHUNK)
  pad = chunks * QUERY_CHUNK - t

  def blocks(x):  # [B, T, ...] -> [chunks, B, QUERY_CHUNK, ...], zero-padded queries.
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, chunks, QUERY_CHUNK, *x.shape[2:]), 1, 0)

  out = jax.lax.map(lambda qm: attend(*qm, None), ([blocks(q) for q in q_parts],
                                                    blocks(mask_BTS)))
  return jnp.moveaxis(out, 0, 1).reshape(b, chunks * QUERY_CHUNK, n, -1)[:, :t]
