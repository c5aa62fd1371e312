r"""Trains a model from a config file, resuming from the workdir's latest checkpoint.

  python train.py --config=configs/lm_shakespeare.py:mla --workdir=/tmp/lm_mla \
      --config.train.num_steps=500
"""

from absl import app, flags, logging
from ml_collections import config_flags

from latent_attention.training import metrics
from latent_attention.training.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/lm_shakespeare.py:mla.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host launch).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  try:
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    raise SystemExit(f"train.py: {e}") from None
  if result.get("sample"):
    print(result["sample"])


if __name__ == "__main__":
  app.run(main)
