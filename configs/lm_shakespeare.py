r"""LM on TFDS tiny_shakespeare (characters, or sub-words); the argument picks the attention.

  python train.py --config=configs/lm_shakespeare.py:mla --workdir=/tmp/lm_mla
  python train.py --config=configs/lm_shakespeare.py:gqa,runlocal --workdir=/tmp/lm_gqa \
      --config.train.num_steps=50
  python train.py --config=configs/lm_shakespeare.py:mla,sentencepiece --workdir=/tmp/lm_sp
  python eval.py --workdir=/tmp/lm_mla

Arguments (comma-separated): one variant of VARIANTS (default mla) or `perceiver_ar` (Perceiver AR:
a 256-character window whose last 64 positions are latents, mha attention), or `nanogpt_cpu`
(nanoGPT's CPU shakespeare_char recipe, MLA unless a variant is also given), plus optional
`sentencepiece` (1024 sub-words trained on the train split instead of 65 characters; compare
runs by bits per byte) and `runlocal` (tiny, seconds on a CPU; what the tests use).
"""

import ml_collections

from latent_attention.attention import AttentionConfig
from latent_attention.config import default_section
from latent_attention.models import LMConfig
from latent_attention.models.perceiver_ar import PerceiverARConfig

# attention kind -> overrides of config.model.attention. Every variant keeps D, layers and MLP
# fixed, so differences come from attention alone.
VARIANTS = {
    "mha": dict(kind="mha"),
    "gqa": dict(kind="gqa", num_kv_heads=2),
    "mqa": dict(kind="mqa"),
    "mla": dict(kind="mla"),
    # DeepSeek Sparse Attention (V3.2): MLA reading the indexer's top T/4 positions per query.
    "dsa": dict(kind="mla", index_topk=32, index_n_heads=4, index_head_dim=32),
    "gla": dict(kind="gla"),  # two latent heads of kv_lora_rank (arXiv 2505.21487).
    "gta": dict(kind="gta", num_kv_heads=2),  # two tied KV heads, RoPE key qk_rope_head_dim.
    "tpa": dict(kind="tpa"),  # ranks 6/2/2 (arXiv 2501.06425).
    "lowrank_gated": dict(kind="lowrank_gated"),
    "head_gated": dict(kind="head_gated", head_gated_top_k=2),
}


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The LM section: 4 layers, width 128, 4 heads of 32; MLA with d_c=32, d_R=16."""
  model = default_section(LMConfig)
  model.vocab_size = 65  # tiny_shakespeare's characters (checked against the data).
  model.d_model = 128  # D.
  model.num_layers = 4  # Transformer blocks.
  model.mlp_dim = 512  # F = 4 D.
  model.tie_embeddings = True  # output head shares the embedding matrix.
  model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU.
  model.attention = default_section(AttentionConfig)  # every field: see AttentionConfig.
  model.attention.num_heads = 4  # N.
  model.attention.num_kv_heads = 4  # K (gqa overrides).
  model.attention.head_dim = 32  # H = D / N.
  model.attention.kv_lora_rank = 32  # MLA d_c: caches 32 + 16 = 48 vs MHA's 256 per layer.
  model.attention.qk_nope_head_dim = 32  # MLA d_nope.
  model.attention.qk_rope_head_dim = 16  # MLA d_R.
  model.attention.v_head_dim = 32  # MLA d_v.
  model.attention.update(VARIANTS[variant])
  return model


def get_config(arg: str = "mla") -> ml_collections.ConfigDict:
  args = [a for a in (arg or "mla").split(",") if a]
  extra = ("perceiver_ar", "nanogpt_cpu", "sentencepiece", "runlocal")
  unknown = [a for a in args if a not in (*VARIANTS, *extra)]
  if unknown:
    raise ValueError(f"config argument {unknown[0]!r} is invalid: choose from "
                     f"{', '.join(VARIANTS)}, {', '.join(extra)}")
  variant = next((a for a in args if a in VARIANTS), "mha" if "perceiver_ar" in args else "mla")

  config = ml_collections.ConfigDict()
  config.seed = 0  # params init and data order.
  config.model = model_config(variant)

  config.data = ml_collections.ConfigDict()
  config.data.name = "tiny_shakespeare"  # TFDS dataset.
  config.data.tokenizer = "char"  # char | sentencepiece (data/tokenizer.py).
  config.data.vocab_size = 0  # sentencepiece pieces (= model.vocab_size); char: unused.
  config.data.tokenizer_train_chars = 10_000_000  # sentencepiece trains on this train prefix.
  config.data.token_cache_dir = None  # tokenized splits; None = ~/.cache/latent_attention.
  config.data.seq_len = 128  # T, context length in tokens (characters for char).
  config.data.train_split = "train"  # vocabulary and training windows.
  config.data.eval_split = "validation"  # periodic and final evaluation.
  config.data.test_split = "test"  # also reported by eval.py.
  config.data.eval_window_targets = 0  # scored targets per eval window (0 = T; Perceiver AR: M).
  config.data.data_dir = None  # TFDS data dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.worker_count = 0  # Grain worker processes (0 = in the main process).

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16  # global batch (sequences), split over devices and hosts.
  config.train.fsdp = 1  # devices each parameter is split over (1 = replicated; sharding.py).
  config.train.num_steps = 1500  # optimizer steps (a few minutes on a laptop CPU).
  config.train.learning_rate = 2e-3  # peak AdamW learning rate.
  config.train.end_learning_rate = 2e-4  # cosine decay floor.
  config.train.warmup_steps = 100  # linear warm-up from 0.
  config.train.decay_steps = 0  # cosine length in steps; 0 = num_steps.
  config.train.b1 = 0.9  # AdamW beta1.
  config.train.b2 = 0.99  # AdamW beta2.
  config.train.weight_decay = 0.1  # decoupled, on matrices and embeddings only.
  config.train.grad_clip_norm = 1.0  # global-norm clipping.
  config.train.log_every = 50  # steps between train metric lines.
  config.train.eval_every = 500  # steps between evaluations (0 = only at the end).
  config.train.eval_batch_size = 64  # sequences per eval batch.
  config.train.checkpoint_every = 500  # steps between checkpoints (and one at the end).
  config.train.keep_checkpoints = 3  # newest checkpoints kept.
  # A workdir whose newest parameters start this run (same model; step 0, fresh optimizer,
  # e.g. a fine-tune at another data.seq_len). "" = random init. A resumed run ignores it.
  config.train.init_from = ""
  # Only DSA's indexer learns (model.attention.index_topk > 0), from its KL to the frozen main
  # attention: DeepSeek-V3.2's dense warm-up (with attention.index_mode=dense_warmup).
  config.train.freeze_main = False

  config.eval = ml_collections.ConfigDict()
  config.eval.prompt = "ROMEO:\n"  # sample prompt (must use training characters).
  config.eval.sample_len = 300  # characters sampled at the end (0 = no sample).
  config.eval.temperature = 0.8  # sampling temperature (0 = greedy).
  config.eval.top_k = 0  # sample among the top k (0 = all).

  if "nanogpt_cpu" in args:
    # nanoGPT's documented CPU run of shakespeare_char (README, "I only have a macbook").
    config.model.num_layers, config.model.d_model, config.model.mlp_dim = 4, 128, 512
    config.data.seq_len = 64
    # nanoGPT validates on the last 10% of the text = TFDS validation + test.
    config.data.eval_split = "validation+test"
    config.train.update(batch_size=12, num_steps=2000, learning_rate=1e-3,
                        end_learning_rate=1e-4, warmup_steps=100, decay_steps=2000, b2=0.99,
                        weight_decay=0.1, eval_every=250, eval_batch_size=96,
                        checkpoint_every=1000)
  if "perceiver_ar" in args:
    attention = config.model.attention
    config.model = default_section(PerceiverARConfig)  # every field: see PerceiverARConfig.
    config.model.update(vocab_size=65, d_model=128, num_layers=4, mlp_dim=512)
    config.model.num_latents = 64  # M: latents = the last M positions of each window.
    config.model.attention = attention  # mha unless a variant is given too.
    config.data.seq_len = 256  # T: the prefix the latents cross-attend to.
    config.data.eval_window_targets = config.model.num_latents  # the model scores M per window.
  if "sentencepiece" in args:
    # 1024 sub-words: ~2.2 characters per token, so T = 128 tokens sees ~280 characters.
    config.data.update(tokenizer="sentencepiece", vocab_size=1024)
    config.model.vocab_size = 1024
  if "runlocal" in args:
    if "sentencepiece" in args:  # a smaller model, trained on less text: seconds.
      config.data.update(vocab_size=384, tokenizer_train_chars=100_000)
      config.model.vocab_size = 384
    if "perceiver_ar" in args:
      config.model.num_latents = config.data.eval_window_targets = 8
    # One block (Perceiver AR: cross-attention + one latent block): a fraction of the compile
    # time; the tests check layer-to-layer code with their own 2- and 3-layer models.
    config.model.update(num_layers=2 if "perceiver_ar" in args else 1, d_model=32, mlp_dim=64)
    config.model.attention.update(head_dim=8, kv_lora_rank=8, qk_nope_head_dim=8,
                                  qk_rope_head_dim=4, v_head_dim=8, lowrank_rank=4)
    if config.model.attention.index_topk:  # DSA: still T/4 of the shorter context.
      config.model.attention.update(index_topk=8, index_n_heads=2, index_head_dim=8)
    config.data.seq_len = 32
    config.train.update(batch_size=8, num_steps=20, warmup_steps=2, log_every=5,
                        eval_every=10, eval_batch_size=256, checkpoint_every=10)
    config.eval.sample_len = 20
  return config
