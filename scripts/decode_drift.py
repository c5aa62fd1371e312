r"""Drift of an MLA/GLA checkpoint's cached decoding from its float32 forward, per dtype and mode.

  python scripts/decode_drift.py --workdir=/tmp/sweep17/mla_c64/seed0 --windows=8 \
      --output=/tmp/drift.json

Decodes --windows eval windows teacher-forced in each of --dtypes x --modes and prints, against
the float32 full forward: the largest logit difference relative to the largest logit, the mean
KL divergence, top-1 agreement and the targets' NLL (studies/decode_drift.py).
"""

import json

from absl import flags

from latent_attention import cli
from latent_attention.studies import decode_drift

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of an MLA or GLA LM.")
_DTYPES = flags.DEFINE_multi_enum("dtypes", ["float32", "bfloat16"],
                                  ["float32", "bfloat16", "float16"], "Compute dtypes.")
_MODES = flags.DEFINE_multi_enum("modes", ["naive", "absorbed"], ["naive", "latent", "absorbed"],
                                 "MLA decode modes (design.md 3.3).")
_WINDOWS = flags.DEFINE_integer("windows", 8, "Eval windows decoded.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the rows.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  rows = decode_drift.measure(_WORKDIR.value, _DTYPES.value, _MODES.value, _WINDOWS.value)
  print(decode_drift.markdown(rows))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
