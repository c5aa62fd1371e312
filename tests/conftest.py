"""Shared tiny configurations and fixtures: every test runs in seconds on 2 CPU cores."""

import atexit
import os
import shutil
import tempfile

# JAX's persistent compilation cache, one per test run (before anything imports jax): the
# pytest-xdist workers and the scripts the tests start share it, so a program compiled once
# (the same train step in a resumed run, the same model in several tests) loads from disk.
# Only programs that took >= 0.3 s to compile are written: writing the thousands of tiny eager
# ops too cost more than it saved (measured: ~5% more CPU time for the suite than 0.3 s).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="latent_attention_jax_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite compiles a few thousand tiny programs, mostly eager ops. XLA:CPU's LLVM passes and
# its fusion emitters are most of their compile time (measured: 7.2 s -> 4.5 s for five tiny
# LMs' init + forward) and buy nothing at these sizes; the math is the same (no fast-math either
# way, and the tolerances allow any summation order). XLA:CPU also splits each program's code
# generation into parallel parts, whose hand-off costs more than it saves on programs this small
# (measured: tests/test_lm_decode.py 46 s -> 39 s with one part). These are XLA debug flags: a
# jaxlib that drops one refuses to start, which `make lock` would show at once.
# The results tier (LATENT_ATTENTION_TEST_TIER=results, set by `make test-results`) trains the
# real configs for minutes: there XLA's usual optimisations pay for themselves many times over.
if ("xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
    and os.environ.get("LATENT_ATTENTION_TEST_TIER") != "results"):
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      "--xla_backend_optimization_level=0",
                                      "--xla_llvm_disable_expensive_passes=true",
                                      "--xla_cpu_use_fusion_emitters=false",
                                      "--xla_cpu_parallel_codegen_split_count=1"]).strip()

import jax.extend.core as jex  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from latent_attention.config import default_section  # noqa: E402
from latent_attention.models import LMConfig  # noqa: E402
from latent_attention import config_files  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(ROOT, "..", "shared", "tensorflow_datasets"))

F32_EPS = float(np.finfo(np.float32).eps)  # 2**-23


def assert_f32_close(actual, expected, *, terms, scale=None):
  """`actual` equals `expected` up to float32 rounding (two evaluations of the same math).

  An output whose path accumulates `terms` rounded operations on values up to `scale`
  (default: max |expected|) differs by at most about terms * eps * scale, whatever order
  XLA sums in on a given CPU. Callers pass the total length of the contractions on the
  output's path (and say how they counted), so a real bug, an O(scale) error, still fails.

  A scale of 0 (an all-zero `expected` and no explicit scale) falls back to 1.0: the
  tolerance is then terms * eps absolute, still far below any O(1) error.
  """
  expected = np.asarray(expected, np.float64)
  if scale is None:
    scale = float(np.abs(expected).max(initial=0.0))
  scale = float(scale) or 1.0
  atol = terms * F32_EPS * scale
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=atol,
                             err_msg=f"terms={terms}, scale={scale:.4g}, atol={atol:.3g}")


def jaxpr_shapes(jaxpr):
  """Shapes of every intermediate of a jaxpr, inside nested jaxprs (jit, custom_vjp) too."""
  for eqn in jaxpr.eqns:
    yield from (v.aval.shape for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jex.ClosedJaxpr):
          yield from jaxpr_shapes(sub.jaxpr)
        elif isinstance(sub, jex.Jaxpr):
          yield from jaxpr_shapes(sub)


def lm_terms(cfg, t, layers=None):
  """Rounded-operation count on the logits' path of a pre-norm LM (tiny_lm_config's shape).

  Per layer (`layers`, default cfg.num_layers): two RMSNorms (D each), the q/k/v projections
  (D), q.k (head dim, counted as D: it also covers MLA's low-rank latents, all <= D), softmax
  and weighted sum over t keys (2t), the output projection (heads x head dim <= D), the MLP up
  (D) and down (F): 6D + F + 2t. Then the final RMSNorm and the output head (D each).
  """
  layers = cfg.num_layers if layers is None else layers
  return layers * (6 * cfg.d_model + cfg.mlp_dim + 2 * t) + 2 * cfg.d_model

# (kind, extra attention overrides): one per distinct decode path and cache layout. Options that
# change nothing there are left to their own tests: MLA's query compression (the token-by-token
# test), lowrank_gated's sum of heads and head_gated's keep fraction (both act after attention).
LM_VARIANTS = [
    ("mha", {}),
    ("gqa", {"num_kv_heads": 2}),
    ("mqa", {}),
    ("mla", {"mla_decode_mode": "naive"}),
    ("mla", {"mla_decode_mode": "latent"}),
    ("mla", {"mla_decode_mode": "absorbed"}),
    # A converted model's layout: a RoPE key per kv group, chosen pairs, no latent norm.
    ("mla", {"mla_rope_heads": 2, "mla_rope_pairs": "0,3;1,2", "mla_kv_norm": False}),
    ("gla", {"gla_latent_heads": 2}),
    ("gta", {"num_kv_heads": 2}),
    ("tpa", {}),
    ("lowrank_gated", {}),
    ("head_gated", {"head_gated_top_k": 2}),
]


def variant_id(variant):
  kind, extra = variant
  return "-".join([kind, *(f"{k}={v}" for k, v in extra.items())])


def tiny_lm_config(kind="mha", **attention):
  """A 2-layer, width-32 LM config section with the given attention overrides."""
  cfg = default_section(LMConfig)
  cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.mlp_dim = 31, 32, 2, 64
  cfg.attention.update(kind=kind, num_heads=4, num_kv_heads=4, head_dim=8,
                       kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                       lowrank_rank=4)
  cfg.attention.update(attention)
  return cfg


@pytest.fixture(params=LM_VARIANTS, ids=variant_id)
def lm_variant(request):
  kind, extra = request.param
  return tiny_lm_config(kind, **extra)


def runlocal(variant="mla", **train):
  """lm_shakespeare's runlocal config (20 steps, checkpoints at 10 and 20, no text sample).

  decay_steps is fixed, so a shorter run follows the same learning-rate schedule.
  """
  config = config_files.load(os.path.join(ROOT, f"configs/lm_shakespeare.py:{variant},runlocal"))
  config.train.update(decay_steps=40, **train)
  config.eval.sample_len = 0
  return config


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory):
  """A finished `runlocal()` workdir, shared by the tests of one worker: copy it to change it."""
  from latent_attention.training.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("trained_lm") / "run")
  train_and_evaluate(runlocal(), workdir)
  return workdir


# Files whose tests run whole trainings or scripts in subprocesses, started first: with
# `--dist worksteal` the two workers then end on short tests together, instead of one idling
# while the other finishes a long test it drew last (measured: 181-194 s -> 169-171 s).
_SLOW_FILES = ("test_sweep.py", "test_cli.py", "test_prepare_data.py",
               "test_decode_benchmark.py", "test_training.py", "test_perceiver.py",
               "test_preflight.py", "test_failure_drills.py", "test_multiprocess.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _SLOW_FILES)  # stable: file order kept.
