r"""A GPU-sized sub-word LM on TFDS lm1b (One Billion Word); the argument picks the attention.

  python train.py --config=configs/lm1b.py:mla --workdir=/tmp/lm1b_mla
  python scripts/benchmark.py --config=configs/lm1b.py:gqa,synthetic
  python train.py --config=configs/lm1b.py:mha,runlocal --workdir=/tmp/lm1b_local

12 layers, D = 768, 12 heads of 64, F = 3072, a 32k SentencePiece vocabulary trained on the
first 10M characters of the train split (the Flax lm1b example's recipe), T = 512 tokens of
packed sentences (data/text.py), global batch 256 (131k tokens a step), bfloat16 compute,
~110M parameters with mha. lm1b has no validation split: evaluation uses the test split, as the
Flax example does. TFDS must have lm1b prepared (`scripts/prepare_data.py` or a TFDS
download); the tokenized splits are cached under data.token_cache_dir.

Arguments (comma-separated): a variant of lm_shakespeare.VARIANTS (default mla), plus optional
`synthetic` (random tokens of the same vocabulary and length instead of lm1b, for step-time and
MFU benchmarks on a machine without the dataset) and `runlocal` (tiny, seconds on a CPU).
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(__file__))
import lm_shakespeare  # noqa: E402  (the variants and the train/eval sections)


def get_config(arg: str = "mla") -> ml_collections.ConfigDict:
  args = [a for a in (arg or "mla").split(",") if a]
  extra = ("synthetic", "runlocal")
  unknown = [a for a in args if a not in (*lm_shakespeare.VARIANTS, *extra)]
  if unknown:
    raise ValueError(f"config argument {unknown[0]!r} is invalid: choose from "
                     f"{', '.join(lm_shakespeare.VARIANTS)}, {', '.join(extra)}")
  variant = next((a for a in args if a in lm_shakespeare.VARIANTS), "mla")
  base = lm_shakespeare.get_config(variant)

  config = ml_collections.ConfigDict()
  config.seed = 0  # params init and data order.
  config.model = base.model  # every field: see LMConfig; sizes below.
  config.model.vocab_size = 32_000  # = data.vocab_size.
  config.model.d_model = 768  # D.
  config.model.num_layers = 12  # Transformer blocks.
  config.model.mlp_dim = 3072  # F = 4 D.
  config.model.dtype = "bfloat16"  # compute dtype; params, logits and softmax stay float32.
  attention = config.model.attention
  attention.num_heads = 12  # N.
  attention.num_kv_heads = 12 if variant not in ("gqa", "gta") else 4  # K (gqa, gta: 4).
  attention.head_dim = 64  # H.
  attention.kv_lora_rank = 256  # MLA d_c: caches 256 + 32 per layer vs MHA's 1536.
  attention.qk_nope_head_dim = 64  # MLA d_nope.
  attention.qk_rope_head_dim = 32  # MLA d_R.
  attention.v_head_dim = 64  # MLA d_v.
  attention.lowrank_rank = 16  # lowrank_gated r.

  config.data = base.data
  config.data.name = "lm1b"  # TFDS dataset, one sentence per example.
  config.data.tokenizer = "sentencepiece"  # char | sentencepiece (data/tokenizer.py).
  config.data.vocab_size = 32_000  # sentencepiece pieces.
  config.data.tokenizer_train_chars = 10_000_000  # trained on this prefix of train.
  config.data.seq_len = 512  # T, tokens of packed sentences.
  config.data.eval_split = "test"  # lm1b has train and test only.
  config.data.test_split = "test"  # also reported by eval.py.

  config.train = base.train
  config.train.update(
      batch_size=256,  # global batch (sequences).
      num_steps=20_000,  # 2.6B tokens, about 3 epochs of the 0.8B-token train split.
      learning_rate=6e-4, end_learning_rate=6e-5, warmup_steps=1000,  # GPT-2 small's rates.
      b2=0.95, weight_decay=0.1,
      log_every=100, eval_every=2000, eval_batch_size=256, checkpoint_every=2000,
      keep_checkpoints=2)
  config.eval = base.eval
  config.eval.prompt = "The"  # sample prompt.
  config.eval.sample_len = 64  # tokens sampled at the end.

  if "synthetic" in args:
    # The `copy` task (data/synthetic.py) at the same vocabulary and length: the same model and
    # step, random tokens, no dataset or tokenizer to prepare.
    config.data = ml_collections.ConfigDict()
    config.data.name = "copy"  # random tokens, a separator, the tokens again.
    config.data.seq_len = 512  # T.
    config.data.vocab_size = 32_000  # tokens drawn from [1, V).
    config.data.num_train_examples = 1_000_000  # generated on demand.
    config.data.num_eval_examples = 512  # validation and test examples.
    config.data.synthetic_seed = 0  # which examples.
    config.data.eval_split = "validation"  # periodic and final evaluation.
    config.data.test_split = "test"  # also reported by eval.py.
    config.data.worker_count = 0  # Grain worker processes.
    config.eval.sample_len = 0  # no text to sample.
  if "runlocal" in args:
    config.model.update(vocab_size=384, d_model=32, num_layers=2, mlp_dim=64, dtype="float32")
    attention.update(num_heads=4, num_kv_heads=4 if variant not in ("gqa", "gta") else 2,
                     head_dim=8, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
                     v_head_dim=8, lowrank_rank=4)
    config.data.update(vocab_size=384, seq_len=32)
    if "synthetic" not in args:
      config.data.tokenizer_train_chars = 100_000
    else:  # a million 32-token examples would be generated into memory first (~45 s).
      config.data.num_train_examples = 10_000
    config.train.update(batch_size=8, num_steps=20, warmup_steps=2, log_every=5, eval_every=10,
                        eval_batch_size=64, checkpoint_every=10)
    config.eval.sample_len = min(config.eval.sample_len, 8)
  return config
