"""`config.data`: one frozen dataclass for every dataset, validated on construction.

A dataset reads its own fields and ignores the others (defaults below), as the attention kinds
share `AttentionConfig`. `make_dataset` builds it before any data is read.
"""

import dataclasses

from latent_attention.config import check_fields, fail

TEXT = ("tiny_shakespeare", "lm1b")  # TFDS text, one token stream (data/text.py).
IMAGE_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}  # TFDS images (images.py).
SYNTHETIC = ("mqar", "copy")  # generated in memory (data/synthetic.py).
NAMES = (*TEXT, *IMAGE_CLASSES, *SYNTHETIC)
TOKENIZERS = ("char", "sentencepiece")
MIN_SUBWORD_VOCAB = 260  # 3 special ids and the 256 byte-fallback ids (data/tokenizer.py).
SYNTHETIC_SPLITS = ("train", "validation", "test")  # each its own example seed.


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Fields of `config.data`."""

  name: str = "tiny_shakespeare"  # one of NAMES.
  # TFDS datasets: split specs ('train[:4000]'; text also chains them, 'validation+test').
  train_split: str = "train"  # training examples (text: also the char vocabulary).
  eval_split: str = "validation"  # periodic and final evaluation.
  test_split: str = "test"  # also reported by eval.py.
  data_dir: str | None = None  # TFDS data dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  worker_count: int = 0  # Grain worker processes (0 = in the main process).
  # Language modelling (text and synthetic).
  seq_len: int = 128  # T, tokens per window.
  vocab_size: int = 0  # sentencepiece pieces; synthetic: tokens in [0, V); char: unused (0).
  # Text (data/text.py).
  tokenizer: str = "char"  # char | sentencepiece (data/tokenizer.py).
  tokenizer_train_chars: int = 10_000_000  # sentencepiece trains on this prefix of train.
  token_cache_dir: str | None = None  # tokenized splits; None = ~/.cache/latent_attention.
  eval_window_targets: int = 0  # scored targets per eval window (0 = T; Perceiver AR: M).
  # Synthetic tasks (data/synthetic.py): splits train, validation and test.
  num_train_examples: int = 100_000  # size of the (deterministic) train set.
  num_eval_examples: int = 1000  # size of the validation and test sets.
  synthetic_seed: int = 0  # which examples are generated.
  scored_positions: bool = False  # examples carry their scored positions (logits only there).
  num_kv_pairs: int = 8  # mqar: key-value pairs, each queried once later.
  mqar_power_a: float = 0.01  # mqar: query-slot law ~ k^(a-1), in (0, 1] (1 = uniform).
  mqar_random_filler: bool = True  # mqar: other inputs are random tokens (else 0).
  mqar_distinct_values: bool = True  # mqar: an example's values drawn without replacement.
  mqar_show_answer: bool = False  # mqar: each value also right after its query key.

  def __post_init__(self):
    check_fields(self, "data",
                 positive=("seq_len", "tokenizer_train_chars", "num_train_examples",
                           "num_eval_examples", "num_kv_pairs"),
                 non_negative=("worker_count", "vocab_size", "eval_window_targets",
                               "synthetic_seed"),
                 choices={"name": NAMES, "tokenizer": TOKENIZERS})
    for f in ("train_split", "eval_split", "test_split"):
      if not getattr(self, f).strip():
        fail(f"data.{f}", getattr(self, f), "give a split, e.g. 'validation' or 'train[:90%]'")
    if self.eval_window_targets > self.seq_len:
      fail("data.eval_window_targets", self.eval_window_targets,
           f"must be in [0, data.seq_len={self.seq_len}]")
    if not 0 < self.mqar_power_a <= 1:
      fail("data.mqar_power_a", self.mqar_power_a, "must be in (0, 1] (1 = uniform)")
    if self.scored_positions and self.name not in SYNTHETIC:
      fail("data.scored_positions", True, f"only the synthetic tasks ({', '.join(SYNTHETIC)}) "
           f"carry scored positions; data.name={self.name!r} has none")
    if self.name in TEXT:
      self._check_text()
    elif self.name in SYNTHETIC:
      self._check_synthetic()
    elif self.vocab_size:
      fail("data.vocab_size", self.vocab_size, f"{self.name} is classified, not tokenized: "
           "leave it 0")

  def _check_text(self):
    if self.tokenizer == "sentencepiece" and self.vocab_size < MIN_SUBWORD_VOCAB:
      fail("data.vocab_size", self.vocab_size, f"a sentencepiece vocabulary needs at least "
           f"{MIN_SUBWORD_VOCAB} ids (3 special and the 256 byte-fallback ids)")
    if self.tokenizer == "char" and self.vocab_size:
      fail("data.vocab_size", self.vocab_size, "tokenizer='char' takes its vocabulary from the "
           "train split's characters: leave it 0 (or use tokenizer='sentencepiece')")

  def _check_synthetic(self):
    if self.train_split != "train":
      fail("data.train_split", self.train_split, "synthetic tasks train on split 'train'")
    for f in ("eval_split", "test_split"):
      if getattr(self, f) not in SYNTHETIC_SPLITS:
        fail(f"data.{f}", getattr(self, f), f"choose one of {', '.join(SYNTHETIC_SPLITS)}")
    n, t, v = self.num_kv_pairs, self.seq_len, self.vocab_size
    if self.name == "mqar":
      if (t - 2 * n) // 2 < n:
        fail("data.num_kv_pairs", n, "2*n context tokens plus n query slots at even positions "
             f"need data.seq_len >= 4*n, got {t}")
      if v < 4 * n:
        fail("data.vocab_size", v, f"must be >= 4 * num_kv_pairs = {4 * n} (distinct keys "
             "from the lower half, values from the upper half)")
    else:
      if t < 2:
        fail("data.seq_len", t, "copy needs >= 2 (tokens, then their copy)")
      if v < 2:
        fail("data.vocab_size", v, "copy draws tokens from [1, V): must be >= 2")
