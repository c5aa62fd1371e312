r"""The decode benchmark's model: width 512, 8 heads of 64, 4 layers, MLA d_c=256 / d_R=32.

  python scripts/benchmark_decode.py --config=configs/lm_decode.py --output_dir=/tmp/decode
  python scripts/benchmark_decode.py --config=configs/lm_decode.py:runlocal \
      --contexts=64,128 --batches=1,2 --output_dir=/tmp/decode_local

Only `config.model` is read: weights are random (decode speed does not depend on their
values). The benchmark's variants (--variants) override model.attention.kind and, for MLA,
mla_decode_mode; gqa uses num_kv_heads below. Arguments: optional `runlocal` (tiny model).
"""

import ml_collections

from latent_attention.attention import AttentionConfig
from latent_attention.config import default_section
from latent_attention.models import LMConfig


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = [a for a in (arg or "").split(",") if a]
  if any(a != "runlocal" for a in args):
    raise ValueError(f"config argument {args[0]!r} is invalid: choose runlocal or nothing")
  config = ml_collections.ConfigDict()
  config.model = model = default_section(LMConfig)  # every field: see LMConfig.
  model.vocab_size = 65  # V (character-level, as lm_shakespeare).
  model.d_model = 512  # D.
  model.num_layers = 4  # Transformer blocks.
  model.mlp_dim = 2048  # F = 4 D.
  model.dtype = "float32"  # compute dtype; "bfloat16" halves cache and weight bytes.
  model.attention = att = default_section(AttentionConfig)  # every field: see AttentionConfig.
  att.num_heads = 8  # N.
  att.num_kv_heads = 2  # K for the gqa variant (mha forces N, mqa 1).
  att.head_dim = 64  # H = D / N.
  att.kv_lora_rank = 256  # MLA d_c.
  att.qk_nope_head_dim = 64  # MLA d_nope.
  att.qk_rope_head_dim = 32  # MLA d_R: caches 256 + 32 = 288 elements per layer vs mha's 1024.
  att.v_head_dim = 64  # MLA d_v.
  att.lowrank_rank = 8  # lowrank_gated r: caches 2 N r = 128 per layer.
  att.head_gated_top_k = 4  # head_gated: heads kept per sequence.
  if "runlocal" in args:
    model.update(d_model=32, num_layers=2, mlp_dim=64)
    att.update(num_heads=4, head_dim=8, kv_lora_rank=16, qk_nope_head_dim=8,
               qk_rope_head_dim=4, v_head_dim=8, lowrank_rank=4, head_gated_top_k=2)
  return config
