"""scripts/benchmark.py --profile: per-op times of the train step, by forward/backward/optimizer."""

import json
import subprocess
import sys

import pytest

from latent_attention.bench import step_profile

from conftest import ROOT


def test_categories_follow_jax_autodiff_names():
  assert step_profile._category("jit(train_step)/jvp(TransformerLM)/block_0/mlp/up") == "forward"
  assert step_profile._category(
      "jit(train_step)/transpose(jvp(TransformerLM))/block_0/mlp/up") == "backward"
  assert step_profile._category("jit(train_step)/mul") == "optimizer and other"


@pytest.mark.e2e
def test_benchmark_profile_runs_and_splits_the_step(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "scripts/benchmark.py", "--config=configs/lm_shakespeare.py:mha,runlocal",
       "--config.model.num_layers=2",
       "--steps=2", "--warmup=1", "--decode_tokens=1", "--profile", "--profile_steps=2",
       f"--output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "top ops (summed over layers" in proc.stdout
  result = json.loads(out.read_text())
  # MFU against this CPU's measured matmul; no cuDNN kernel off a GPU.
  assert 0 < result["mfu"] < 1.5 and result["peak_source"].startswith("measured float32")
  assert result["mfu"] == result["achieved_tflops"] / result["peak_tflops"]
  assert result["cudnn_attention_calls"] == 0
  profile = result["profile"]
  by_category = profile["by_category"]
  assert set(by_category) == {"forward", "backward", "optimizer and other"}
  assert min(by_category.values()) > 0
  assert abs(sum(by_category.values()) - profile["total_ms"]) < 1e-6 * profile["total_ms"]
  names = [r["op_name"] for r in profile["top"]]
  assert all("block_0" not in n and "block_1" not in n for n in names)
  # runlocal has 2 layers: an op of the blocks comes once per layer, summed into one row.
  per_layer = [r for r in profile["top"] if "block_*" in r["op_name"]]
  assert per_layer and all(r["instructions"] % 2 == 0 for r in per_layer), per_layer
