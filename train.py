r"""Trains a model from a config file, resuming from the workdir's latest checkpoint.

  python train.py --config=configs/lm_shakespeare.py:mla --workdir=/tmp/lm_mla \
      --config.train.num_steps=500

Multi-process (every process runs the same command; scripts/launch_local.py starts N on one
machine): --jax_distributed alone lets JAX detect the job on SLURM, Open MPI or a Cloud TPU
slice; elsewhere pass --coordinator_address=host:port --num_processes=N --process_id=i.

A user error (bad flag, config, workdir, missing dataset) ends with one line on stderr;
--traceback shows the full traceback.
"""

from absl import flags
from ml_collections import config_flags

from latent_attention import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and argument, e.g. configs/lm_shakespeare.py:mla.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results.")
_INITIALIZE_DISTRIBUTED = cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # JAX and the training loop load once flags and config have parsed: a user error there
  # reports in a fraction of a second.
  # pylint: disable=import-outside-toplevel
  import jax
  from latent_attention.training.loop import train_and_evaluate
  _INITIALIZE_DISTRIBUTED()
  result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result.get("sample") and jax.process_index() == 0:  # every process samples the same text.
    print(result["sample"])


if __name__ == "__main__":
  cli.run(main, config_flag="config")
