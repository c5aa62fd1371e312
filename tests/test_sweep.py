"""Sweeps: a tiny --runlocal sweep end to end, reruns, failures, and the shipped sweep files."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from latent_attention import config_files
from latent_attention.models import build_model
from latent_attention.studies import results as results_lib, sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = os.path.join(ROOT, "configs", "sweeps")

# Two runs that train (mha and, from the grid, mla) and one that fails once it reads the data
# (tiny_shakespeare has 65 characters): a bad value that the configs alone show stops the sweep
# before any run (tests/test_config_validation.py).
TINY_SWEEP = '''
import ml_collections


def get_config():
  dotted = lambda d: ml_collections.ConfigDict(d, allow_dotted_keys=True)  # noqa: E731
  sweep = ml_collections.ConfigDict()
  sweep.base = "configs/lm_shakespeare.py:mha"
  sweep.overrides = dotted({"eval.sample_len": 0})
  sweep.runlocal_overrides = dotted({"train.num_steps": 10, "train.eval_every": 5})
  sweep.runs = [dict(name="mha", overrides={}),
                dict(name="broken", overrides={"model.vocab_size": 50})]
  sweep.grid = dotted({"model.attention.kind": ("mla",)})
  sweep.benchmark = ml_collections.ConfigDict(dict(steps=50, warmup=5))
  sweep.decode = ml_collections.ConfigDict(dict(context=4096, batch=2, steps=3))
  return sweep
'''


@pytest.fixture
def tiny_sweep(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(TINY_SWEEP)
  return str(path)


def _csv(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return list(csv.DictReader(f))


@pytest.mark.e2e
def test_sweep_end_to_end_rerun_skips_and_failure_is_reported(tiny_sweep, tmp_path,
                                                               monkeypatch):
  workdir = str(tmp_path / "sweep")
  out = subprocess.run([sys.executable, "scripts/sweep.py", f"--sweep={tiny_sweep}",
                        f"--workdir={workdir}", "--runlocal"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 1, out.stderr[-3000:]  # a run failed: the command says so.
  assert out.stderr.strip().splitlines()[-1].startswith("sweep.py: 1 of 3 runs failed (broken)")
  assert "[1/3] mha" in out.stderr and "[3/3] kindmla" in out.stderr

  rows = _csv(workdir)
  assert [r["name"] for r in rows] == ["kindmla", "mha", "broken"]  # by KV bytes, failed last.
  mla, mha, broken = rows
  assert mha["status"] == mla["status"] == "ok"
  assert broken["status"] == "failed"
  assert broken["error"].startswith("ValueError: model.vocab_size=50 is invalid: the "
                                    "tiny_shakespeare vocabulary has 65 symbols")
  assert "Traceback" in (tmp_path / "sweep" / "broken" / "error.txt").read_text()
  for r in (mla, mha):
    assert float(r["kv_bytes_per_token"]) == float(r["kv_formula_bytes_per_token"])
    assert float(r["perplexity"]) > 1 and float(r["step_time_ms"]) > 0
    assert int(r["params"]) > 0 and float(r["decode_tokens_per_s"]) > 0
    assert float(r["decode_ms_per_step"]) > 0 and float(r["decode_x_bound"]) > 0
  assert float(mha["kv_vs_mha"]) == 1.0
  assert float(mla["kv_vs_mha"]) == (8 + 4) / (2 * 4 * 8)  # (d_c + d_R) / (2 N H), runlocal.
  markdown = (tmp_path / "sweep" / "results.md").read_text()
  assert "| KV bytes/token (measured) |" in markdown and "| failed |" in markdown
  assert "| decode x bound |" in markdown
  assert "bits/token" not in markdown  # a column no run fills is left out.
  for png in ("pareto.png", "loss_curves.png", "speed.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000

  # Rerun: finished runs are skipped (never retrained, result.json untouched); the failed one
  # is retried.
  results = {n: os.path.join(workdir, n, "result.json") for n in ("mha", "kindmla")}
  mtimes = {n: os.stat(p).st_mtime_ns for n, p in results.items()}
  trained = []

  def fake_train(config, run_dir):
    trained.append(os.path.basename(run_dir))
    raise RuntimeError("retrained")

  monkeypatch.setattr(sweep_lib.loop, "train_and_evaluate", fake_train)
  outcome = sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True)
  assert trained == ["broken"]
  assert {n: os.stat(p).st_mtime_ns for n, p in results.items()} == mtimes
  assert [(r["name"], r["status"]) for r in outcome.rows] == [
      ("kindmla", "ok"), ("mha", "ok"), ("broken", "failed")]
  assert outcome.rows[2]["error"] == "RuntimeError: retrained"
  # A result written before a model field existed has the same config: still skipped.
  with open(results["mha"]) as f:
    older = json.load(f)
  del older["config"]["model"]["attention"]["gla_latent_heads"]
  with open(results["mha"], "w") as f:
    json.dump(older, f)
  sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True, only=["mha"])
  assert trained == ["broken"]

  # A changed config is not skipped, and its old checkpoint is not resumed.
  with open(tiny_sweep, "w") as f:
    f.write(TINY_SWEEP.replace('"train.num_steps": 10', '"train.num_steps": 12'))
  outcome = sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True, only=["mha"])
  assert trained == ["broken"]
  row = next(r for r in outcome.rows if r["name"] == "mha")
  assert row["status"] == "failed"
  assert "holds a checkpoint (step 10) trained with another config (train.num_steps: 10 -> 12)" \
      in row["error"]
  with open(os.path.join(workdir, "mha", "result.previous.json")) as f:
    assert json.load(f)["status"] == "ok"  # the finished run's row is kept aside.


def test_interrupted_run_stops_the_sweep(tiny_sweep, tmp_path, monkeypatch):
  started = []

  def interrupted(config, run_dir):
    started.append(os.path.basename(run_dir))
    return {"interrupted": "SIGTERM"}

  monkeypatch.setattr(sweep_lib.loop, "train_and_evaluate", interrupted)
  workdir = str(tmp_path / "sweep")
  outcome = sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True, only=["broken", "kindmla"])
  assert outcome.interrupted == "SIGTERM"
  assert started == ["broken"]  # the sweep's order, restricted to --only.
  assert not os.path.exists(os.path.join(workdir, "broken", "result.json"))
  assert outcome.rows == [] and _csv(workdir) == []


def test_sweep_file_errors(tiny_sweep, tmp_path):
  with pytest.raises(ValueError, match=r"--only names unknown runs gqa; the sweep has mha, "
                     "broken, kindmla"):
    sweep_lib.run_sweep(tiny_sweep, str(tmp_path), only=["mha", "gqa"])
  sweep = config_files.load(tiny_sweep)
  with pytest.raises(ValueError, match="override 'model.attention.nope' is invalid: the config "
                     "has no field model.attention.nope"):
    sweep_lib.make_config(sweep, {"base": sweep.base, "overrides": {"model.attention.nope": 1}})


def test_seeds_give_one_row_per_seed_an_aggregate_table_and_resume(tiny_sweep, tmp_path,
                                                                    monkeypatch):
  """The sweep machinery with stand-ins for training (real runs: the end-to-end test)."""
  trained = []
  ppl = {("mha", 0): 5.0, ("mha", 1): 5.2, ("kindmla", 0): 6.0, ("kindmla", 1): 6.1}

  def fake_train(config, run_dir):
    trained.append((os.path.basename(os.path.dirname(run_dir)), config.seed))
    return {"interrupted": None}

  def fake_eval(run_dir):
    name, seed = os.path.basename(os.path.dirname(run_dir)), int(run_dir[-1])
    p = ppl[(name, seed)]
    return {"validation": {"loss": float(np.log(p)), "accuracy": 0.5, "perplexity": p},
            "kv_cache_bytes_per_token": 64.0 if name == "mha" else 12.0,
            "kv_cache_formula_bytes_per_token": 64.0 if name == "mha" else 12.0}

  monkeypatch.setattr(sweep_lib.loop, "train_and_evaluate", fake_train)
  monkeypatch.setattr(sweep_lib.evaluate, "evaluate_workdir", fake_eval)
  monkeypatch.setattr(sweep_lib.step_bench, "benchmark",
                      lambda *a, **k: {"step_time_s": 0.01, "tokens_per_s": 1e3})
  monkeypatch.setattr(sweep_lib, "_decode_point", lambda *a: {"decode_ms_per_step": 1.0})
  workdir = str(tmp_path / "sweep")
  outcome = sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True, only=["mha", "kindmla"],
                                num_seeds=2)
  assert trained == [("mha", 0), ("mha", 1), ("kindmla", 0), ("kindmla", 1)]
  assert [(r["name"], r["seed"]) for r in _csv(workdir)] == [
      ("kindmla", "0"), ("kindmla", "1"), ("mha", "0"), ("mha", "1")]
  assert os.path.exists(os.path.join(workdir, "mha", "seed1", "result.json"))
  assert len(outcome.rows) == 4
  markdown = (tmp_path / "sweep" / "results.md").read_text()
  assert "## Per run: mean ± standard deviation over seeds" in markdown
  assert "perplexity vs mha" in markdown  # the sweep's first run is the reference.
  mla_line = next(l for l in markdown.splitlines() if l.startswith("| kindmla | mla"))
  assert "6.050 ± 0.071" in mla_line and "+0.950 [" in mla_line
  assert "## Per seed" in markdown
  # Rerun: every finished (run, seed) is skipped.
  sweep_lib.run_sweep(tiny_sweep, workdir, runlocal=True, only=["mha", "kindmla"], num_seeds=2)
  assert len(trained) == 4
  with pytest.raises(ValueError, match=r"--seeds=0 is invalid: must be a positive integer"):
    sweep_lib.run_sweep(tiny_sweep, workdir, num_seeds=0)


def test_classifier_rows_report_accuracy_and_leave_lm_columns_blank(tmp_path):
  rows = [{"name": f"num_latents{m}", "kind": "perceiver/mha", "sizes": f"M={m}, N/K/H=4/4/16",
           "status": "ok", "eval_split": "test", "eval_loss": 0.5, "accuracy": acc,
           "step_time_ms": 10.0 + m, "tokens_per_s": 1e3, "decode_tokens_per_s": None,
           "kv_bytes_per_token": None, "perplexity": None}
          for m, acc in ((16, 0.86), (8, 0.84))]
  rows = results_lib.write_results(rows, str(tmp_path), "perceiver_latents")
  assert [r["name"] for r in rows] == ["num_latents8", "num_latents16"]
  header = (tmp_path / "results.md").read_text().splitlines()[4]
  assert "| accuracy |" in header and "perplexity" not in header and "KV" not in header
  assert _csv(str(tmp_path))[0]["perplexity"] == ""
  assert os.path.getsize(tmp_path / "accuracy.png") > 1000


def test_recall_sweep_plots_accuracy_against_cache(tmp_path, monkeypatch):
  rows = [{"name": name, "kind": kind, "sizes": "", "status": "ok", "eval_split": "validation",
           "eval_loss": 1.0, "accuracy": acc, "perplexity": 2.7, "kv_bytes_per_token": kv,
           "step_time_ms": 5.0, "tokens_per_s": 1e3, "decode_tokens_per_s": 1e2}
          for name, kind, acc, kv in (("mha", "mha", 0.99, 1024), ("mla_c8", "mla", 0.4, 96),
                                      ("mqa", "mqa", 0.9, 256))]
  plotted = {}
  monkeypatch.setattr(results_lib.plots, "quality_vs_cache",
                      lambda rows, path, metric: plotted.update(metric=metric, rows=rows))
  results_lib.write_results(rows, str(tmp_path), "mqar", quality="accuracy")
  assert plotted["metric"] == "accuracy" and len(plotted["rows"]) == 3
  assert "accuracy vs KV cache" in (tmp_path / "results.md").read_text()
  with pytest.raises(ValueError, match="sweep quality='bits' is invalid: choose from "
                     "perplexity, accuracy"):
    results_lib.write_results(rows, str(tmp_path), "mqar", quality="bits")


def test_pareto_front_follows_the_metric_direction(tmp_path):
  points = [(300, 0.9), (100, 0.5), (200, 0.6), (200, 0.7), (200, 0.4)]
  assert results_lib.plots.pareto_front(points, lower_is_better=False) == [
      (100, 0.5), (200, 0.7), (300, 0.9)]  # (200, 0.6) is beaten at equal cost.
  assert results_lib.plots.pareto_front(points, lower_is_better=True) == [(100, 0.5), (200, 0.4)]
  rows = [{"name": str(x), "kv_bytes_per_token": x, "accuracy": y} for x, y in points]
  results_lib.plots.quality_vs_cache(rows, str(tmp_path / "p.png"), "accuracy")
  assert os.path.getsize(tmp_path / "p.png") > 1000


def test_labels_of_close_points_do_not_overlap():
  """Two runs at nearly the same cost and quality (mla_c64 and mha on MQAR) and three at one
  cost: every name stays readable."""
  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  ax.set_xscale("log")
  points = [(640, 0.9985, "mla_c64_T64_D64"), (1024, 0.1966, "perceiver_ar_m16_T64_D64"),
            (1024, 0.9983, "mha_T64_D64"), (1024, 0.95, "gqa_T64_D64"), (128, 0.2, "low")]
  ax.scatter([p[0] for p in points], [p[1] for p in points])
  texts = results_lib.plots.place_labels(fig, ax, points)
  renderer = fig.canvas.get_renderer()  # place_labels gave the figure an Agg canvas.
  boxes = [t.get_window_extent(renderer) for t in texts]
  assert [t.get_text() for t in texts] == [p[2] for p in points]
  assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _param_count(config):
  model = build_model(config.model)
  if config.model.name == "perceiver":
    side = config.model.max_resolution
    inputs = jnp.zeros((1, side, side, 1), jnp.float32)
  else:
    inputs = jnp.zeros((1, config.data.seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("spec", ["lm_attention.py:", "lm_attention.py:large",
                                  "lm1b_attention.py"])
def test_attention_sweeps_match_mha_parameters_within_1_percent(spec):
  sweep = config_files.load(os.path.join(SWEEPS, spec))
  runs = sweep_lib.expand(sweep)
  counts = {n: _param_count(sweep_lib.make_config(sweep, run)) for n, run in runs.items()}
  assert {"mha", "gqa", "mqa", "gta", "tpa"} < set(counts)
  assert sum(n.startswith("mla_") for n in counts) == (2 if "lm1b" in spec else 3)
  for name, count in counts.items():
    assert abs(count / counts["mha"] - 1) < 0.01, (name, count, counts["mha"])


# Full-size attention sweeps are built by the parameter-matching test above.
@pytest.mark.parametrize("spec,runlocal", [
    *((spec, True) for spec in ("lm_attention.py", "lm_attention.py:large", "lm1b_attention.py")),
    *((spec, runlocal) for spec in ("mla_rank.py", "perceiver_latents.py", "mqar.py",
                                    "mqar.py:zoology", "mqar.py:zoology_lr",
                                    "mqar.py:zoology_heads", "mqar.py:zoology_lr_tight")
                          for runlocal in (False, True))])
def test_shipped_sweeps_build_valid_models(spec, runlocal):
  sweep = config_files.load(os.path.join(SWEEPS, spec))
  for name, run in sweep_lib.expand(sweep).items():
    assert _param_count(sweep_lib.make_config(sweep, run, runlocal)) > 0, name

