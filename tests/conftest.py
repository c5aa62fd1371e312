"""Shared tiny configurations: every test runs in seconds on 2 CPU cores."""

import os

import pytest

from latent_attention.config import default_section
from latent_attention.models import LMConfig

os.environ.setdefault("TFDS_DATA_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets"))

# (kind, extra attention overrides): every LM attention variant the core tests cover.
LM_VARIANTS = [
    ("mha", {}),
    ("gqa", {"num_kv_heads": 2}),
    ("mqa", {}),
    ("mla", {"mla_decode_mode": "naive"}),
    ("mla", {"mla_decode_mode": "latent"}),
    ("mla", {"mla_decode_mode": "absorbed"}),
    ("mla", {"mla_decode_mode": "absorbed", "q_lora_rank": 24}),
    ("lowrank_gated", {}),
    ("lowrank_gated", {"lowrank_combine": "sum"}),
    ("head_gated", {"head_gated_top_k": 2}),
    ("head_gated", {"head_gated_keep_fraction": 0.25}),
]


def variant_id(variant):
  kind, extra = variant
  return "-".join([kind, *(f"{k}={v}" for k, v in extra.items())])


def tiny_lm_config(kind="mha", **attention):
  """A 2-layer, width-32 LM config section with the given attention overrides."""
  cfg = default_section(LMConfig)
  cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.mlp_dim = 31, 32, 2, 64
  cfg.attention.update(kind=kind, num_heads=4, num_kv_heads=4, head_dim=8,
                       kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                       lowrank_rank=4)
  cfg.attention.update(attention)
  return cfg


@pytest.fixture(params=LM_VARIANTS, ids=variant_id)
def lm_variant(request):
  kind, extra = request.param
  return tiny_lm_config(kind, **extra)
