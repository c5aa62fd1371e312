"""The pre-flight (bench/preflight.py, scripts/preflight.py): runlocal LMs compiled on this CPU for
a v5e slice and an H100 by the real TPU compiler and the CUDA plugin (`make preflight-deps`)."""

import json
import os
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from latent_attention import config_files, kv_cache_formula_bytes
from latent_attention.bench import chips, preflight
from latent_attention.models import build_model, parse_config

pytestmark = [
    pytest.mark.skipif(not preflight.extras_available(), reason=preflight.MISSING),
    # conftest's persistent cache stores programs compiled for compile-only devices but cannot
    # load them: JAX warns and compiles again.
    pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry"),
]
LM = "configs/lm1b.py:mla,synthetic,runlocal"
FIELDS = ("argument_bytes", "temp_bytes", "output_bytes", "peak_bytes", "flops",
          "bytes_accessed", "est_step_s", "est_mfu", "hbm_capacity_bytes")


def load_config(spec, **overrides):
  config = config_files.load(os.path.join(ROOT, spec))
  config.update_from_flattened_dict(overrides)
  return config


def _train(target, fsdp=1, batch=8):
  config = load_config(LM)
  (report,) = preflight.compile_config(config, target, fsdp=fsdp, batch=batch, steps=("train",))
  return report


def _check_train(report, target, fsdp):
  assert report.fits and report.target == target
  assert all(getattr(report, f) > 0 for f in FIELDS), report
  assert report.peak_bytes >= report.argument_bytes
  if fsdp > 1:  # parameters gathered where used, gradients reduce-scattered to their shards.
    assert report.collectives["all-gather"]["count"] > 0
    assert report.collectives["reduce-scatter"]["count"] > 0


@pytest.mark.e2e
def test_runlocal_train_step_compiles_for_v5e_and_a_bigger_batch_needs_more_memory():
  """fsdp 1 and 2 on a v5e:2x2; the fsdp-1 compile is also the small side of the batch test
  (one test, so the compile is shared whatever worker runs it)."""
  small = _train("v5e:2x2")
  _check_train(small, "v5e:2x2", 1)
  _check_train(_train("v5e:2x2", fsdp=2), "v5e:2x2", 2)
  big = _train("v5e:2x2", batch=16)
  assert big.peak_bytes > small.peak_bytes and big.flops > small.flops


@pytest.mark.e2e
def test_runlocal_train_step_compiles_for_h100():
  _check_train(_train("h100:1x1x1"), "h100:1x1x1", 1)


@pytest.mark.e2e
def test_script_one_line_when_it_does_not_fit(tmp_path):
  # 2M x 2048 float32 embeddings (16 GiB) with their Adam moments on one 16 GiB v5e chip.
  out = tmp_path / "preflight.json"
  proc = subprocess.run(
      [sys.executable, "scripts/preflight.py", f"--config={LM}", "--target=v5e:1x1",
       "--config.model.vocab_size=2000000", "--config.model.d_model=2048",
       f"--json={out}"], cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [ln for ln in proc.stdout.splitlines() if "does not fit" in ln]
  assert lines and "needs" in lines[0] and "GiB" in lines[0], proc.stdout
  assert "Traceback" not in proc.stdout + proc.stderr
  result = json.loads(out.read_text())
  assert result["fits"] is False and result["target"] == "v5e:1x1"
  assert result["peak_bytes"] > chips.CHIPS["v5e"].hbm_bytes


def test_unknown_target_is_one_line():
  proc = subprocess.run([sys.executable, "scripts/preflight.py", f"--config={LM}",
                         "--target=v9z:2x2"], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "v9z:2x2 is invalid" in proc.stderr and "v5e:2x4" in proc.stderr


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla", "gla", "gta", "tpa",
                                  "lowrank_gated"])
def test_decode_arguments_are_cache_plus_weights(kind):
  """On one H100 (no tiling) the decode step's arguments are the cache, the weights in the
  compute dtype and the tokens; padding: only the cache's int32 position counters."""
  config = load_config(f"configs/lm1b.py:{kind},synthetic,runlocal")
  batch, context = 2, config.data.seq_len
  # cost=False: no CPU compile for the FLOPs, which this test does not read.
  (report,) = preflight.compile_config(config, "h100:1x1x1", batch=batch, steps=("decode",),
                                       cost=False)
  model_cfg = parse_config(config.model)
  dtype = jax.numpy.dtype(config.model.dtype)
  model = build_model(model_cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 8), "int32"))
  params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  expected = (kv_cache_formula_bytes(model_cfg, context, batch, dtype)
              + params * dtype.itemsize + 4 * batch)
  padding = 4 * 2 * config.model.num_layers  # an int32 index per layer and cache.
  assert expected <= report.argument_bytes <= expected + padding, (report.argument_bytes,
                                                                     expected)


@pytest.mark.e2e
def test_find_batch_is_the_largest_that_fits():
  # T = 2048 over a 1M vocabulary: 8 GiB of float32 logits a sequence, so one fits a 16 GiB
  # chip and two do not; from a guess of 2, two compiles (2, then 1).
  config = load_config(LM, **{"data.seq_len": 2048, "model.vocab_size": 1_000_000,
                              "data.vocab_size": 1_000_000})
  best, reports = preflight.find_batch(config, "v5e:1x1", guess=2)
  by_batch = {r.batch: r for r in reports}
  assert best > 0 and by_batch[best].fits
  assert not by_batch[best + 1].fits and by_batch[best + 1].message


def test_sweep_preflight_table(tmp_path):
  from latent_attention.studies import sweep_preflight  # pylint: disable=import-outside-toplevel
  table = sweep_preflight.run(os.path.join(ROOT, "configs/sweeps/lm_attention.py"), "v5e:2x2",
                              str(tmp_path), runlocal=True, only=["mla_c32"])
  assert [r[0] for r in table["rows"]] == ["mla_c32"]
  assert all(r[3] == "yes" and r[4] > 0 and r[6] > 0 for r in table["rows"])
  assert (tmp_path / "preflight_v5e_2x2.md").read_text().count("| yes |") == 1


@pytest.mark.e2e
def test_the_compilers_leave_the_environment_as_it_was():
  # What libtpu sets while loading (TPU_LIBRARY_PATH) would reach every subprocess started
  # later, whose TensorFlow would then load libtpu too and warn about missing TPU host bounds.
  # A fresh process: libtpu loads, and sets it, once per process.
  code = ("import os; from latent_attention.bench import preflight; before = dict(os.environ); "
          "assert preflight.devices('v5e:1x1') and preflight.devices('h100:1x1x1'); "
          "print(sorted(set(os.environ.items()) ^ set(before.items())))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"


def test_collectives_count_result_bytes_of_every_form_the_tpu_compiler_emits():
  hlo = "\n".join([
      "ENTRY %main (p: f32[8]) -> f32[8] {",
      # A plain all-reduce of two arrays: both are results.
      "  %ar = (f32[1024]{0}, f32[16]{0}) all-reduce(%a, %b), replica_groups={}",
      # An async all-gather: (operand, result), the result counted.
      "  %ag = (bf16[4,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(%c), dimensions={0}",
      # A collective matmul's ring step: (operand, result, sync flags).
      "  %cp = (bf16[12,64,1,32]{1,3,2,0}, bf16[12,64,1,32]{1,3,2,0}, u32[]{:S(2)}, u32[]{:S(2)})"
      " collective-permute-start(%d), source_target_pairs={{0,1},{1,0}}",
      "}",
      # The TPU compiler's reduce-scatter: an all-reduce inside all-reduce-scatter.
      "%all-reduce-scatter.1 (x: f32[64]) -> f32[8] {",
      "  %inner = f32[64]{0} all-reduce(%x), replica_groups={}",
      "}"])
  counted = preflight.collectives(hlo)
  assert counted["all-reduce"] == {"count": 1, "bytes": 4 * (1024 + 16)}
  assert counted["all-gather"] == {"count": 1, "bytes": 2 * 32 * 8}
  assert counted["collective-permute"] == {"count": 1, "bytes": 2 * 12 * 64 * 32}
  assert counted["reduce-scatter"] == {"count": 1, "bytes": 4 * 8}


def test_the_published_fsdp_table_is_the_committed_preflight_reports():
  from latent_attention.studies import preflight_tables
  pub = os.path.join(ROOT, "docs", "results", "preflight")
  with open(os.path.join(pub, "fsdp_v5e_2x4.json")) as f:
    published = json.load(f)
  built = preflight_tables.fsdp_table(os.path.join(pub, "raw"))
  assert built["rows"] == published["rows"] and built["columns"] == published["columns"]
  assert [r[0] for r in built["rows"]] == [1, 2, 4, 8]
