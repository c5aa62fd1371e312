"""scripts/benchmark_decode.py at a tiny size: every field, measured cache = formula, outputs."""

import json
import os
import subprocess
import sys

import pytest

from latent_attention import config_files

from conftest import F32_EPS, ROOT, lm_terms

pytestmark = pytest.mark.e2e  # each test runs the benchmark script end to end.

FIELDS = {"variant", "context", "batch", "prefill_tokens", "prefill_s", "prefill_tokens_per_s",
          "decode_ms_per_step", "decode_tokens_per_s", "cache_bytes_per_sequence",
          "cache_formula_bytes_per_sequence", "cache_bytes_per_token", "weight_bytes",
          "bytes_read_per_step", "achieved_gb_per_s", "bound_ms_per_step", "times_bound",
          "flops_per_step", "achieved_gflop_per_s", "compute_ms_per_step",
          "max_batch_in_memory"}


def test_benchmark_decode_writes_every_field(tmp_path):
  out = tmp_path / "decode"
  proc = subprocess.run(
      [sys.executable, "scripts/benchmark_decode.py", "--config=configs/lm_decode.py:runlocal",
       "--variants=mla_absorbed,perceiver_ar", "--contexts=20", "--batches=1,2",
       "--steps=3", "--perceiver_latents=4", "--memory_gb=0.001",
       f"--output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[4/4] perceiver_ar context=20 batch=2" in proc.stdout + proc.stderr
  result = json.loads((out / "decode.json").read_text())
  assert {"device", "read_bandwidth_gb_per_s", "matmul_gflop_per_s", "command"} <= set(result)
  rows = result["rows"]
  assert len(rows) == 2 * 2
  for row in rows:
    assert set(row) == FIELDS, row["variant"]
    assert row["cache_bytes_per_sequence"] == row["cache_formula_bytes_per_sequence"]
    assert row["bytes_read_per_step"] == (row["batch"] * row["cache_bytes_per_sequence"]
                                          + row["weight_bytes"])
    assert row["prefill_tokens"] == row["context"] - 3
    assert row["decode_ms_per_step"] > 0 and row["flops_per_step"] > 0
    budget = 0.001 * 2**30 - row["weight_bytes"]
    assert row["max_batch_in_memory"] == max(0, int(budget // row["cache_bytes_per_sequence"]))
  mla = {r["batch"]: r for r in rows if r["variant"] == "mla_absorbed"}
  assert mla[2]["bytes_read_per_step"] > mla[1]["bytes_read_per_step"]
  # runlocal MLA: 2 layers x (d_c 16 + d_R 4) x 4 bytes per token.
  assert mla[2]["cache_bytes_per_sequence"] == 20 * 2 * (16 + 4) * 4
  table = (out / "decode.md").read_text()
  assert table.count("| mla_absorbed |") == 2 and table.count("| perceiver_ar |") == 2
  assert os.path.getsize(out / "decode.png") > 10_000


def test_benchmark_decode_paged_and_pallas(tmp_path):
  """--decode_cache=paged times mla_latent from the pages; --decode_kernel=pallas off TPU
  checks mla_absorbed's kernel (interpret mode) against the XLA path instead of timing it."""
  out = tmp_path / "decode"
  proc = subprocess.run(
      [sys.executable, "scripts/benchmark_decode.py", "--config=configs/lm_decode.py:runlocal",
       "--variants=mla_latent,mla_absorbed", "--contexts=20", "--batches=1,2", "--steps=2",
       "--decode_cache=paged", "--decode_kernel=pallas", f"--output_dir={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "decode.json").read_text())
  assert (result["decode_cache"], result["decode_kernel"]) == ("paged", "pallas")
  assert [r["variant"] for r in result["rows"]] == ["mla_latent"] * 2
  for row in result["rows"]:  # pages of 16: the 20 tokens of a sequence fill two.
    assert row["cache_bytes_per_sequence"] == row["cache_formula_bytes_per_sequence"]
    assert row["cache_bytes_per_sequence"] == 32 * 2 * (16 + 4) * 4
  (check,) = result["kernel_checks"]
  assert check["variant"] == "mla_absorbed" and check["steps"] == 2
  # Two summation orders of the same float32 logits: conftest.lm_terms counts their terms.
  model = config_files.load(os.path.join(ROOT, "configs/lm_decode.py:runlocal")).model
  atol = lm_terms(model, 20) * F32_EPS * (check["max_abs_logit"] or 1.0)
  assert check["max_abs_difference"] <= atol
  assert "timings need a TPU" in (out / "decode.md").read_text()
