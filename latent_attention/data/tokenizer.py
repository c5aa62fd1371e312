"""Token vocabularies of the text datasets: characters, or SentencePiece sub-words.

SentencePiece (Kudo & Richardson 2018, arXiv 1808.06226) is trained the first time on a prefix
of the train split, as in the Flax lm1b example (`examples/lm1b/tokenizer.py`: unigram model,
pad 0, end of sequence 1, unknown 2, no begin id). Unlike that example it keeps text exactly:
identity normalisation, whitespace kept as is, no dummy prefix and byte fallback for unseen
characters, so `decode(encode(text)) == text` for any text and a token's bytes are those of
its piece. The trained model travels as base64 in every checkpoint's metadata.

Each vocabulary gives `token_bytes`, the UTF-8 bytes each id stands for (the end-of-document id:
1, the separator it replaces), so bits per byte compare character and sub-word models on the
same text (docs/design.md, Measurements).
"""

import base64
import dataclasses
import io
import os

import numpy as np

from latent_attention.data.config import MIN_SUBWORD_VOCAB

PAD, EOD, UNK = 0, 1, 2  # the Flax lm1b example's ids.


@dataclasses.dataclass(frozen=True)
class CharVocab:
  """Every character of the train split, sorted (65 for tiny_shakespeare)."""

  chars: str

  @property
  def size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    table = {c: i for i, c in enumerate(self.chars)}
    unknown = sorted(set(text) - set(table))
    if unknown:
      raise ValueError(f"characters {unknown[:5]} are not in the vocabulary built from train")
    return np.array([table[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids)

  def token_bytes(self) -> np.ndarray:
    return np.array([len(c.encode("utf-8")) for c in self.chars], np.float32)

  def metadata(self) -> dict:
    return {"vocab": self.chars}


class SubwordVocab:
  """A trained SentencePiece model; id EOD ends every document."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # only sub-word runs need it.
    self.proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  @property
  def size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.array(self._sp.encode(text), np.int32)

  def encode_batch(self, texts) -> list:
    return self._sp.encode(list(texts))  # C++ threads over the batch.

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_bytes(self) -> np.ndarray:
    out = np.zeros(self.size, np.float32)
    for i in range(self.size):
      if self._sp.is_byte(i):
        out[i] = 1
      elif not (self._sp.is_control(i) or self._sp.is_unknown(i)):
        out[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    out[EOD] = 1
    return out

  def metadata(self) -> dict:
    return {"sentencepiece": base64.b64encode(self.proto).decode("ascii")}

  @classmethod
  def from_metadata(cls, metadata: dict) -> "SubwordVocab":
    return cls(base64.b64decode(metadata["sentencepiece"]))

  @classmethod
  def train(cls, documents, vocab_size: int, max_chars: int) -> "SubwordVocab":
    """Trains on the first `max_chars` characters of `documents` (an iterable of strings),
    cut into lines of at most 2000 characters that keep their newlines."""
    import sentencepiece as spm
    if vocab_size < MIN_SUBWORD_VOCAB:
      raise ValueError(f"data.vocab_size={vocab_size} is invalid: a sub-word vocabulary needs "
                       f"at least {MIN_SUBWORD_VOCAB} ids (3 special ids and the 256 "
                       "byte-fallback ids)")

    def lines():
      left = max_chars
      for doc in documents:
        for line in doc.splitlines(keepends=True):
          for start in range(0, len(line), 2000):
            piece = line[start:start + 2000][:left]
            left -= len(piece)
            yield piece
            if left <= 0:
              return

    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
          model_type="unigram", character_coverage=1.0, byte_fallback=True,
          normalization_rule_name="identity", remove_extra_whitespaces=False,
          add_dummy_prefix=False, split_digits=True, pad_id=PAD, eos_id=EOD, unk_id=UNK,
          bos_id=-1, max_sentence_length=8192, num_threads=os.cpu_count() or 1,
          minloglevel=2)
    except RuntimeError as e:  # e.g. fewer ids than the text's characters + 259 special.
      raise ValueError(f"data.vocab_size={vocab_size} is invalid for this text: "
                       f"{str(e).split('] ')[-1]}") from None
    return cls(model.getvalue())
