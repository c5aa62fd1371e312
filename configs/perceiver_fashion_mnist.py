r"""Perceiver / Perceiver IO classifier on TFDS fashion_mnist (Jaegle et al. 2021).

  python train.py --config=configs/perceiver_fashion_mnist.py --workdir=/tmp/perceiver_fmnist
  python eval.py --workdir=/tmp/perceiver_fmnist --plot_attention
  python train.py --config=configs/perceiver_fashion_mnist.py:mla,runlocal --workdir=/tmp/p

Arguments (comma-separated): the attention kind of the cross- and latent self-attention (mha,
gqa, mqa, mla; default mha), the image preprocessor of Perceiver IO (conv, the default: a 7x7
stride-2 conv + 3x3 max-pool stem, 49 tokens of 64 features; patches: 4x4 space-to-depth
patches mapped to 64 features; conv1x1: a stride-2 1x1 conv, 196 tokens; pixels: all 784 pixels,
the original Perceiver), `induced` for the ISAB encoder (Set Transformer) instead of the latent
one, `mnist` for TFDS mnist, and `runlocal` (tiny, on slices of the splits, seconds on a CPU).
"""

import ml_collections

from latent_attention.config import default_section
from latent_attention.models.perceiver import PerceiverConfig

KINDS = ("mha", "gqa", "mqa", "mla")
PREPS = ("pixels", "patches", "conv1x1", "conv")


def get_config(arg: str = "mha") -> ml_collections.ConfigDict:
  args = [a for a in (arg or "mha").split(",") if a]
  unknown = [a for a in args if a not in (*KINDS, *PREPS, "induced", "mnist", "runlocal")]
  if unknown:
    raise ValueError(f"config argument {unknown[0]!r} is invalid: choose from "
                     f"{', '.join(KINDS + PREPS)}, induced, mnist, runlocal")
  kind = next((a for a in args if a in KINDS), "mha")
  prep = next((a for a in args if a in PREPS), "conv")

  config = ml_collections.ConfigDict()
  config.seed = 0  # params init and data order.
  config.model = default_section(PerceiverConfig)  # every field: see PerceiverConfig.
  config.model.preprocess = prep  # image -> tokens (models/image_prep.py).
  config.model.downsample = {"pixels": 1, "patches": 4, "conv1x1": 2, "conv": 4}[prep]  # k.
  config.model.prep_channels = 64  # conv/conv1x1 features; patches: linear map width.
  config.model.d_model = 64  # D of latents and projected tokens.
  config.model.num_latents = 32  # M: the information bottleneck (sweeps/perceiver_latents.py).
  config.model.num_blocks = 2  # R: cross-attend + self-attends, weights shared after the first.
  config.model.num_self_attends = 2  # latent self-attention blocks per repeat.
  config.model.mlp_dim = 128  # F.
  config.model.norm = "pre"  # pre-norm; "post" is the seed's Add & Norm.
  config.model.fourier_bands = 8  # per image axis.
  config.model.max_resolution = 28  # image side.
  config.model.decoder = "query"  # Perceiver IO output query; "mean" pools the latents.
  config.model.encoder = "induced" if "induced" in args else "latent"
  config.model.cross_attention.update(kind=kind, num_heads=1, num_kv_heads=1, head_dim=64,
                                      kv_lora_rank=32, qk_nope_head_dim=48,
                                      qk_rope_head_dim=16, v_head_dim=64)
  config.model.attention.update(kind=kind, num_heads=4, num_kv_heads=2, head_dim=16,
                                kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                v_head_dim=16)

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist" if "mnist" in args else "fashion_mnist"  # TFDS image dataset.
  config.data.train_split = "train"  # training examples.
  config.data.eval_split = "test"  # periodic and final evaluation (accuracy reported).
  config.data.test_split = "test"  # eval.py's second split (the same here: TFDS has 2).
  config.data.data_dir = None  # None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.worker_count = 0  # Grain worker processes.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64  # global batch (images).
  config.train.fsdp = 1  # devices each parameter is split over (1 = replicated; sharding.py).
  # Optimizer steps: conv 11000 (11.7 epochs: 90.45% in 18.6 min on 2 CPU cores); the pixel
  # Perceiver's step is 3x slower, so 4500 (4.8 epochs: 86.9% in 19.2 min); both measured in
  # docs/results/perceiver_fashion_mnist.md.
  config.train.num_steps = 4500 if prep == "pixels" else 11000
  config.train.learning_rate = 1e-3  # peak AdamW learning rate.
  config.train.end_learning_rate = 1e-5  # cosine decay floor.
  config.train.warmup_steps = 200 if prep == "pixels" else 300  # linear warm-up from 0.
  config.train.decay_steps = 0  # 0 = num_steps.
  config.train.b1 = 0.9  # AdamW beta1.
  config.train.b2 = 0.999  # AdamW beta2.
  config.train.weight_decay = 0.05  # on matrices only.
  config.train.grad_clip_norm = 1.0  # global-norm clipping.
  config.train.log_every = 100  # steps between train metric lines.
  config.train.eval_every = 1500 if prep == "pixels" else 1000  # steps between evaluations.
  config.train.eval_batch_size = 500  # test images per eval batch.
  config.train.checkpoint_every = 1000  # steps between checkpoints.
  config.train.keep_checkpoints = 2  # newest checkpoints kept.

  config.eval = ml_collections.ConfigDict()
  config.eval.sample_len = 0  # classifiers sample no text.
  config.eval.prompt = ""  # unused.
  config.eval.temperature = 0.0  # unused.
  config.eval.top_k = 0  # unused.

  if "runlocal" in args:
    config.model.update(d_model=32, num_latents=8, num_blocks=2, num_self_attends=1,
                        mlp_dim=64, fourier_bands=4)
    config.model.cross_attention.update(head_dim=32, kv_lora_rank=16, qk_nope_head_dim=16,
                                        qk_rope_head_dim=4, v_head_dim=16)
    config.model.attention.update(head_dim=8, kv_lora_rank=8, qk_nope_head_dim=8,
                                  qk_rope_head_dim=4, v_head_dim=8)
    config.model.prep_channels = 16
    # Slices of the splits: decoding them into memory takes a fraction of a second.
    config.data.update(train_split="train[:4000]", eval_split="test[:1000]",
                       test_split="test[:1000]")
    config.train.update(batch_size=32, num_steps=40, warmup_steps=5, log_every=10,
                        eval_every=20, eval_batch_size=500, checkpoint_every=20)
  return config
