"""The device peaks behind MFU (training/peaks.py)."""

import pytest

from latent_attention.training import peaks


@pytest.mark.parametrize("kind,dtype,tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),  # SXM.
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),  # TF32 tensor cores.
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),  # not the SXM figure.
    ("NVIDIA H200", "float16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("TPU v5 lite", "bfloat16", 197.0),  # v5e, not v5p's 459.
    ("TPU v5p", "float32", 459.0),
    ("TPU v6 lite", "bfloat16", 918.0),
    ("cpu", "float32", None),  # measured instead.
])
def test_known_peaks_pick_the_most_specific_device(kind, dtype, tflops):
  assert peaks.known_peak_tflops(kind, dtype) == tflops


def test_override_and_bad_dtype():
  assert peaks.peak_tflops("float32", override=2.0)[1] == "--peak_tflops"
  with pytest.raises(ValueError, match=r"^dtype 'int8' is invalid: choose one of float32, "):
    peaks.known_peak_tflops("NVIDIA H100", "int8")


def test_step_flops_count_the_compiled_step_and_on_a_gpu_its_cpu_lowering():
  import types
  import jax
  from latent_attention.data import make_dataset
  from latent_attention.training import loop
  from conftest import runlocal
  config = runlocal()
  dataset = make_dataset(config.data)
  exp = loop.setup(config, dataset.metadata())
  state = exp.init_state(jax.random.key(0))
  batch = exp.to_global(next(iter(dataset.train_loader(config.train.batch_size, 0))))
  compiled = exp.train_step.lower(state, batch).compile()
  counted = peaks.xla_flops(compiled)
  assert peaks.step_flops(exp.train_step, compiled, state, batch) == counted  # on this CPU.
  # The same step lowered for the CPU and counted before optimisation: what a GPU run reports.
  assert peaks.cpu_flops(exp.train_step, state, batch) == pytest.approx(counted, rel=0.02)
  # A GPU program's own count misses its cuBLAS/cuDNN calls (h200.md: ~1/340 of the step).
  gpu = types.SimpleNamespace(platform="gpu")
  gpu_compiled = types.SimpleNamespace(
      input_shardings=(types.SimpleNamespace(device_set=[gpu]),),
      cost_analysis=lambda: {"flops": counted / 340})
  assert peaks.step_flops(exp.train_step, gpu_compiled, state, batch) == pytest.approx(
      counted, rel=0.02)
