"""Train-step and decode timing (docs/design.md: step time = median jitted step after warm-up)."""

import re
import statistics
import time

import jax

from latent_attention import timing
from latent_attention.bench import step_profile
from latent_attention.training import evaluate as evaluate_lib, loop, peaks


def benchmark(config, steps: int = 50, warmup: int = 5, peak_tflops: float = 0.0,
              decode_tokens: int = 128, profile_steps: int = 0) -> dict:
  """Median train-step time, tokens/s, XLA FLOPs per token, MFU (against `peak_tflops` per
  device, or training/peaks.py's) and decode tokens/s; with profile_steps, also the per-op
  profile of that many steps (`step_profile.profile`)."""
  exp = loop.setup(config)
  data_iter = iter(exp.dataset.train_loader(config.train.batch_size, config.seed))
  state = exp.init_state(jax.random.key(config.seed))
  batch = exp.to_global(next(data_iter))
  compiled = exp.train_step.lower(state, batch).compile()
  tokens = config.train.batch_size * exp.dataset.tokens_per_example()
  flops_per_token = peaks.step_flops(exp.train_step, compiled, state, batch) / tokens
  # cuDNN's fused (flash) attention appears as custom calls in the compiled step: the check
  # that the core's "cudnn" choice (attention/core.py) reached the GPU kernel.
  cudnn_attention_calls = len(re.findall(r'custom_call_target="__cudnn\$fmha',
                                         compiled.as_text()))

  def train_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return state, metrics

  times = timing.time_calls(train_step, repeats=steps, warmup=warmup)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, exp.to_global(next(data_iter)))
  jax.block_until_ready(m)
  pipeline_step = (time.perf_counter() - t0) / steps
  step = statistics.median(times)
  out = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
         "step_time_s": step, "pipeline_step_time_s": pipeline_step,
         "tokens_per_s": tokens / step, "train_flops_per_token": flops_per_token,
         "achieved_tflops": flops_per_token * tokens / step / 1e12,
         "cudnn_attention_calls": cudnn_attention_calls}
  peak, out["peak_source"] = peaks.peak_tflops(config.model.get("dtype", "float32"),
                                               peak_tflops)
  out["peak_tflops"], out["mfu"] = peak, out["achieved_tflops"] / peak
  if decode_tokens and exp.dataset.task == "lm" and hasattr(exp.model, "cache_elements"):
    out["decode_tokens_per_s"] = evaluate_lib.decode_speed(
        exp, state.params, max(1, config.data.seq_len // 2), decode_tokens)
  if profile_steps:  # Last: the traced steps consume (donate) the state.
    out["profile"] = step_profile.profile(compiled, (state, batch), profile_steps)
  return out
