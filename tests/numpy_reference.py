"""Attention mechanisms and a pre-norm LM in float64 numpy, written from the papers' equations.

Nothing here imports the package: frequencies, norms, RoPE, heads and caches are computed from
the equations (cited per function), and the module's parameters are read by name from its
parameter tree (`p`, float64 numpy). tests/test_references.py compares the modules with these.
Shapes: B batch, T positions, D width, N query heads, K kv heads, H head dim.
"""

import numpy as np

THETA = 10_000.0  # RoPE base (AttentionConfig.rope_theta's default).
EPS = 1e-6  # RMSNorm epsilon (DeepSeek-V2's and LLaMA's).


def rms_norm(x, scale, groups=1):
  """x / sqrt(mean(x²) + ε) · scale (Zhang & Sennrich 2019), statistics per equal slice."""
  g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
  g = g / np.sqrt((g ** 2).mean(-1, keepdims=True) + EPS)
  return g.reshape(x.shape) * scale


def rotate_pairs(x, pos_BT, pairs, width):
  """RoFormer's rotation (Su et al. 2021) of the pairs (x_j, x_{j + d/2}) listed in `pairs`
  of a d-wide vector (the half-split pairing of GPT-NeoX and LLaMA), pair j by the angle
  pos · θ^(-2j/width); the other pairs stay as they are. x: [B, T, heads, d]."""
  d = x.shape[-1]
  out = x.copy()
  for j in pairs:
    angle = pos_BT[:, :, None] * THETA ** (-2.0 * j / width)
    a, b = x[..., j], x[..., j + d // 2]
    out[..., j] = a * np.cos(angle) - b * np.sin(angle)
    out[..., j + d // 2] = b * np.cos(angle) + a * np.sin(angle)
  return out


def rope(x, pos_BT):
  """Plain RoPE of every pair of x's last dim (width = that dim)."""
  return rotate_pairs(x, pos_BT, range(x.shape[-1] // 2), x.shape[-1])


def attention_probs(q_BTNH, k_BSNH, scale, mask_BTS=None):
  """Causal softmax(q·k · scale) per query head [B, N, T, S], over `mask_BTS` too if given."""
  t, s = q_BTNH.shape[1], k_BSNH.shape[1]
  logits = np.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH) * scale
  visible = np.tril(np.ones((t, s), bool), s - t)[None]
  if mask_BTS is not None:
    visible = visible & mask_BTS
  logits = np.where(visible[:, None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def attend(q_BTNH, k_BSNH, v_BSNH, scale, mask_BTS=None):
  """Causal softmax(q·k · scale) v per query head, keys and values given per query head."""
  return np.einsum("bnts,bsnh->btnh", attention_probs(q_BTNH, k_BSNH, scale, mask_BTS), v_BSNH)


def per_query_head(x_BSKH, n):
  """Head k of K serves query heads k·N/K .. (k+1)·N/K - 1 (GQA's groups)."""
  return np.repeat(x_BSKH, n // x_BSKH.shape[2], axis=2)


# Each kind: `kv(p, h, pos, cfg)` -> what a layer computes from its input and caches (and, with
# CLA, hands to the next layers); `attention(p, h, pos, kv, cfg)` -> the layer's output, using
# its own query and output weights (and, for MLA, its own up-projections) on that state.

def gqa_kv(p, h, pos, cfg):
  """MHA/GQA/MQA (Vaswani 2017; Shazeer 2019; Ainslie 2023): k = RoPE(W_K h), v = W_V h."""
  k = rope(np.einsum("btd,dkh->btkh", h, p["key"]["kernel"]), pos)
  return {"k": k, "v": np.einsum("btd,dkh->btkh", h, p["value"]["kernel"])}


def gqa_attention(p, h, pos, kv, cfg):
  q = rope(np.einsum("btd,dnh->btnh", h, p["query"]["kernel"]), pos)
  n, hd = q.shape[2], q.shape[3]
  o = attend(q, per_query_head(kv["k"], n), per_query_head(kv["v"], n), hd ** -0.5)
  return np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])


def gta_kv(p, h, pos, cfg):
  """GTA (arXiv 2505.21487 section 3.1): one tied head per group, kv_g = W_KV,g h, and one
  RoPE key k_R = RoPE(W_KR h) of d_R shared by every head."""
  kv = np.einsum("btd,dkh->btkh", h, p["kv"]["kernel"])
  return {"kv": kv, "k_rope": rope(np.einsum("btd,dr->btr", h, p["k_rope"]["kernel"])[:, :, None],
                                   pos)}


def gta_attention(p, h, pos, kv, cfg):
  """key_n = [kv_g(n)[:H - d_R] ; k_R], value_n = kv_g(n), query_n = [q_n[:H - d_R] ;
  RoPE(q_n[H - d_R:])], scale 1/sqrt(H)."""
  q = np.einsum("btd,dnh->btnh", h, p["query"]["kernel"])
  n, hd, r = q.shape[2], q.shape[3], kv["k_rope"].shape[-1]
  q = np.concatenate([q[..., :hd - r], rope(q[..., hd - r:], pos)], -1)
  tied = per_query_head(kv["kv"], n)
  k = np.concatenate([tied[..., :hd - r], np.repeat(kv["k_rope"], n, axis=2)], -1)
  return np.einsum("btnh,nhd->btd", attend(q, k, tied, hd ** -0.5), p["out"]["kernel"])


def _tpa_product(p, h, pos, name, rotate):
  """TPA (arXiv 2501.06425, "Tensor Factorization of Queries, Keys, and Values"): X_t =
  (1/R) Σ_r a_r(h_t) ⊗ b_r(h_t), a: [N], b: [H]; RoPE on the query's and the key's feature
  factors b ("RoPE Compatibility")."""
  a = np.einsum("btd,drn->btrn", h, p[f"{name}_head"]["kernel"])
  b = np.einsum("btd,drh->btrh", h, p[f"{name}_feature"]["kernel"])
  b = rope(b, pos) if rotate else b
  return np.einsum("btrn,btrh->btnh", a, b) / a.shape[2]


def tpa_kv(p, h, pos, cfg):
  return {"k": _tpa_product(p, h, pos, "k", True), "v": _tpa_product(p, h, pos, "v", False)}


def tpa_attention(p, h, pos, kv, cfg):
  q = _tpa_product(p, h, pos, "q", True)
  o = attend(q, kv["k"], kv["v"], q.shape[-1] ** -0.5)
  return np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])


def mla_kv(p, h, pos, cfg):
  """MLA (DeepSeek-V2 sections 2.1.2-2.1.3, with the RMSNorm it puts after each compressed
  latent): c_KV = RMSNorm(W_DKV h) (GLA: G latent heads of d_c, each normalised on its own,
  arXiv 2505.21487 section 3.2), k_R = RoPE(W_KR h), one RoPE key for every head."""
  g = cfg.get("latent_heads", 1)
  c = np.einsum("btd,dc->btc", h, p["kv_down"]["kernel"])
  if "kv_norm" in p:
    c = rms_norm(c, p["kv_norm"]["scale"], groups=g)
  c = c.reshape(*c.shape[:2], g, -1)
  return {"ckv": c, "k_rope": rope(np.einsum("btd,dr->btr", h, p["k_rope"]["kernel"])[:, :, None],
                                   pos)}


def mla_query(p, h, pos, nope):
  """DeepSeek-V2 sections 2.1.2-2.1.3: with query compression c_Q = RMSNorm(W_DQ h),
  q_C = W_UQ c_Q, q_R = RoPE(W_QR c_Q) (W_UQ and W_QR are the two slices of q_up's per-head
  output); without it q = W_Q h, split the same way."""
  if "q_down" in p:
    c_q = rms_norm(np.einsum("btd,dc->btc", h, p["q_down"]["kernel"]), p["q_norm"]["scale"])
    q = np.einsum("btc,cnh->btnh", c_q, p["q_up"]["kernel"])
  else:
    q = np.einsum("btd,dnh->btnh", h, p["query"]["kernel"])
  return q[..., :nope], rope(q[..., nope:], pos)


def mla_attention(p, h, pos, kv, cfg, mask_BTS=None):
  """k_C,n = W_UK,n c_KV, v_n = W_UV,n c_KV (head n reads latent head n // (N / G)),
  s_n = (q_C,n · k_C,n + q_R,n · k_R) / sqrt(d_nope + d_R), out = W_O [o_1; ..; o_N];
  `mask_BTS` (DSA's selection) restricts the keys beyond causality."""
  n, nope = p["v_up"].shape[1], cfg["nope"]
  q_c, q_r = mla_query(p, h, pos, nope)
  mine = per_query_head(kv["ckv"], n)  # [B, S, N, d_c]: each query head's latent head.
  k_c = np.einsum("bsnc,cnh->bsnh", mine, p["k_up"])
  v = np.einsum("bsnc,cnh->bsnh", mine, p["v_up"])
  k = np.concatenate([k_c, np.repeat(kv["k_rope"], n, axis=2)], -1)
  o = attend(np.concatenate([q_c, q_r], -1), k, v, (nope + q_r.shape[-1]) ** -0.5, mask_BTS)
  return np.einsum("btnh,nhd->btd", o, p["out"]["kernel"])


def mla_keys(p, kv, nope):
  """MLA's per-head keys [B, S, N, d_nope + d_R] (as `mla_attention` forms them)."""
  n = p["v_up"].shape[1]
  k_c = np.einsum("bsnc,cnh->bsnh", per_query_head(kv["ckv"], n), p["k_up"])
  return np.concatenate([k_c, np.repeat(kv["k_rope"], n, axis=2)], -1)


def layer_norm(x, scale, bias):
  """(x - mean) / sqrt(var + ε) · scale + bias over the last axis (Ba et al. 2016)."""
  x = x - x.mean(-1, keepdims=True)
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * scale + bias


def indexer_scores(p, h, c_q, pos, rope_dim):
  """DSA's lightning indexer (DeepSeek-V3.2, section 2.1, eq. 1; `Indexer` of its
  inference/model.py without the Hadamard rotation and fp8): q_h = W_q c_Q, k = LayerNorm(W_k h),
  RoPE on the first d_R dims of each, w = W_w h / sqrt(H_I), and
  score(t, s) = Σ_h w_h(t) · ReLU(q_h(t) · k(s)) / sqrt(d_I); [B, T, S] over every s."""
  r = rope_dim
  q = np.einsum("btc,cih->btih", c_q, p["q"]["kernel"])
  q = np.concatenate([rope(q[..., :r], pos), q[..., r:]], -1)
  k = layer_norm(np.einsum("btd,dh->bth", h, p["k"]["kernel"]), p["k_norm"]["scale"],
                 p["k_norm"]["bias"])
  k = np.concatenate([rope(k[:, :, None, :r], pos)[:, :, 0], k[..., r:]], -1)
  w = np.einsum("btd,di->bti", h, p["weights"]["kernel"]) / np.sqrt(q.shape[2])
  dots = np.einsum("btih,bsh->btis", q, k)
  return np.einsum("btis,bti->bts", np.maximum(dots, 0.0), w) / np.sqrt(q.shape[-1])


def top_k_causal(scores_BTS, k):
  """Query t keeps the min(k, t + 1) positions s <= t of highest score, the lower position
  first among equal scores (the rule under which prefill and decode agree); [B, T, S] bool."""
  b, t, s = scores_BTS.shape
  keep = np.zeros((b, t, s), bool)
  for i in range(b):
    for q in range(t):
      order = sorted(range(q + 1), key=lambda j: (-scores_BTS[i, q, j], j))
      keep[i, q, order[:k]] = True
  return keep


def indexer_kl(p_main_BNTS, scores_BTS, mask_BTS):
  """KL(p ‖ softmax(scores)) over `mask_BTS`, averaged over queries, with p the main attention
  summed over heads and L1-normalised (DeepSeek-V3.2, eq. 3 and 4)."""
  target = p_main_BNTS.sum(1)
  target = target / target.sum(-1, keepdims=True)
  logits = np.where(mask_BTS, scores_BTS, -np.inf)
  log_q = logits - logits.max(-1, keepdims=True)
  log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
  terms = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1.0)) -
                                         np.where(mask_BTS, log_q, 0.0)), 0.0)
  return terms.sum(-1).mean()


KINDS = {"mha": (gqa_kv, gqa_attention), "gqa": (gqa_kv, gqa_attention),
         "mqa": (gqa_kv, gqa_attention), "gta": (gta_kv, gta_attention),
         "tpa": (tpa_kv, tpa_attention), "mla": (mla_kv, mla_attention),
         "gla": (mla_kv, mla_attention)}


def gelu(u):
  """GELU, tanh approximation (Hendrycks & Gimpel 2016; flax's nn.gelu default)."""
  return 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))


def lm_logits(p, tokens_BT, *, kind, num_layers, share_every=1, cfg=None,
              attention=None):
  """A pre-norm LM: x + Attn(RMSNorm(x)), x + MLP(RMSNorm(x)), final RMSNorm, tied head.

  CLA (Brandon et al. 2024, arXiv 2405.12981): layer i attends to the keys and values (the `kv`
  state of its kind) computed by layer i - i % share_every from that layer's own input.
  `attention(layer, p_attn, h, pos)` replaces the kind's attention (the partial-RoPE source).
  """
  kv_fn, attn_fn = KINDS.get(kind, (None, None))
  cfg = cfg or {}
  pos = np.broadcast_to(np.arange(tokens_BT.shape[1]), tokens_BT.shape).astype(np.float64)
  x = p["embed"]["embedding"][tokens_BT]
  for i in range(num_layers):
    b = p[f"block_{i}"]
    h = rms_norm(x, b["attn_norm"]["scale"])
    if attention is not None:
      x = x + attention(i, b["attn"], h, pos)
    else:
      if i % share_every == 0:
        kv = kv_fn(b["attn"], h, pos, cfg)
      x = x + attn_fn(b["attn"], h, pos, kv, cfg)
    if "mlp" in b:
      x = x + gelu(rms_norm(x, b["mlp_norm"]["scale"]) @ b["mlp"]["up"]["kernel"]) @ (
          b["mlp"]["down"]["kernel"])
  return rms_norm(x, p["final_norm"]["scale"]) @ p["embed"]["embedding"].T
