"""The one configuration object shared by every attention kind.

Each kind reads the fields it needs and ignores the others, so a sweep can switch `kind` with a
single override. `validate()` runs at construction and raises one `ValueError` naming the field,
its value and what is allowed.
"""

import dataclasses

from latent_attention.attention.rope import ROPE_SCALINGS
from latent_attention.config import check_fields, fail

KINDS = ("mha", "gqa", "mqa", "mla", "gla", "gta", "tpa", "lowrank_gated", "head_gated")
LATENT_KINDS = ("mla", "gla")  # MultiHeadLatentAttention: the MLA fields below apply.
MLA_DECODE_MODES = ("naive", "latent", "absorbed")
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "einsum")
LOWRANK_COMBINES = ("concat", "sum")
HEAD_GATED_POOLS = ("first", "mean")
INDEX_MODES = ("sparse", "dense_warmup")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Fields of `config.model.attention`; see docs/design.md for the math of each kind."""

  kind: str = "mha"  # one of KINDS.
  num_heads: int = 4  # N, query heads.
  num_kv_heads: int = 4  # K, key/value heads (gqa, gta); mha forces K=N, mqa forces K=1.
  head_dim: int = 32  # H for mha/gqa/mqa/gta/tpa/lowrank_gated/head_gated.
  rope_theta: float = 10_000.0  # RoPE base frequency.
  # YaRN context extension (docs/design.md, 3.1), for every kind's RoPE; none = plain RoPE.
  rope_scaling: str = "none"  # none|yarn.
  rope_factor: float = 1.0  # s: target context / original context (yarn).
  rope_original_len: int = 0  # L, the context the model was trained at (required by yarn).
  rope_beta_fast: float = 32.0  # pairs turning more often than this over L keep their frequency.
  rope_beta_slow: float = 1.0  # pairs turning less often than this are divided by the factor.
  rope_mscale: float = 1.0  # softmax scale x (0.1 * rope_mscale * ln(factor) + 1)^2 (yarn).
  implementation: str = "auto"  # sdpa backend: auto|xla|cudnn|einsum (auto: cudnn on GPU).
  # MLA (DeepSeek-V2 section 2.1).
  q_lora_rank: int = 0  # d_c', query compression rank; 0 = plain W_Q projection.
  kv_lora_rank: int = 32  # d_c, joint KV compression rank (the cached latent; per gla head).
  qk_nope_head_dim: int = 32  # d_nope, per-head non-RoPE part of q and k (0: all RoPE).
  qk_rope_head_dim: int = 16  # d_R, width of each decoupled RoPE key (mla, gla, gta).
  mla_rope_heads: int = 1  # K_R, RoPE keys: 1 = DeepSeek's shared key; K = one per kv group.
  # The d_R/2 pairs j kept of a head_dim-wide RoPE (frequency θ^(-2j/head_dim)) per RoPE key
  # (';'-separated) and per layer ('|', or one group for all), as a converted model keeps them
  # (MHA2MLA), e.g. "0,5;1,2|0,1;3,7"; "" = a plain d_R-wide RoPE.
  mla_rope_pairs: str = ""
  mla_kv_norm: bool = True  # RMSNorm on c_KV (DeepSeek); converted models have none.
  v_head_dim: int = 32  # d_v, per-head value dim.
  mla_decode_mode: str = "absorbed"  # naive|latent|absorbed: what the decode cache holds.
  # DSA (DeepSeek-V3.2's sparse attention, attention/indexer.py), kind mla: a lightning indexer
  # picks the positions each query attends to.
  index_topk: int = 0  # positions each query keeps; 0 = dense MLA (no indexer).
  index_n_heads: int = 4  # H_I, indexer query heads (DeepSeek-V3.2: 64).
  index_head_dim: int = 32  # d_I, the indexer key cached per token (V3.2: 128); >= d_R.
  # sparse: attend to the top index_topk (the paper's sparse training, and inference);
  # dense_warmup: dense attention while the indexer learns its distribution (its warm-up).
  index_mode: str = "sparse"
  # GLA (grouped latent attention, arXiv 2505.21487): MLA with G latent heads of d_c each.
  gla_latent_heads: int = 2  # G = h_c; must divide num_heads (G = 1 is MLA).
  # TPA (tensor product attention, arXiv 2501.06425): ranks of the Q, K, V factorisations.
  tpa_q_rank: int = 6  # R_Q (T6's default).
  tpa_k_rank: int = 2  # R_K: cached key factors.
  tpa_v_rank: int = 2  # R_V: cached value factors.
  # lowrank_gated (low-rank gated heads, docs/design.md).
  lowrank_rank: int = 8  # r, per-head rank of K and V.
  lowrank_combine: str = "concat"  # concat: gate-weight heads then concat; sum: seed's sum.
  # head_gated (top-k head gating, docs/design.md).
  head_gated_top_k: int = 0  # heads kept per sequence; 0 = use head_gated_keep_fraction.
  head_gated_keep_fraction: float = 0.5  # fraction of heads kept when top_k == 0.
  # What the head scorer reads. first: position 0, which every position sees (causal, and fixed
  # while decoding); mean: all positions, which leaks the future (needs causal=False).
  head_gated_pool: str = "first"

  def __post_init__(self):
    validate(self)

  def for_layer(self, i: int) -> "AttentionConfig":
    """The config of layer i: its own group of `mla_rope_pairs` when they are per layer."""
    layers = self.mla_rope_pairs.split("|")
    if len(layers) == 1 or self.kind not in LATENT_KINDS:  # other kinds ignore the field.
      return self
    return dataclasses.replace(self, mla_rope_pairs=layers[i])

  @property
  def latent_heads(self) -> int:
    """G, the latent heads of an MLA-family kind (gla: gla_latent_heads; mla: 1)."""
    return self.gla_latent_heads if self.kind == "gla" else 1

  @property
  def kv_heads(self) -> int:
    """K actually used by the kind (mha: N, mqa: 1)."""
    return {"mha": self.num_heads, "mqa": 1}.get(self.kind, self.num_kv_heads)


# YaRN's fields: plain RoPE (rope_scaling='none') ignores them, so there they keep their defaults.
YARN_FIELDS = ("rope_factor", "rope_original_len", "rope_beta_fast", "rope_beta_slow",
               "rope_mscale")


def _fail(field, value, allowed, section="attention"):
  fail(f"model.{section}.{field}", value, allowed)


def validate(cfg: AttentionConfig) -> None:
  """Raises ValueError on the first bad field: the type and range of every field whatever the
  kind (a sweep switching `kind` keeps the others' values), then the relations of the fields
  the kind reads."""
  check_fields(
      cfg, "model.attention",
      positive=("num_heads", "num_kv_heads", "head_dim", "kv_lora_rank", "qk_rope_head_dim",
                "mla_rope_heads", "v_head_dim", "gla_latent_heads", "tpa_q_rank", "tpa_k_rank",
                "tpa_v_rank", "lowrank_rank", "index_n_heads", "index_head_dim"),
      non_negative=("rope_original_len", "q_lora_rank", "qk_nope_head_dim", "head_gated_top_k",
                    "index_topk"),
      positive_numbers=("rope_theta", "rope_factor", "rope_beta_fast", "rope_beta_slow"),
      non_negative_numbers=("rope_mscale",),
      choices={"kind": KINDS, "implementation": IMPLEMENTATIONS, "rope_scaling": ROPE_SCALINGS,
               "mla_decode_mode": MLA_DECODE_MODES, "lowrank_combine": LOWRANK_COMBINES,
               "head_gated_pool": HEAD_GATED_POOLS, "index_mode": INDEX_MODES})
  if cfg.kind in ("gqa", "gta") and cfg.num_heads % cfg.num_kv_heads:
    _fail("num_kv_heads", cfg.num_kv_heads,
          f"must divide num_heads={cfg.num_heads}")
  if cfg.head_dim % 2:
    _fail("head_dim", cfg.head_dim, "RoPE needs an even head dim")
  if not cfg.rope_factor >= 1:
    _fail("rope_factor", cfg.rope_factor, "must be >= 1 (target / original context)")
  if cfg.rope_scaling == "yarn":
    if cfg.rope_original_len < 1:
      _fail("rope_original_len", cfg.rope_original_len,
            "rope_scaling=yarn needs the training context length (a positive integer)")
    if not cfg.rope_beta_fast > cfg.rope_beta_slow:
      _fail("rope_beta_slow", cfg.rope_beta_slow,
            f"must be > 0 and < rope_beta_fast={cfg.rope_beta_fast}")
  else:  # a silently ignored factor would evaluate plain RoPE under a YaRN label.
    for f in YARN_FIELDS:
      default = AttentionConfig.__dataclass_fields__[f].default
      if getattr(cfg, f) != default:
        _fail(f, getattr(cfg, f), f"it applies with rope_scaling='yarn' only (this config has "
              f"{cfg.rope_scaling!r}): set rope_scaling=yarn or leave it at {default!r}")
  if not 0 < cfg.head_gated_keep_fraction <= 1:
    _fail("head_gated_keep_fraction", cfg.head_gated_keep_fraction, "must be in (0, 1]")
  if cfg.mla_rope_pairs:
    _parse_pairs(cfg)
  if cfg.kind == "gta" and (cfg.qk_rope_head_dim % 2 or cfg.qk_rope_head_dim >= cfg.head_dim):
    _fail("qk_rope_head_dim", cfg.qk_rope_head_dim,
          f"gta needs an even RoPE width below head_dim={cfg.head_dim} (H/2 in the paper)")
  if cfg.kind == "gla" and cfg.num_heads % cfg.gla_latent_heads:
    _fail("gla_latent_heads", cfg.gla_latent_heads, f"must divide num_heads={cfg.num_heads}")
  if cfg.kind in LATENT_KINDS:
    if cfg.num_heads % cfg.mla_rope_heads:
      _fail("mla_rope_heads", cfg.mla_rope_heads, f"must divide num_heads={cfg.num_heads}")
    if cfg.qk_rope_head_dim % 2:
      _fail("qk_rope_head_dim", cfg.qk_rope_head_dim, "RoPE needs an even dim")
    if cfg.mla_rope_pairs:
      rope_pairs(cfg)
  if cfg.index_topk:
    _check_indexer(cfg)
  if cfg.kind == "head_gated" and cfg.head_gated_top_k > cfg.num_heads:
    _fail("head_gated_top_k", cfg.head_gated_top_k, f"must be in [0, num_heads={cfg.num_heads}]")


def _check_indexer(cfg: AttentionConfig) -> None:
  """DSA's indexer sits beside MLA's one latent and its one RoPE key (DeepSeek-V3.2)."""
  if cfg.kind != "mla":
    _fail("index_topk", cfg.index_topk, f"DSA's indexer is built for kind 'mla' (this config "
          f"has {cfg.kind!r}): set kind=mla or index_topk=0")
  if cfg.mla_rope_heads != 1:
    _fail("mla_rope_heads", cfg.mla_rope_heads, "DSA (index_topk > 0) gathers the one shared "
          "RoPE key of DeepSeek's MLA: set 1")
  if cfg.index_head_dim % 2 or cfg.index_head_dim < cfg.qk_rope_head_dim:
    _fail("index_head_dim", cfg.index_head_dim, f"must be even and >= qk_rope_head_dim="
          f"{cfg.qk_rope_head_dim} (RoPE turns its first d_R dims)")


def _parse_pairs(cfg: AttentionConfig) -> list[list[list[int]]]:
  """`mla_rope_pairs` as integers per layer and group; its syntax is checked for every kind."""
  try:
    layers = [[[int(j) for j in g.split(",")] for g in layer.split(";")]
              for layer in cfg.mla_rope_pairs.split("|")]
  except ValueError:
    layers = [[[-1]]]
  if any(j < 0 for groups in layers for g in groups for j in g):
    _fail("mla_rope_pairs", cfg.mla_rope_pairs, "'|'-separated layers of ';'-separated groups "
          "of ','-separated integers >= 0, e.g. '0,5;1,2|0,1;3,7'")
  return layers


def rope_pairs(cfg: AttentionConfig) -> list[list[list[int]]]:
  """`mla_rope_pairs` parsed: per layer ('|'-separated; one group serves every layer), K_R
  lists (';') of d_R/2 distinct pair indices (',') below head_dim/2."""
  layers = _parse_pairs(cfg)
  for groups in layers:
    if len(groups) != cfg.mla_rope_heads or any(
        len(set(g)) != len(g) or len(g) != cfg.qk_rope_head_dim // 2
        or not all(0 <= j < cfg.head_dim // 2 for j in g) for g in groups):
      _fail("mla_rope_pairs", cfg.mla_rope_pairs,
            f"'|'-separated layers of {cfg.mla_rope_heads} ';'-separated groups "
            f"(mla_rope_heads) of {cfg.qk_rope_head_dim // 2} distinct ','-separated integers "
            f"in [0, head_dim/2={cfg.head_dim // 2})")
  return layers


def check_no_indexer(cfg: AttentionConfig, model: str, section: str = "attention") -> None:
  """DSA's indexer is built into the decoder-only LM's causal self-attention only."""
  if cfg.index_topk:
    _fail("index_topk", cfg.index_topk, f"DSA is built for model.name='lm' (this model is "
          f"{model!r}): set 0", section)


def check_width(cfg: AttentionConfig, d_model: int, section: str = "attention") -> None:
  """Rank checks that need the model width (`section`: the config's name for `cfg`)."""
  if cfg.kind in LATENT_KINDS:
    if cfg.latent_heads * cfg.kv_lora_rank > d_model:
      _fail("kv_lora_rank", cfg.kv_lora_rank,
            f"must be <= model.d_model={d_model}" + (
                f" / gla_latent_heads={cfg.latent_heads}" if cfg.kind == "gla" else ""),
            section)
    if cfg.q_lora_rank > d_model:
      _fail("q_lora_rank", cfg.q_lora_rank, f"must be <= model.d_model={d_model}", section)
  if cfg.kind == "lowrank_gated" and cfg.lowrank_rank > cfg.head_dim:
    _fail("lowrank_rank", cfg.lowrank_rank, f"must be <= head_dim={cfg.head_dim}", section)
