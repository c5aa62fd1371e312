r"""Multi-query associative recall (Zoology, arXiv 2312.04927), generated in memory.

  python train.py --config=configs/lm_mqar.py:mla --workdir=/tmp/mqar_mla
  python train.py --config=configs/lm_mqar.py:mha,runlocal --workdir=/tmp/mqar_local

Arguments (comma-separated): an attention variant of lm_shakespeare.VARIANTS (default mha),
optional `perceiver_ar` (cross-attention + one self-attention layer over the last M = 16
positions: only queries there are scored), `zoology` (Zoology's figure-2 recipe at T=64 with 4
pairs, as far as a CPU allows: one head, no MLP, d_model 64, batch 512, 5 passes over a fixed
set of 100k examples, cosine decay), `multihead` (with `zoology`: the variant's own 4 heads,
each 16 wide so that they split d_model = 64, instead of Zoology's single head of 64; for the
kinds that need several heads) and `runlocal`. The reported `accuracy` is recall accuracy:
only query positions are scored.

  python train.py --config=configs/lm_mqar.py:mha,zoology --workdir=/tmp/mqar_zoology
  python train.py --config=configs/lm_mqar.py:gqa,zoology,multihead --workdir=/tmp/mqar_gqa
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(__file__))
import lm_shakespeare  # noqa: E402  (shares the model sizes and variants)


EXTRA = ("perceiver_ar", "zoology", "multihead", "runlocal")


def get_config(arg: str = "mha") -> ml_collections.ConfigDict:
  args = [a for a in (arg or "mha").split(",") if a]
  unknown = [a for a in args
             if a not in (*lm_shakespeare.VARIANTS, *EXTRA)]
  if unknown:
    raise ValueError(f"config argument {unknown[0]!r} is invalid: choose from "
                     f"{', '.join(lm_shakespeare.VARIANTS)}, {', '.join(EXTRA)}")
  if "multihead" in args and "zoology" not in args:
    raise ValueError("config argument 'multihead' is invalid without 'zoology': the other "
                     "recipes keep the variant's heads already")
  variant = next((a for a in args if a in lm_shakespeare.VARIANTS), "mha")
  perceiver_ar = "perceiver_ar" in args
  base = lm_shakespeare.get_config(variant + (",perceiver_ar" if perceiver_ar else ""))

  config = ml_collections.ConfigDict()
  config.seed = 0  # params init and data order.
  config.model = base.model  # 2-layer LM below; attention sizes as lm_shakespeare.
  config.model.vocab_size = 8192  # Zoology's MQAR vocabulary.
  # Zoology's figure-2 models are 2 layers deep (Perceiver AR: cross-attention + 1 layer).
  config.model.num_layers = 1 if perceiver_ar else 2
  if perceiver_ar:
    config.model.num_latents = 16  # M: few latents, a tight bottleneck.
  config.model.d_model = 64  # D (Zoology sweeps 64..512).
  config.model.mlp_dim = 256  # F.

  config.data = ml_collections.ConfigDict()
  config.data.name = "mqar"  # synthetic task: mqar or copy.
  config.data.seq_len = 128  # T.
  config.data.vocab_size = 8192  # keys from the lower half, values from the upper half.
  config.data.num_kv_pairs = 8  # key-value pairs, each queried once later.
  config.data.num_train_examples = 100_000  # size of the (deterministic) train set.
  config.data.num_eval_examples = 1000  # size of the validation and test sets.
  config.data.synthetic_seed = 0  # which examples are generated.
  # Zoology's example distribution (zoology/data/multiquery_ar.py):
  config.data.mqar_power_a = 0.01  # query-slot law ~ k^(a-1): mostly short gaps (1 = uniform).
  config.data.mqar_random_filler = True  # non-pair, non-query inputs: random vocabulary tokens.
  config.data.mqar_distinct_values = True  # an example's values drawn without replacement.
  config.data.mqar_show_answer = False  # True: put each value right after its query key.
  config.data.eval_split = "validation"  # periodic and final evaluation.
  config.data.test_split = "test"  # also reported by eval.py.
  config.data.worker_count = 0  # Grain worker processes.
  # Logits only at the scored query positions (the V = 8192 head is most of the step otherwise);
  # Perceiver AR scores its last M positions instead.
  config.data.scored_positions = not perceiver_ar

  # AdamW recipe of lm_shakespeare, with a higher rate: at 1e-3 mha had 6.5% recall after 750
  # steps at T=128; at 3e-3 it passes 40% by then at T=64.
  config.train = base.train
  config.train.update(batch_size=64, num_steps=3000, learning_rate=3e-3,
                      end_learning_rate=1e-4, warmup_steps=200, weight_decay=0.1,
                      eval_every=500, eval_batch_size=250, checkpoint_every=1000)
  config.eval = base.eval
  config.eval.sample_len = 0  # no text to sample.

  if "zoology" in args:
    # Zoology (arXiv 2312.04927, figure 2; zoology/experiments): 2 attention-only layers with
    # one head, batch 512 at T=64, AdamW with weight decay 0.1 and cosine decay, lr from
    # logspace(1e-4, 1e-2, 4) (2.2e-3 here), 100k training examples for up to 64 epochs. Here
    # 5 epochs: a 20-epoch run had 99.9% validation recall after its 5th (a CPU budget).
    config.model.update(d_model=64, mlp_dim=0)
    if "multihead" in args:  # 4 heads of 16 (GQA/GTA: 2 KV heads; RoPE on half of a key).
      config.model.attention.update(head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
                                    qk_rope_head_dim=8)
    else:
      config.model.attention.update(num_heads=1, num_kv_heads=1, head_dim=64)
    config.data.update(seq_len=64, num_kv_pairs=4, num_train_examples=100_000)
    steps_per_epoch = config.data.num_train_examples // 512
    config.train.update(batch_size=512, num_steps=5 * steps_per_epoch, learning_rate=2.2e-3,
                        end_learning_rate=0.0, warmup_steps=100, weight_decay=0.1,
                        eval_every=steps_per_epoch, eval_batch_size=500,
                        checkpoint_every=steps_per_epoch, log_every=50)
  if "runlocal" in args:
    config.model.update(d_model=32, mlp_dim=64, vocab_size=64)
    config.model.attention.update(head_dim=8, kv_lora_rank=8, qk_nope_head_dim=8,
                                  qk_rope_head_dim=4, v_head_dim=8, lowrank_rank=4)
    config.data.update(seq_len=32, vocab_size=64, num_kv_pairs=4, num_eval_examples=100)
    config.train.update(batch_size=16, num_steps=20, warmup_steps=2, log_every=5,
                        eval_every=10, eval_batch_size=50, checkpoint_every=10)
  return config
