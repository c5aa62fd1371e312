"""Converting a trained MHA/GQA/MQA language model into MLA (MHA2MLA, arXiv 2502.14837).

Per layer, from the source's W_Q [D, N, H], W_K and W_V [D, K, H] and W_O [N, H, D]:

1. Partial RoPE (MHA2MLA section 3.2, its 2-norm criterion). Frequency pair j of kv head k
   (dims j and j + H/2, half-split RoPE) scores Σ_{n in k's group} mean_t ‖q_n,j(t)‖ ·
   mean_s ‖k_k,j(s)‖ over calibration tokens: by Cauchy-Schwarz, the mean over query-key pairs
   of a bound on the pair's share of the logit q(t)·k(s). The d_R/2 highest pairs keep their
   rotation and become group k's RoPE key (`mla_rope_heads = K`, pairs in `mla_rope_pairs`),
   the other pairs lose it and become the non-RoPE ("nope") dims.
2. Joint low-rank keys and values. M = [W_K,nope | W_V] is D × K·(2H − d_R); the latent is
   c = h·W_DKV with W_DKV = M·V_C, and [W_UK | W_UV] = V_Cᵀ, V_C the top-C right singular vectors
   of M (`svd`, MHA2MLA's SVD_joint) or of Lᵀ·M with L·Lᵀ = XᵀX over calibration inputs X
   (`activation`, the principal directions of the keys and values themselves, as TransMLA's
   PCA). Either way M·V_C·V_Cᵀ is the best rank-C approximation of M in its norm: the plain
   weights' (svd) or the calibration outputs X·M's (activation).
3. No RMSNorm on c (`mla_kv_norm=False`): a norm of c could not equal the source's keys, and
   MHA2MLA has none either. Everything else (query, W_O, MLP, norms, embeddings) is copied.

At C = rank(M) with every pair kept the converted model computes the source's function exactly
(in exact arithmetic): the RoPE keys are the source's keys, the latent reproduces its values.
"""

import numpy as np
import jax
from flax import linen as nn

METHODS = ("activation", "svd")
SOURCE_KINDS = ("mha", "gqa", "mqa")


def _fail(flag, value, allowed):
  raise ValueError(f"{flag}={value!r} is invalid: {allowed}")


def check_request(model_cfg: dict, kv_lora_rank: int, rope_dims: int, method: str) -> None:
  """One-line errors for a source model or a conversion request that cannot work."""
  att = model_cfg.get("attention", {})
  if model_cfg.get("name") != "lm" or att.get("kind") not in SOURCE_KINDS:
    _fail("source model", f"{model_cfg.get('name')}/{att.get('kind')}",
          f"convert a language model (name 'lm') of kind {', '.join(SOURCE_KINDS)}")
  if model_cfg.get("kv_share_every", 1) != 1:
    _fail("source model.kv_share_every", model_cfg["kv_share_every"],
          "only a model whose every layer has its own keys and values (1) converts")
  h, k = att["head_dim"], {"mha": att["num_heads"], "mqa": 1}.get(att["kind"],
                                                                  att["num_kv_heads"])
  if method not in METHODS:
    _fail("--method", method, f"choose one of {', '.join(METHODS)}")
  if not 2 <= rope_dims <= h or rope_dims % 2:
    _fail("--rope_dims", rope_dims, f"an even number in [2, head_dim={h}]")
  most = min(model_cfg["d_model"], k * (2 * h - rope_dims))
  if not 1 <= kv_lora_rank <= most:
    _fail("--kv_lora_rank", kv_lora_rank,
          f"in [1, {most}] = min(d_model, K·(2·head_dim − rope_dims)), the rank of [W_K,nope|W_V]")


def mla_config(model_cfg: dict, kv_lora_rank: int, rope_dims: int, layer_pairs) -> dict:
  """The converted model's config section: the source's, with MLA attention whose RoPE keys
  are `layer_pairs` ([layer][kv head] -> kept pair indices)."""
  out = {**model_cfg, "attention": dict(model_cfg["attention"])}
  att = out["attention"]
  att.update(kind="mla", kv_lora_rank=kv_lora_rank, q_lora_rank=0,
             qk_nope_head_dim=att["head_dim"] - rope_dims, qk_rope_head_dim=rope_dims,
             v_head_dim=att["head_dim"], mla_rope_heads=len(layer_pairs[0]),
             mla_kv_norm=False, mla_rope_pairs="|".join(
                 ";".join(",".join(str(j) for j in g) for g in pairs)
                 for pairs in layer_pairs))
  return out


def calibrate(model, params, batches, kv_heads: int):
  """Per layer, summed over the calibration tokens (float64): the 2-norms of the query pairs
  (summed over each kv group's query heads) and of the key pairs, [K, H/2] each, and the input
  Gram XᵀX [D, D]; `pair_scores` turns the norms into MHA2MLA's scores."""
  stats = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path
    if context.method_name == "__call__" and len(path) >= 2 and path[-2] == "attn":
      stats.setdefault(path[-3], {})[path[-1]] = np.asarray(out, np.float64)
      if path[-1] == "query":
        x = np.asarray(args[0], np.float64).reshape(-1, args[0].shape[-1])
        stats[path[-3]]["gram"] = x.T @ x
    return out

  totals = {}
  for tokens_BT in batches:
    stats.clear()
    with nn.intercept_methods(capture):
      model.apply({"params": params}, tokens_BT)
    for layer, s in stats.items():
      q, k = s["query"], s["key"]  # [B, T, N, H], [B, T, K, H] before RoPE (it keeps norms).
      h2 = q.shape[-1] // 2
      qn = np.hypot(q[..., :h2], q[..., h2:])  # ‖pair j‖ per token and head: [B, T, N, H/2]
      kn = np.hypot(k[..., :h2], k[..., h2:])
      b, t, n = qn.shape[:3]
      tot = totals.setdefault(layer, {"q_norm": 0.0, "k_norm": 0.0, "gram": 0.0, "tokens": 0})
      tot["q_norm"] = tot["q_norm"] + qn.reshape(b, t, kv_heads, n // kv_heads, h2).sum((0, 1, 3))
      tot["k_norm"] = tot["k_norm"] + kn.sum(axis=(0, 1))
      tot["gram"] = tot["gram"] + s["gram"]
      tot["tokens"] += b * t
  return totals


def pair_scores(stats: dict) -> np.ndarray:
  """[K, H/2]: mean query-pair norm (summed over the group) x mean key-pair norm."""
  return (stats["q_norm"] / stats["tokens"]) * (stats["k_norm"] / stats["tokens"])


def top_pairs(score_KH2: np.ndarray, rope_dims: int) -> list[list[int]]:
  """Per kv head, the rope_dims/2 highest-scoring pairs, in increasing index order."""
  keep = np.argsort(-score_KH2, axis=-1, kind="stable")[:, :rope_dims // 2]
  return [sorted(int(j) for j in row) for row in keep]


def _chol_t(gram_DD: np.ndarray) -> np.ndarray:
  """Lᵀ with L·Lᵀ = gram, so ‖X·A‖ = ‖Lᵀ·A‖ for any A. A ridge of 1e-9 of the mean diagonal
  keeps a direction no calibration token used from breaking the factorisation."""
  ridge = 1e-9 * np.trace(gram_DD) / len(gram_DD) * np.eye(len(gram_DD))
  return np.linalg.cholesky(gram_DD + ridge).T


def low_rank(m_DM: np.ndarray, rank: int, weight_DD: np.ndarray | None):
  """(W_down [D, C], W_up [C, M]) with W_down·W_up = M·V_C·V_Cᵀ; V_C the top right singular
  vectors of M, or of weight·M (`_chol_t` of a calibration Gram: activation-aware)."""
  target = m_DM if weight_DD is None else weight_DD @ m_DM
  _, _, vt_CM = np.linalg.svd(target, full_matrices=False)
  v_MC = vt_CM[:rank].T
  return m_DM @ v_MC, v_MC.T


def convert_layer(attn: dict, pairs, kv_heads: int, rank: int, gram_DD: np.ndarray,
                  method: str):
  """One layer's MLA attention parameters from the source's {query, key, value, out}.

  Returns (params, ‖X(M − M̂)‖/‖XM‖: the relative error of the keys and values the latent
  gives on the calibration inputs X, whose Gram is gram_DD).
  """
  wq_DNH = np.asarray(attn["query"]["kernel"], np.float64)
  wk_DKH = np.asarray(attn["key"]["kernel"], np.float64)
  wv_DKH = np.asarray(attn["value"]["kernel"], np.float64)
  d, n, h = wq_DNH.shape
  g = n // kv_heads
  rope_idx, nope_idx = [], []
  for kept in pairs:
    rest = [j for j in range(h // 2) if j not in kept]
    rope_idx.append(list(kept) + [j + h // 2 for j in kept])  # half-split, as apply_rope.
    nope_idx.append(rest + [j + h // 2 for j in rest])
  rope_idx, nope_idx = np.asarray(rope_idx, int), np.asarray(nope_idx, int)  # [K, d_R|d_nope]
  nope = nope_idx.shape[1]
  k_nope_DKP = np.take_along_axis(wk_DKH, nope_idx[None], axis=2)
  m_DM = np.concatenate([k_nope_DKP.reshape(d, -1), wv_DKH.reshape(d, -1)], axis=1)
  x_DD = _chol_t(gram_DD)
  down_DC, up_CM = low_rank(m_DM, rank, x_DD if method == "activation" else None)
  up_k_CKP = up_CM[:, :kv_heads * nope].reshape(rank, kv_heads, nope)
  up_v_CKH = up_CM[:, kv_heads * nope:].reshape(rank, kv_heads, h)
  group = np.arange(n) // g  # query head n reads kv head n // G.
  q_idx = np.concatenate([nope_idx, rope_idx], axis=1)[group]  # [N, H]: nope dims, then RoPE.
  k_rope_DKR = np.take_along_axis(wk_DKH, rope_idx[None], axis=2)
  params = {
      "query": {"kernel": np.take_along_axis(wq_DNH, q_idx[None], axis=2)},
      "kv_down": {"kernel": down_DC},
      "k_rope": {"kernel": k_rope_DKR[:, 0] if kv_heads == 1 else k_rope_DKR},
      "v_up": up_v_CKH[:, group],
      "out": {"kernel": np.asarray(attn["out"]["kernel"], np.float64)},
  }
  if nope:
    params["k_up"] = up_k_CKP[:, group]
  error = float(np.linalg.norm(x_DD @ (m_DM - down_DC @ up_CM)) / np.linalg.norm(x_DD @ m_DM))
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params), error


def convert(params, model, model_cfg: dict, batches, *, kv_lora_rank: int, rope_dims: int,
            method: str = "activation"):
  """(MLA config section, MLA params, per-layer report) from a source LM's config and params;
  `batches` are calibration token arrays [B, T] of the training split."""
  check_request(model_cfg, kv_lora_rank, rope_dims, method)
  att = model_cfg["attention"]
  kv_heads = {"mha": att["num_heads"], "mqa": 1}.get(att["kind"], att["num_kv_heads"])
  stats = calibrate(model, params, batches, kv_heads)
  out, report = dict(params), []
  for i in range(model_cfg["num_layers"]):
    layer = f"block_{i}"
    scores = pair_scores(stats[layer])
    pairs = top_pairs(scores, rope_dims)
    out[layer] = dict(params[layer])
    out[layer]["attn"], error = convert_layer(params[layer]["attn"], pairs, kv_heads,
                                              kv_lora_rank, stats[layer]["gram"], method)
    report.append({"layer": i, "rope_pairs": pairs, "kv_relative_error": error,
                   "pair_scores": scores.tolist()})
  cfg = mla_config(model_cfg, kv_lora_rank, rope_dims, [r["rope_pairs"] for r in report])
  return cfg, out, report
