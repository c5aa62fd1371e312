"""Decode speed against the memory-bandwidth bound (docs/design.md, "Decode benchmark").

A decode step of batch B reads the whole KV cache once and every weight once, so no step can
take less than (B · cache bytes per sequence + weight bytes) / read bandwidth. `run` measures,
for each variant x context x batch: the prefill of (context - steps) tokens of one sequence,
the mean time of the last `steps` decode steps (one jitted `lax.scan` of greedy steps, as
`generate` runs them, cache donated), and that bound, with the read bandwidth measured by the
same process on the same device. It also reports the step's FLOPs (XLA's count) against the
device's measured matmul rate: where that compute time nears the step time, the step is compute
bound and no cache layout can reach the bandwidth bound.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from latent_attention import kv_cache_bytes
from latent_attention.models.kv_cache import decode_read_bytes
from latent_attention.models import build_model, parse_config
from latent_attention.models.decoding import decode_chunks, init_cache
from latent_attention.models.perceiver_ar import PerceiverARConfig
from latent_attention.training import peaks
from latent_attention.training.metrics import format_duration

# Variant name -> overrides of model.attention (every other field comes from the config).
VARIANTS = {
    "mha": dict(kind="mha"),
    "gqa": dict(kind="gqa"),
    "mqa": dict(kind="mqa"),
    "mla_naive": dict(kind="mla", mla_decode_mode="naive"),
    "mla_latent": dict(kind="mla", mla_decode_mode="latent"),
    "mla_absorbed": dict(kind="mla", mla_decode_mode="absorbed"),
    "gla_absorbed": dict(kind="gla", mla_decode_mode="absorbed"),
    # DSA (DeepSeek-V3.2): absorbed MLA reading the indexer's top `index_topk` positions; the
    # indexer's size relative to the latent is V3.2's (d_I 128 beside d_c + d_R = 576).
    "mla_sparse": dict(kind="mla", mla_decode_mode="absorbed", index_topk=1024,
                       index_n_heads=4, index_head_dim=64),
    "gta": dict(kind="gta"),
    "tpa": dict(kind="tpa"),
    "lowrank_gated": dict(kind="lowrank_gated"),
    "head_gated": dict(kind="head_gated"),
    "perceiver_ar": dict(kind="mha"),  # Perceiver AR over the same blocks, mha attention.
}
DEFAULT_VARIANTS = ("mha", "gqa", "mqa", "mla_latent", "mla_absorbed", "gla_absorbed", "gta",
                    "tpa", "lowrank_gated", "perceiver_ar")


def check_variants(names) -> None:
  for name in names:
    if name not in VARIANTS:
      raise ValueError(f"--variants: {name!r} is invalid: choose from {', '.join(VARIANTS)}")


def variant_config(model_config, name: str, perceiver_latents: int,
                   decode_cache: str = "contiguous", decode_kernel: str = "xla",
                   index_topk: int = 0):
  """The model dataclass of variant `name` built on `model_config` (an LM section). A latent
  cache (mla / gla, not naive) takes `decode_cache`; an absorbed one also `decode_kernel`;
  mla_sparse reads `index_topk` positions (0: the variant's 1024)."""
  lm = parse_config(model_config)
  attention = dataclasses.replace(lm.attention, **VARIANTS[name])
  if attention.index_topk and index_topk:
    attention = dataclasses.replace(attention, index_topk=index_topk)
  paged = {}
  if paged_variant(name) and decode_cache == "paged":
    paged = dict(decode_cache="paged", decode_kernel=(
        decode_kernel if attention.mla_decode_mode == "absorbed" else "xla"))
  if attention.kind == "gla":  # GLA-G splits MLA's latent into G heads (the paper's pairing).
    g = attention.gla_latent_heads
    if attention.kv_lora_rank % g:
      raise ValueError(f"model.attention.kv_lora_rank={attention.kv_lora_rank} is invalid for "
                       f"gla_absorbed: must be divisible by gla_latent_heads={g}")
    attention = dataclasses.replace(attention, kv_lora_rank=attention.kv_lora_rank // g)
  if name != "perceiver_ar":
    return dataclasses.replace(lm, attention=attention, **paged)
  return PerceiverARConfig(
      vocab_size=lm.vocab_size, d_model=lm.d_model, num_latents=perceiver_latents,
      num_layers=lm.num_layers, mlp_dim=lm.mlp_dim or 4 * lm.d_model,
      tie_embeddings=lm.tie_embeddings, dtype=lm.dtype, attention=attention)


def paged_variant(name: str) -> bool:
  """Variants with a latent cache, the ones the paged cache holds (not yet DSA's)."""
  return VARIANTS[name]["kind"] in ("mla", "gla") and name not in ("mla_naive", "mla_sparse")


def kernel_variant(name: str) -> bool:
  """Variants whose paged decode steps `decode_kernel` picks: the absorbed ones."""
  return paged_variant(name) and VARIANTS[name].get("mla_decode_mode") == "absorbed"


def _batch_cache(cache_1, shapes):
  """A one-sequence cache repeated over a batch. Contiguous buffers are broadcast (one
  sequence's have no batch axis, attention/cache.py); each row of a paged cache gets its own
  copy of the pages (pools tiled, block tables offset), so a step reads B rows' pages."""
  pages = next((x.shape[0] for path, x in jax.tree_util.tree_leaves_with_path(cache_1)
                if path[-1].key == "page_taken"), 0)

  def grow(path, x, s):
    name = path[-1].key
    if name in ("ckv_PGSC", "k_rope_PSR", "page_taken"):
      return jnp.copy(jnp.concatenate([x] * (s.shape[0] // x.shape[0])))  # copied at batch 1.
    if name == "block_table":
      return x + pages * jnp.arange(s.shape[0], dtype=x.dtype)[:, None]
    return jnp.copy(jnp.broadcast_to(x if x.ndim == len(s.shape) else x[None], s.shape))

  return jax.tree_util.tree_map_with_path(grow, cache_1, shapes)


def _tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(model_cfg, *, context: int, batches, steps: int, bandwidth: float,
            flops_rate: float, memory_gb: float = 0.0, seed: int = 0) -> list:
  """Rows of one variant at one context: a prefill of context - steps tokens (one sequence),
  then per batch size the time of `steps` greedy decode steps from that prefilled cache.

  The prefill runs once, on one sequence: a prefill is compute bound (every batch row costs
  the same) and a batch-8 prefill of 8k tokens takes minutes on a CPU. Its cache is repeated
  over the batch: decode time does not depend on the cached values.
  """
  if steps < 1 or context <= steps:
    raise ValueError(f"context={context} must exceed steps={steps} >= 1")
  model = build_model(model_cfg)
  params = jax.jit(lambda: model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
                   )()["params"]
  prompt_1T = jax.random.randint(jax.random.key(seed + 1), (1, context - steps), 0,
                                 model_cfg.vocab_size)

  def prefill(params, prompt_1T):
    cache = init_cache(model, 1, context)
    logits, mutated = model.apply({"params": params, "cache": cache}, prompt_1T, decode=True,
                                  mutable=["cache"])
    return mutated["cache"], jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)

  def step(params, cache, tok_B1):
    logits, mutated = model.apply({"params": params, "cache": cache}, tok_B1, decode=True,
                                  mutable=["cache"])
    return mutated["cache"], jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)

  def decode(params, cache, tok_B1):  # `steps` greedy steps in one scan, as `generate` runs.
    return jax.lax.scan(lambda carry, _: (step(params, *carry), None), (cache, tok_B1),
                        length=steps)[0]

  prefill_c = jax.jit(prefill).lower(params, prompt_1T).compile()
  t0 = time.perf_counter()
  cache_1, tok_11 = jax.block_until_ready(prefill_c(params, prompt_1T))
  prefill_s = time.perf_counter() - t0
  cache_bytes = kv_cache_bytes(cache_1)
  dtype = next(x.dtype for x in jax.tree.leaves(cache_1) if jnp.issubdtype(x.dtype, jnp.floating))
  formula = model.cache_elements(context, 1) * jnp.dtype(dtype).itemsize
  weight_bytes = _tree_bytes(params)
  rows = []
  for batch in batches:
    # Fresh buffers for every batch size (the decode call donates them).
    cache = _batch_cache(cache_1, jax.eval_shape(lambda: init_cache(model, batch, context)))
    tok_B1 = jnp.repeat(tok_11, batch, axis=0)
    # XLA counts a loop body once whatever its trip count: FLOPs come from one step's program.
    flops = peaks.xla_flops(jax.jit(step).lower(params, cache, tok_B1))
    decode_c = jax.jit(decode, donate_argnums=1).lower(params, cache, tok_B1).compile()
    t0 = time.perf_counter()
    cache, tok_B1 = jax.block_until_ready(decode_c(params, cache, tok_B1))
    step_s = (time.perf_counter() - t0) / steps
    read = kv_cache_bytes(cache) + weight_bytes
    if getattr(model_cfg, "attention", None) and model_cfg.attention.index_topk:
      read = decode_read_bytes(model_cfg, context, batch, dtype) + weight_bytes  # DSA.
    bound_s = read / bandwidth
    budget = memory_gb * 2**30 - weight_bytes
    rows.append({
        "context": context, "batch": batch, "prefill_tokens": context - steps,
        "prefill_s": prefill_s, "prefill_tokens_per_s": (context - steps) / prefill_s,
        "decode_ms_per_step": step_s * 1e3, "decode_tokens_per_s": batch / step_s,
        "cache_bytes_per_sequence": cache_bytes, "cache_formula_bytes_per_sequence": formula,
        "cache_bytes_per_token": cache_bytes / context, "weight_bytes": weight_bytes,
        "bytes_read_per_step": read, "achieved_gb_per_s": read / step_s / 1e9,
        "bound_ms_per_step": bound_s * 1e3, "times_bound": step_s / bound_s,
        "flops_per_step": flops, "achieved_gflop_per_s": flops / step_s / 1e9,
        "compute_ms_per_step": flops / flops_rate * 1e3,
        "max_batch_in_memory": max(0, int(budget // cache_bytes)) if memory_gb else None,
    })
  return rows


def device_name() -> str:
  """The accelerator's kind, or on CPU the processor model (jax calls every CPU "cpu")."""
  kind = jax.devices()[0].device_kind
  if jax.default_backend() == "cpu" and os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if models:
      return f"{models[0]} ({len(models)} cores)"
  return kind


def kernel_check(model_cfg, *, context: int, steps: int, seed: int = 0) -> dict:
  """The Pallas kernel in interpret mode against the XLA path, both over the paged cache: the
  logits of a prefill of context - steps tokens and `steps` single-token steps (one sequence).
  Off TPU the kernel only runs interpreted, so this is its check there, not a timing."""
  xla = build_model(dataclasses.replace(model_cfg, decode_kernel="xla"))
  pallas = build_model(dataclasses.replace(model_cfg, decode_kernel="pallas"))
  params = xla.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  tokens_1T = jax.random.randint(jax.random.key(seed + 1), (1, context), 0, model_cfg.vocab_size)
  chunks = [context - steps] + [1] * steps
  run_xla, run_pallas = (jax.jit(lambda p, t, m=m: decode_chunks(m, p, t, chunks)[0])
                         for m in (xla, pallas))
  want, got = run_xla(params, tokens_1T)[0, -steps:], run_pallas(params, tokens_1T)[0, -steps:]
  return {"context": context, "steps": steps, "max_abs_logit": float(jnp.abs(want).max()),
          "max_abs_difference": float(jnp.abs(got - want).max())}


def run(model_config, *, variants, contexts, batches, steps: int, memory_gb: float,
        perceiver_latents: int, decode_cache: str = "contiguous", decode_kernel: str = "xla",
        index_topk: int = 0, log=print) -> dict:
  """Every variant x context x batch point, with a progress line (and ETA) per point. With
  decode_kernel 'pallas' off TPU, the absorbed paged variants get `kernel_check` instead of
  timings."""
  check_variants(variants)
  checks = []
  if decode_kernel == "pallas" and jax.default_backend() != "tpu":
    log(f"--decode_kernel=pallas on {jax.default_backend()}: Pallas runs interpreted here, so "
        "its variants are checked against the XLA path, not timed (timings need a TPU)")
    for name in [v for v in variants if kernel_variant(v)]:
      cfg = variant_config(model_config, name, perceiver_latents, decode_cache, decode_kernel)
      for context in contexts:
        checks.append({"variant": name, **kernel_check(cfg, context=context, steps=steps)})
        log(f"{name} context={context}: pallas (interpret) vs xla, max |logit difference| "
            f"{checks[-1]['max_abs_difference']:.3g} (max |logit| "
            f"{checks[-1]['max_abs_logit']:.3g})")
    variants = [v for v in variants if not kernel_variant(v)]
  # The best of three measurements: on a shared machine one can catch a neighbour's burst.
  bandwidth, flops_rate = max(peaks.read_bandwidth() for _ in range(3)), peaks.matmul_flops()
  log(f"read bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul {flops_rate / 1e9:.0f} "
      f"GFLOP/s ({device_name()})")
  points = [(v, c) for v in variants for c in contexts]
  rows, start = [], time.perf_counter()
  for i, (name, context) in enumerate(points, 1):
    cfg = variant_config(model_config, name, perceiver_latents, decode_cache, decode_kernel,
                         index_topk)
    for row in measure(cfg, context=context, batches=batches, steps=steps, bandwidth=bandwidth,
                       flops_rate=flops_rate, memory_gb=memory_gb):
      rows.append({"variant": name, **row})
      log(f"[{len(rows)}/{len(points) * len(batches)}] {name} context={context} "
          f"batch={row['batch']}: prefill {row['prefill_s']:.2f} s, decode "
          f"{row['decode_ms_per_step']:.2f} ms/step ({row['decode_tokens_per_s']:,.0f} tokens/s, "
          f"{row['times_bound']:.1f}x bound); "
          f"ETA {format_duration((time.perf_counter() - start) / i * (len(points) - i))}")
  final = max(bandwidth, peaks.read_bandwidth())  # Measured again after the points: the best holds.
  if final > bandwidth:
    log(f"read bandwidth remeasured: {final / 1e9:.1f} GB/s; bounds use it")
    for row in rows:
      row["bound_ms_per_step"] = row["bytes_read_per_step"] / final * 1e3
      row["times_bound"] = row["decode_ms_per_step"] / row["bound_ms_per_step"]
  return {"device": device_name(), "backend": jax.default_backend(),
          "read_bandwidth_gb_per_s": final / 1e9, "matmul_gflop_per_s": flops_rate / 1e9,
          "steps": steps, "memory_gb": memory_gb, "decode_cache": decode_cache,
          "decode_kernel": decode_kernel, "rows": rows, "kernel_checks": checks}


def markdown(result: dict) -> str:
  """The results table (docs/results/decode_speed.md): one row per point."""
  lines = [f"Device: {result['device']}, read bandwidth {result['read_bandwidth_gb_per_s']:.1f} "
           f"GB/s, float32 matmul {result['matmul_gflop_per_s']:.0f} GFLOP/s; decode = mean of "
           f"the last {result['steps']} steps (one scan). bound = (cache + weight bytes) / "
           "bandwidth; compute = XLA's FLOPs / matmul rate. Latent variants' cache: "
           f"{result['decode_cache']}, decode kernel: {result['decode_kernel']}.", "",
           "| variant | context | batch | prefill s (1 seq) | decode ms/step | tokens/s "
           "| cache B/token | bound ms | x bound | compute ms | GFLOP/s | max batch |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    lines.append(
        f"| {r['variant']} | {r['context']} | {r['batch']} | {r['prefill_s']:.2f} | "
        f"{r['decode_ms_per_step']:.2f} | {r['decode_tokens_per_s']:,.0f} | "
        f"{r['cache_bytes_per_token']:,.0f} | {r['bound_ms_per_step']:.2f} | "
        f"{r['times_bound']:.1f} | {r['compute_ms_per_step']:.2f} | "
        f"{r['achieved_gflop_per_s']:.0f} | {r['max_batch_in_memory'] or '-'} |")
  if result["kernel_checks"]:
    lines += ["", "Pallas kernel in interpret mode against the XLA path (paged cache), logits of "
              "the last steps; timings need a TPU:", "",
              "| variant | context | steps | max abs logit difference | max abs logit |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {c['variant']} | {c['context']} | {c['steps']} | "
              f"{c['max_abs_difference']:.3g} | {c['max_abs_logit']:.3g} |"
              for c in result["kernel_checks"]]
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  """Decode tokens/s vs context, one line per variant, one panel per batch size (log axes)."""
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = result["rows"]
  batches = sorted({r["batch"] for r in rows})
  fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
  for ax, batch in zip(axes[0], batches):
    for name in dict.fromkeys(r["variant"] for r in rows):
      pts = sorted((r["context"], r["decode_tokens_per_s"]) for r in rows
                   if r["variant"] == name and r["batch"] == batch)
      ax.plot(*np.array(pts).T, marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode tokens/s",
           title=f"batch {batch}")
    contexts = sorted({r["context"] for r in rows})
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"Decode speed, {result['device']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
