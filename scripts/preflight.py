r"""Pre-flight: compile a config's train, eval and decode steps for a TPU slice or a GPU node on
this CPU and print per chip what they need against what the chip has (bench/preflight.py).

  python scripts/preflight.py --config=configs/lm1b.py:mla,synthetic --target=v5e:2x4
  python scripts/preflight.py --config=configs/lm1b.py:mla,synthetic --target=h100:1x1x8 \
      --fsdp=8 --json=/tmp/preflight.json
  python scripts/preflight.py --config=configs/lm1b.py:mla,synthetic --target=v5e:2x2 \
      --find_batch

Needs `make preflight-deps` (libtpu, jax-cuda12-plugin; Linux x86-64). A step that does not fit
is one line: what it needs per chip and what the chip has; --find_batch adds the largest global
batch whose train step fits (bisection on compiles). Exit status 0 whether or not it fits.
"""

import dataclasses
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices: no chip is probed.

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from latent_attention import cli  # noqa: E402
from latent_attention.bench import chips  # noqa: E402
from latent_attention.training.config import validate_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].",
                                          lock_config=True)
_TARGET = flags.DEFINE_string("target", None, "<chip>:<topology>, e.g. "
                              + ", ".join(chips.EXAMPLES) + ".")
_FSDP = flags.DEFINE_integer("fsdp", None, "Devices each parameter is split over (default: the "
                             "config's train.fsdp).", lower_bound=1)
_DECODE_LEN = flags.DEFINE_integer("decode_len", 0, "Cache length of the decode step (0 = "
                                   "data.seq_len).", lower_bound=0)
_FIND_BATCH = flags.DEFINE_bool("find_batch", False, "Also find the largest global batch whose "
                                "train step fits.")
_JSON = flags.DEFINE_string("json", None, "Write the reports as JSON here.")
flags.mark_flags_as_required(["config", "target"])


def main(argv):
  del argv
  chips.parse_target(_TARGET.value)  # a bad target fails before anything compiles.
  validate_config(_CONFIG.value)
  from latent_attention.bench import preflight  # pylint: disable=import-outside-toplevel
  reports = preflight.compile_config(_CONFIG.value, _TARGET.value, fsdp=_FSDP.value,
                                     decode_len=_DECODE_LEN.value)
  out = {"target": _TARGET.value, "fits": all(r.fits for r in reports),
         "steps": [dataclasses.asdict(r) for r in reports]}
  for r in reports:
    print(r.line())
  if _FIND_BATCH.value:
    out["max_batch"], _ = preflight.find_batch(_CONFIG.value, _TARGET.value, fsdp=_FSDP.value)
    print(f"{_TARGET.value}: largest global batch whose train step fits: {out['max_batch']}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({**out, **{k: v for k, v in out["steps"][0].items() if k not in out}}, f,
                indent=2)


if __name__ == "__main__":
  cli.run(main, config_flag="config")
