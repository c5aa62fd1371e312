r"""Time vs input length N: Perceiver latent encoder (fixed M) vs full self-attention (a benchmark).

  python scripts/benchmark_scaling.py                       # N = 512 .. 16384 on CPU
  python scripts/benchmark_scaling.py --max_len=131072 --max_full_len=32768 --dtype=bfloat16

Both encoders have the same width and attention kind, one layer each:
  perceiver  M learned latents cross-attend to the N inputs, then one latent self-attention
             block: O(N·M + M²);
  full       one self-attention block over the N inputs: O(N²).
For every N the script times the jitted forward and forward+backward (gradients w.r.t. params and
input): median of --repeats runs after one warm-up (compilation), with block_until_ready. It fits
the exponent k of time ∝ N^k by least squares on log-log over N >= --fit_min_len (default: the
larger half of the lengths), prints a table and the exponents, and writes a log-log PNG.
"""

import jax
import numpy as np
from absl import flags

from latent_attention import cli
from latent_attention.attention import AttentionConfig
from latent_attention.models.lm import DTYPES

_MIN_LEN = flags.DEFINE_integer("min_len", 512, "Smallest input length N.", lower_bound=1)
_MAX_LEN = flags.DEFINE_integer("max_len", 16384, "Largest input length N (lengths double).",
                               lower_bound=1)
_MAX_FULL_LEN = flags.DEFINE_integer(
    "max_full_len", 16384, "Skip full self-attention above this N (its N x N logits: memory).",
    lower_bound=1)
_FIT_MIN_LEN = flags.DEFINE_integer(
    "fit_min_len", 0, "Fit the exponent on N >= this (0 = the larger half of the lengths).",
    lower_bound=0)
_D_MODEL = flags.DEFINE_integer("d_model", 64, "Width D of both encoders.", lower_bound=1)
_NUM_HEADS = flags.DEFINE_integer("num_heads", 2, "Attention heads (head dim = D / heads).",
                                  lower_bound=1)
_NUM_LATENTS = flags.DEFINE_integer("num_latents", 128, "Perceiver latents M.", lower_bound=1)
_KIND = flags.DEFINE_enum("kind", "mha", ["mha", "gqa", "mqa", "mla"],
                          "Attention kind of both encoders.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (median).",
                               lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", "scaling.png", "Where the log-log plot goes.")


def main(argv):
  del argv
  from latent_attention.bench import scaling  # JAX and the models load after flag parsing.
  from latent_attention.plots.scaling import time_vs_length
  dtype = DTYPES[_DTYPE.value]
  h, d = _NUM_HEADS.value, _D_MODEL.value
  if _MAX_LEN.value < _MIN_LEN.value:
    raise ValueError(f"--max_len={_MAX_LEN.value} is invalid: must be >= "
                     f"--min_len={_MIN_LEN.value}")
  if d % h:
    raise ValueError(f"--num_heads={h} is invalid: must divide --d_model={d}")
  cfg = AttentionConfig(kind=_KIND.value, num_heads=h, num_kv_heads=h, head_dim=d // h)
  encoders = scaling.encoders(cfg, d, _NUM_LATENTS.value, dtype)
  lengths = [_MIN_LEN.value * 2 ** i
             for i in range(int(np.log2(_MAX_LEN.value / _MIN_LEN.value)) + 1)]
  results = {(name, mode): [] for name in encoders for mode in scaling.MODES}
  print(f"device={jax.devices()[0].device_kind} D={d} heads={h} M={_NUM_LATENTS.value} "
        f"kind={_KIND.value} dtype={_DTYPE.value} batch={_BATCH.value}")
  print(f"{'N':>7} " + " ".join(f"{name + ' ' + mode:>20}" for name, mode in results))
  for n in lengths:
    for name, module in encoders.items():
      skip = name == "full" and n > _MAX_FULL_LEN.value
      times = (None, None) if skip else scaling.time_encoder(
          module, n, batch=_BATCH.value, d_model=d, dtype=dtype, repeats=_REPEATS.value)
      for mode, seconds in zip(scaling.MODES, times):
        results[(name, mode)].append(seconds)
    print(f"{n:>7} " + " ".join(
        f"{'skipped' if v[-1] is None else f'{v[-1] * 1e3:.2f} ms':>20}"
        for v in results.values()))
  fit_min = _FIT_MIN_LEN.value or lengths[len(lengths) // 2]
  exponents = {key: scaling.fit_exponent(lengths, s, fit_min) for key, s in results.items()}
  print(f"exponent k of time ~ N^k, fitted on N >= {fit_min}:")
  for (name, mode), k in exponents.items():
    print(f"  {name:>9} {mode:>7}: k = {k:.2f}")
  time_vs_length(lengths, results, exponents,
                 f"Perceiver (M={_NUM_LATENTS.value}) vs full self-attention, D={d}",
                 _OUTPUT.value)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
