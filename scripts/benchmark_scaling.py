r"""Time vs input length N: Perceiver latent encoder (fixed M) vs full self-attention (a benchmark).

  python scripts/benchmark_scaling.py                       # N = 512 .. 16384 on CPU
  python scripts/benchmark_scaling.py --max_len=131072 --max_full_len=32768 --dtype=bfloat16

Both encoders have the same width and attention kind, one layer each:
  perceiver  M learned latents cross-attend to the N inputs, then one latent self-attention
             block: O(N·M + M²);
  full       one self-attention block over the N inputs: O(N²).
Each block is attention + GELU MLP with pre-norm residuals (`attention.induced.AttentionBlock`).
For every N the script times the jitted forward and forward+backward (gradients w.r.t. params and
input): median of --repeats runs after one warm-up (compilation), with block_until_ready. It fits
the exponent k of time ∝ N^k by least squares on log-log over N >= --fit_min_len (default: the
larger half of the lengths), prints a table and the exponents, and writes a log-log PNG.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import linen as nn
from matplotlib.figure import Figure

from latent_attention import cli
from latent_attention.attention import AttentionConfig
from latent_attention.attention.induced import AttentionBlock
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


class LatentEncoder(nn.Module):
  """M learned latents cross-attend to the input, then one latent self-attention block."""

  cfg: AttentionConfig
  d_model: int
  num_latents: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BSD):
    latents_MD = self.param("latents", nn.initializers.truncated_normal(0.02),
                            (self.num_latents, self.d_model))
    z_BMD = jnp.broadcast_to(latents_MD.astype(self.dtype), (x_BSD.shape[0], *latents_MD.shape))
    block = dict(d_model=self.d_model, mlp_dim=4 * self.d_model, dtype=self.dtype)
    z_BMD = AttentionBlock(self.cfg, name="cross", **block)(z_BMD, x_BSD)
    return AttentionBlock(self.cfg, name="self", **block)(z_BMD)


def median_seconds(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # Warm-up: compilation.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def time_encoder(module, n, dtype, repeats):
  """(forward, forward+backward) median seconds at input length n."""
  x_BSD = jax.random.normal(jax.random.key(0), (_BATCH.value, n, _D_MODEL.value), dtype)
  params = jax.jit(module.init)(jax.random.key(1), x_BSD)

  def loss(params, x_BSD):
    return module.apply(params, x_BSD).astype(jnp.float32).sum()

  forward = jax.jit(module.apply)
  backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return (median_seconds(forward, params, x_BSD, repeats=repeats),
          median_seconds(backward, params, x_BSD, repeats=repeats))


def fit_exponent(lengths, seconds, min_len):
  """Slope of log(time) against log(N), least squares over N >= min_len."""
  pts = [(n, s) for n, s in zip(lengths, seconds) if n >= min_len and s is not None]
  if len(pts) < 2:
    return float("nan")
  n, s = np.log(np.array(pts)).T
  return float(np.polyfit(n, s, 1)[0])


def main(argv):
  del argv
  dtype = DTYPES[_DTYPE.value]
  h = _NUM_HEADS.value
  if _MAX_LEN.value < _MIN_LEN.value:
    raise ValueError(f"--max_len={_MAX_LEN.value} is invalid: must be >= "
                     f"--min_len={_MIN_LEN.value}")
  if _D_MODEL.value % h:
    raise ValueError(f"--num_heads={h} is invalid: must divide --d_model={_D_MODEL.value}")
  cfg = AttentionConfig(kind=_KIND.value, num_heads=h, num_kv_heads=h,
                        head_dim=_D_MODEL.value // h)
  encoders = {
      "perceiver": LatentEncoder(cfg, _D_MODEL.value, _NUM_LATENTS.value, dtype),
      "full": AttentionBlock(cfg, _D_MODEL.value, 4 * _D_MODEL.value, dtype=dtype),
  }
  lengths = [_MIN_LEN.value * 2 ** i
             for i in range(int(np.log2(_MAX_LEN.value / _MIN_LEN.value)) + 1)]
  results = {(name, mode): [] for name in encoders for mode in ("fwd", "fwd+bwd")}
  print(f"device={jax.devices()[0].device_kind} D={_D_MODEL.value} heads={h} "
        f"M={_NUM_LATENTS.value} kind={_KIND.value} dtype={_DTYPE.value} batch={_BATCH.value}")
  print(f"{'N':>7} " + " ".join(f"{name + ' ' + mode:>20}" for name, mode in results))
  for n in lengths:
    for name, module in encoders.items():
      skip = name == "full" and n > _MAX_FULL_LEN.value
      fwd, bwd = (None, None) if skip else time_encoder(module, n, dtype, _REPEATS.value)
      results[(name, "fwd")].append(fwd)
      results[(name, "fwd+bwd")].append(bwd)
    print(f"{n:>7} " + " ".join(
        f"{'skipped' if v[-1] is None else f'{v[-1] * 1e3:.2f} ms':>20}"
        for v in results.values()))

  fit_min = _FIT_MIN_LEN.value or lengths[len(lengths) // 2]
  fig = Figure(figsize=(6, 4.5))
  ax = fig.subplots()
  print(f"exponent k of time ~ N^k, fitted on N >= {fit_min}:")
  for (name, mode), seconds in results.items():
    k = fit_exponent(lengths, seconds, fit_min)
    print(f"  {name:>9} {mode:>7}: k = {k:.2f}")
    pts = [(n, s) for n, s in zip(lengths, seconds) if s is not None]
    ax.loglog(*zip(*pts), marker="o", linestyle="-" if mode == "fwd" else "--",
              label=f"{name} {mode} (k={k:.2f})")
  ax.set_xlabel("input length N")
  ax.set_ylabel("seconds (median)")
  ax.set_title(f"Perceiver (M={_NUM_LATENTS.value}) vs full self-attention, D={_D_MODEL.value}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=120)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main)
