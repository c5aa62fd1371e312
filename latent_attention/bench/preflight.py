"""Pre-flight: compile a config's train, eval and decode steps for a TPU slice or a GPU node on
this CPU, and read per chip what they need against what the chip has.

The devices are compile-only ones (`jax.experimental.topologies.get_topology_desc`, as MaxText's
train_compile.py does): libtpu runs the real TPU compiler, and jax-cuda12-plugin compiles for
sm_90 from XLA's target config of an H100/H200 (bench/chips.py), no CUDA libraries needed. The
steps are training/loop.py's own (`jit_steps`) with the config's ('data', 'fsdp') mesh; inputs
are ShapeDtypeStructs, so nothing is allocated.

Read per chip: argument / output / temporary bytes (`memory_analysis`), peak = argument + output
- aliased + temporary. The TPU compiler itself refuses a program over HBM (RESOURCE_EXHAUSTED);
on GPU nothing checks, so a program fits when its peak is within the share of device memory
JAX's allocator takes (chips.GPU_MEM_FRACTION). FLOPs and bytes accessed are XLA's cost analysis
of the per-chip program; the GPU compiler reports none, so there they come from the same program
before partitioning, divided by the chips (unfused: its bytes are an upper bound). The step time
is a roofline estimate, max(FLOPs / peak, bytes / HBM bandwidth), and its MFU an upper bound.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from latent_attention.attention import core
from latent_attention.bench.chips import Target, parse_target
from latent_attention.data.config import TEXT
from latent_attention.models import build_model
from latent_attention.models.decoding import init_cache
from latent_attention.training import loop, sharding, state as state_lib

# `make preflight-deps` installs libtpu and jax-cuda12-plugin here, outside site-packages: there
# every JAX process of a machine without those chips would try them and log errors.
EXTRAS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), ".venv", "preflight")
MISSING = ("the pre-flight compilers are not installed: run `make preflight-deps` (libtpu and "
           "jax-cuda12-plugin, Linux x86-64 only)")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
             "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


class DoesNotFit(Exception):
  """A program over the chip's HBM: `needs` and `has` bytes per chip (None when not stated)."""

  def __init__(self, message, needs=None, has=None):
    super().__init__(message)
    self.needs, self.has = needs, has


def extras_available() -> bool:
  """Whether libtpu and the CUDA plugin are in EXTRAS_DIR or importable. Puts nothing on the
  path: a process that found them there before its backends came up would probe for the chips."""
  names = ("libtpu", "jax_plugins.xla_cuda12")
  if all(os.path.isdir(os.path.join(EXTRAS_DIR, *n.split("."))) for n in names):
    return True
  try:
    return all(importlib.util.find_spec(n) is not None for n in names)
  except ModuleNotFoundError:  # no jax_plugins package at all.
    return False


@functools.cache
def devices(target_name: str) -> tuple:
  """The compile-only devices of a target such as 'v5e:2x4' or 'h100:1x1x8'."""
  target = parse_target(target_name)
  if not extras_available():
    raise ValueError(MISSING)
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if not xla_bridge.backends_are_initialized() and jax.config.jax_platforms is None:
    jax.config.update("jax_platforms", "cpu")  # no probing for the chips compiled for.
  if os.path.isdir(EXTRAS_DIR) and EXTRAS_DIR not in sys.path:
    sys.path.append(EXTRAS_DIR)
  with _environ_restored():
    return _topology_devices(target, target_name)


@contextlib.contextmanager
def _environ_restored():
  """The process environment as it was, after the block: what the compilers set while loading
  (libtpu's TPU_LIBRARY_PATH, the variables below) would reach every subprocess started later
  (a training run, a test's script), whose TensorFlow then loads libtpu and warns it finds no
  TPU host bounds."""
  before = dict(os.environ)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(before)


def _topology_devices(target, target_name: str) -> tuple:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no metadata server to ask.
  # libtpu takes a lock file for the chips it drives; compiling drives none, and several
  # processes (test workers, a sweep beside a script) may compile at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    if target.chip.platform == "tpu":
      dims = [int(d) for d in target.topology.split("x")]
      # A slice smaller than one host (v5e:1x1, 1x2) states its host: the default is 2x2x1.
      small = {"chips_per_host_bounds": (dims + [1])[:3]} if min(dims[:2]) == 1 else {}
      return tuple(topologies.get_topology_desc(topology_name=target.name, platform="tpu",
                                                **small).devices)
    # The plugin validates CUDA libraries only for a machine that runs on it: none needed here.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    registered = xla_bridge._topology_factories  # pylint: disable=protected-access
    if xla_bridge.backends_are_initialized() and "cuda" not in registered:
      import jax_plugins.xla_cuda12 as cuda  # pylint: disable=import-outside-toplevel
      cuda.initialize()  # backends came up before the plugin was on the path.
    return tuple(topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                              target_config=target.spec_text()).devices)
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"--target={target_name}: {' '.join(str(e).split())[:300]}") from None


@dataclasses.dataclass
class Report:
  """One compiled step on one target; bytes and FLOPs per chip."""

  target: str
  step: str
  batch: int  # global batch (sequences).
  fits: bool
  hbm_capacity_bytes: int
  argument_bytes: int = 0
  temp_bytes: int = 0
  output_bytes: int = 0
  peak_bytes: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  est_step_s: float = 0.0
  est_mfu: float = 0.0
  collectives: dict = dataclasses.field(default_factory=dict)
  message: str = ""  # why it does not fit, in one line.

  def line(self) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    if not self.fits:
      return f"{self.target} {self.step} batch {self.batch}: does not fit: {self.message}"
    coll = format_collectives(self.collectives)
    return (f"{self.target} {self.step} batch {self.batch}: fits, per chip arguments "
            f"{gib(self.argument_bytes)} + temporaries {gib(self.temp_bytes)} + outputs "
            f"{gib(self.output_bytes)}, peak {gib(self.peak_bytes)} of "
            f"{gib(self.hbm_capacity_bytes)}; {self.flops:.3g} FLOP and "
            f"{self.bytes_accessed:.3g} B a step; est. (roofline) {self.est_step_s * 1e3:.2f} "
            f"ms/step, MFU <= {self.est_mfu:.0%}; collectives: {coll}")


def format_collectives(counted: dict, mib: str = "{:.1f}") -> str:
  """'all-reduce 5x 250.0 MiB, ...' of `collectives`' counts: the ones the program runs."""
  return ", ".join(f"{op} {c['count']}x {mib.format(c['bytes'] / 2**20)} MiB"
                   for op, c in counted.items() if c["count"]) or "none"


def collectives(hlo_text: str) -> dict:
  """{op: {count, bytes}} of the collectives of an optimized HLO module (result bytes; an async
  start's (operand, result[, sync flags]) tuple counts its result). The TPU compiler fuses a
  reduce-scatter into an `all-reduce-scatter` computation around an all-reduce: counted as a
  reduce-scatter of that computation's result. It also splits an all-gather or a reduce-scatter
  beside a matmul into a ring of collective-permutes overlapped with partial products (XLA's
  collective matmul; at fsdp 8 on a v5e:2x4 most of the gradient reduction): counted as such."""
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  pattern = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  header = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.-]+)\s*\(.*\)\s*->\s*(.*?)\s*\{\s*$")
  fused_result = None  # the result shape of the all-reduce-scatter computation we are in.
  for line in hlo_text.splitlines():
    head = header.match(line)
    if head:
      fused_result = head.group(2) if head.group(1).startswith("all-reduce-scatter") else None
      continue
    m = pattern.search(line)
    if not m:
      continue
    shape, op, start = m.groups()
    if fused_result is not None and op == "all-reduce":
      op, shape = "reduce-scatter", fused_result
    arrays = re.findall(r"(\w+)\[([\d,]*)\]", shape)
    if start and op in ("all-gather", "collective-permute") and len(arrays) > 1:
      arrays = [a for a in arrays if a[1]]  # a collective-permute's u32[] sync flags.
      arrays = arrays[len(arrays) // 2:]  # (operands, results): an all-reduce's are results.
    out[op]["count"] += 1
    out[op]["bytes"] += sum(_ITEMSIZE.get(t, 4) * int(np.prod([int(d) for d in dims.split(",")
                                                               if d] or [1]))
                            for t, dims in arrays)
  return out


def _cost(analysis) -> dict:
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return analysis or {}


def analyze(lowered, cpu_lowered, target: Target, step: str, batch: int,
            n_chips: int) -> Report:
  """Compiles `lowered` and reads its memory, cost and collectives (see module docstring);
  `cpu_lowered()` lowers the same step unpartitioned for this CPU, for the FLOPs a GPU program
  does not report."""
  chip = target.chip
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    text = " ".join(str(e).split())
    if "RESOURCE_EXHAUSTED" not in text:
      raise
    return _too_big(target, step, batch, text)
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  cost = _cost(compiled.cost_analysis())
  if "flops" not in cost and cpu_lowered:  # GPU: the program compiled for this CPU, per chip.
    whole = _cost(cpu_lowered().compile().cost_analysis())
    cost = {k: float(whole.get(k, 0.0)) / n_chips for k in ("flops", "bytes accessed")}
  flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  est = max(flops / chip.bf16_flops_per_s, moved / chip.hbm_bytes_per_s)
  report = Report(target.name, step, batch, peak <= target.usable_bytes,
                  target.chip.hbm_bytes, mem.argument_size_in_bytes, mem.temp_size_in_bytes,
                  mem.output_size_in_bytes, peak, flops, moved, est,
                  flops / est / chip.bf16_flops_per_s if est else 0.0,
                  collectives(compiled.as_text()))
  if not report.fits:
    report.message = (f"needs {peak / 2**30:.2f} GiB per chip, {target.name} has "
                      f"{target.usable_bytes / 2**30:.2f} GiB usable")
  return report


def _too_big(target, step, batch, text) -> Report:
  """The TPU compiler's RESOURCE_EXHAUSTED as a report: what it needs, what the chip has."""
  size = r"([\d.]+)([GMK])"
  as_bytes = lambda n, unit: float(n) * {"G": 2**30, "M": 2**20, "K": 2**10}[unit]  # noqa: E731
  # Two wordings: the temporaries alone over what is left, or the total with the arguments.
  temps = re.search(rf"\({size}\) exceeds available HBM \({size}\)", text)
  total = re.search(rf"Used {size} of {size} hbm.*?Total hbm usage >= {size}", text)
  if temps or total:
    needs, has, what = ((as_bytes(*temps.group(1, 2)), as_bytes(*temps.group(3, 4)),
                         "temporaries") if temps else
                        (as_bytes(*total.group(5, 6)), as_bytes(*total.group(3, 4)), "in all"))
    message = (f"needs {needs / 2**30:.2f} GiB per chip ({what}), {target.name} has "
               f"{has / 2**30:.2f} GiB")
  else:
    needs, message = None, text[:300]
  return Report(target.name, step, batch, False, target.chip.hbm_bytes,
                peak_bytes=int(needs or 0), message=message)


def _batch_specs(config, batch: int, mesh, train: bool) -> dict:
  """ShapeDtypeStructs of an LM batch (data/text.py, data/synthetic.py) on `mesh`."""
  t, on = config.data.seq_len, sharding.batch_sharding(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=on)  # noqa: E731
  out = {"inputs": spec((batch, t), jnp.int32), "targets": spec((batch, t), jnp.int32),
         "weights": spec((batch, t), jnp.float32)}
  if not train and config.data.name in TEXT:
    out["target_bytes"] = spec((batch, t), jnp.int32)
  return out


def _specs(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def compile_config(config, target_name: str, *, fsdp: int | None = None,
                   batch: int | None = None, decode_len: int = 0,
                   steps=("train", "eval", "decode"), cost: bool = True) -> list[Report]:
  """Reports of the config's steps on `target_name` (global `batch`: train.batch_size);
  `cost=False` skips a GPU step's CPU compile for its FLOPs (a search only asks whether it
  fits)."""
  target = parse_target(target_name)
  if config.model.get("name", "lm") not in ("lm", "perceiver_ar") or config.data.get(
      "scored_positions", False):
    raise ValueError("the pre-flight compiles token LMs (model.name lm or perceiver_ar) without "
                     "data.scored_positions")
  devs = devices(target.name)
  fsdp = config.train.get("fsdp", 1) if fsdp is None else fsdp
  batch = config.train.batch_size if batch is None else batch
  if batch % len(devs):
    raise ValueError(f"batch {batch} is invalid on {target.name}: must be divisible by its "
                     f"{len(devs)} chips")
  mesh = sharding.make_mesh(fsdp, devs)
  model = build_model(config.model)
  optimizer = state_lib.make_optimizer(config.train)
  example = jnp.zeros((1, config.data.seq_len), jnp.int32)
  state_sharding, _, train_step, eval_step = loop.jit_steps(model, optimizer, mesh, example)
  create = functools.partial(state_lib.create_state, model=model, optimizer=optimizer,
                             example_inputs=example)
  state = _specs(jax.eval_shape(create, jax.random.key(0)), state_sharding)
  reports = []
  for step in steps:
    if step == "train":
      fn, args = train_step, (state, _batch_specs(config, batch, mesh, True))
    elif step == "eval":
      fn, args = eval_step, (state.params, _batch_specs(config, batch, mesh, False))
    else:
      fn, args = _decode(model, config, state.params, mesh, batch,
                         decode_len or config.data.seq_len)
    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    cpu_lowered = cost and functools.partial(jax.jit(fn.__wrapped__).lower, *unsharded)
    # Attention's `auto` picks for the target, not for this CPU; on a GPU XLA's attention, not
    # cuDNN's (it needs libcudnn to compile), so long-T activations are over-counted there.
    token = core.target_platform.set(target.chip.platform)
    try:
      lowered = fn.lower(*args)
    finally:
      core.target_platform.reset(token)
    reports.append(analyze(lowered, cpu_lowered, target, step, batch, len(devs)))
  return reports


def decode_fn(model):
  """One greedy decode step, as bench/decode.py times it: (params, cache, tokens) -> (cache,
  next tokens)."""

  def step(params, cache, tok_B1):
    logits, mutated = model.apply({"params": params, "cache": cache}, tok_B1, decode=True,
                                  mutable=["cache"])
    return mutated["cache"], jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)

  return step


def _decode(model, config, params, mesh, batch: int, context: int):
  """The decode step of `batch` sequences against a cache of `context` positions, weights in
  the compute dtype (as served), cache batch-split over every chip when the batch divides."""
  dtype = jnp.dtype(config.model.get("dtype", "float32"))
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
      sharding=x.sharding), params)
  n = mesh.devices.size
  cache = jax.eval_shape(lambda: init_cache(model, batch, context))
  split = lambda x: x.ndim and x.shape[0] == batch and batch % n == 0  # noqa: E731
  on = lambda x: NamedSharding(mesh, P(sharding.AXES) if split(x) else P())  # noqa: E731
  cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on(x)), cache)
  tok = jax.ShapeDtypeStruct((batch, 1), jnp.int32, sharding=on(jnp.zeros((batch, 1))))
  return jax.jit(decode_fn(model), donate_argnums=1), (params, cache, tok)


def find_batch(config, target_name: str, *, fsdp: int | None = None, step: str = "train",
               decode_len: int = 0, guess: int = 0,
               limit: int = 1 << 16) -> tuple[int, list[Report]]:
  """The largest global batch, a multiple of the chips, whose `step` fits (0: none), and every
  report compiled on the way. Gallops from `guess` per chip (default train.batch_size's share;
  a good guess costs two compiles), then bisects."""
  n = len(devices(target_name))
  tried = {}

  def fits(per_chip):
    if per_chip not in tried:
      (tried[per_chip],) = compile_config(config, target_name, fsdp=fsdp, batch=per_chip * n,
                                          decode_len=decode_len, steps=(step,), cost=False)
    return tried[per_chip].fits

  start, stride = max(1, guess or config.train.batch_size // n), 1
  if fits(start):
    lo = start
    while lo + stride <= limit and fits(lo + stride):
      lo, stride = lo + stride, stride * 2
    hi = lo + stride
  else:
    hi = start
    while hi - stride >= 1 and not fits(hi - stride):
      hi, stride = hi - stride, stride * 2
    lo = max(hi - stride, 0)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo * n, sorted(tried.values(), key=lambda r: r.batch)
