"""The one attention core: softmax(Q Kᵀ · scale) V with grouped heads.

Every mechanism in this package ends here; they differ only in how they build Q, K, V and what
they cache. Grouped heads (N query heads over K kv heads) are handled by reshaping the queries
to [B, T, K, G, H], never by repeating K/V. Logits and softmax are float32 whatever the input
dtype. Where its shape rules hold, `jax.nn.dot_product_attention` is used (it selects cuDNN
flash attention on GPU for bf16/fp16); otherwise (value dim != qk dim, as in MLA) an einsum path.
"""

import jax
import jax.numpy as jnp

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


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


def plan_masks(*, self_attn, causal, pos_BT, kv_pos_BS, mask_BTS):
  """Resolves the shared call arguments of every attention module.

  Returns (kv_pos_BS, mask_BTS, is_causal): self-attention reuses the query positions and lets
  the core apply the causal mask (cuDNN can then skip masked blocks); causal cross-attention
  (Perceiver AR) masks by position, so it needs pos_BT and kv_pos_BS.
  """
  if self_attn:
    return pos_BT, mask_BTS, causal
  if causal:
    if pos_BT is None or kv_pos_BS is None:
      raise ValueError("causal cross-attention needs pos_BT and kv_pos_BS")
    mask_BTS = and_masks(mask_BTS, causal_mask(pos_BT, kv_pos_BS))
  return kv_pos_BS, mask_BTS, False


def _pick_implementation(implementation, q_BTNH, v_BSKH, mask_BTS, is_causal):
  if implementation != "auto":
    return implementation
  if q_BTNH.shape[-1] != v_BSKH.shape[-1]:
    return "einsum"
  if (jax.default_backend() == "gpu" and q_BTNH.dtype in _CUDNN_DTYPES and mask_BTS is None
      and q_BTNH.shape[-1] % 8 == 0 and q_BTNH.shape[-1] <= 128 and is_causal):
    return "cudnn"
  return "xla"


def _einsum_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale):
  b, t, n, h = q_BTNH.shape
  num_kv = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(b, t, num_kv, n // num_kv, h)
  logits_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                            preferred_element_type=jnp.float32) * scale
  if mask_BTS is not None:
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS,
                             jnp.finfo(jnp.float32).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKH.dtype)
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS, v_BSKH)
  return out_BTKGH.reshape(b, t, n, v_BSKH.shape[-1])


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
