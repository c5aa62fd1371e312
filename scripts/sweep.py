r"""Runs an ablation sweep: trains, evaluates and times every run, then one table and plots.

  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py --workdir=/tmp/sweep
  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py --workdir=/tmp/sweep_local \
      --runlocal --only=mha,mla_c32
  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py:large --workdir=/tmp/sweep_l
  python scripts/sweep.py --sweep=configs/sweeps/lm_attention.py --workdir=/tmp/s3 --seeds=3
  python scripts/sweep.py --sweep=configs/sweeps/lm1b_attention.py --workdir=/tmp/pf \
      --preflight=v5e:2x4

Each run goes to <workdir>/<run>/ (with seeds, <workdir>/<run>/seed<s>/): a train.py workdir
plus result.json, or error.txt when it failed. The tables go to <workdir>/results.csv and
results.md, the plots to <workdir>/*.png.
Rerunning the command skips finished runs, retries failed ones and resumes an interrupted one.
SIGTERM or Ctrl-C stops the sweep cleanly (during training: after a checkpoint). The exit
status is 1 when a run failed. Sweep files are described in latent_attention/studies/sweep.py.
--preflight=TARGET trains nothing: it compiles every run's train step for that TPU slice or GPU
node on this CPU (studies/sweep_preflight.py) and writes <workdir>/preflight_<target>.md/.json.
"""

from absl import flags

from latent_attention import cli, config_files

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file[:arg], e.g. configs/sweeps/mla_rank.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per run.")
_RUNLOCAL = flags.DEFINE_bool("runlocal", False,
                              "Tiny runs (seconds each on a CPU): the base config's runlocal "
                              "plus the sweep's runlocal_overrides.")
_ONLY = flags.DEFINE_list("only", None, "Run only these runs (comma-separated names).")
_SEEDS = flags.DEFINE_integer(
    "seeds", None, "Train every run with seeds 0..N-1 (each in <run>/seed<s>/), overriding the "
    "sweep file's `seeds`; the tables then give mean ± std per run and the difference to the "
    "reference run with its 95% confidence interval.", lower_bound=1)
_PREFLIGHT = flags.DEFINE_string(
    "preflight", None, "Compile every run's train step for this TPU slice or GPU node (e.g. "
    "v5e:2x4, h100:1x1x8; scripts/preflight.py) instead of training it: a table of fits, HBM "
    "per chip and estimated step time and MFU in <workdir>/preflight_<target>.md and .json.")
_FIND_BATCH = flags.DEFINE_bool("find_batch", False, "With --preflight: also the largest global "
                                "batch whose train step fits, per run (bisection on compiles).")
flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv):
  del argv
  config_files.load(_SWEEP.value)  # a bad sweep file or argument fails before JAX loads.
  # pylint: disable=import-outside-toplevel
  if _PREFLIGHT.value:
    from latent_attention.bench.chips import parse_target
    from latent_attention.studies import sweep_preflight
    parse_target(_PREFLIGHT.value)
    table = sweep_preflight.run(_SWEEP.value, _PREFLIGHT.value, _WORKDIR.value, _RUNLOCAL.value,
                                _ONLY.value, _FIND_BATCH.value)
    print(sweep_preflight.markdown(table))
    return
  from latent_attention.studies.sweep import run_sweep
  outcome = run_sweep(_SWEEP.value, _WORKDIR.value, _RUNLOCAL.value, _ONLY.value, _SEEDS.value)
  with open(f"{_WORKDIR.value}/results.md") as f:
    print(f.read())
  failed = [r.get("dir", r["name"]) for r in outcome.rows if r["status"] != "ok"]
  if failed:
    raise SystemExit(f"sweep.py: {len(failed)} of {len(outcome.rows)} runs failed "
                     f"({', '.join(failed)}); tracebacks in {_WORKDIR.value}/<run>/error.txt")


if __name__ == "__main__":
  cli.run(main)
