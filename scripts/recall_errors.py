r"""What MQAR checkpoints get wrong: right value, another value of the example, or neither.

  python scripts/recall_errors.py \
      --workdirs=/tmp/mqar_zoology_sweep/mha_T64_D64/seed0,/tmp/mqar_zoology_sweep/tpa_T64_D64/seed0

Prints one row per workdir (studies/recall_errors.py): the fractions of the split's scored
queries whose greedy prediction is the right value, another of the example's values (retrieved
but bound to the wrong key), or neither (nothing retrieved).
"""

import json

from absl import flags

from latent_attention import cli

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories of configs/lm_mqar.py runs.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test"], "Examples scored.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the rows.")
flags.mark_flag_as_required("workdirs")


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel  (JAX loads after the flags are checked)
  from latent_attention.studies import recall_errors
  rows = [recall_errors.measure(w, _SPLIT.value) for w in _WORKDIRS.value]
  print(recall_errors.markdown(rows))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
