r"""The DSA study's tables (studies/dsa_tables.py) for docs/results/dsa.md, from a finished sweep
and a decode benchmark run:

  python scripts/sweep.py --sweep=configs/sweeps/dsa.py --workdir=/tmp/dsa
  python scripts/benchmark_decode.py --config=configs/lm_decode.py \
      --variants=mla_absorbed,mla_sparse --contexts=8192 --batches=1,8 --output_dir=/tmp/dsa_dec
  python scripts/dsa_tables.py --workdir=/tmp/dsa --decode_json=/tmp/dsa_dec/decode.json \
      --output_dir=docs/results/dsa
  python scripts/render_results.py

Writes quality.json (and, with --decode_json, decode.json) to --output_dir.
"""

import datetime
import os
import platform

from absl import flags

from latent_attention import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The DSA sweep's directory.")
_DECODE_JSON = flags.DEFINE_string("decode_json", None, "decode.json of benchmark_decode.py.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the table files go.")
_MACHINE = flags.DEFINE_string(
    "machine", f"{platform.machine()} CPU, {os.cpu_count()} cores, no accelerator",
    "The machine the runs used, as the page states it.")
_SWEEP_COMMAND = flags.DEFINE_string(
    "sweep_command", "python scripts/sweep.py --sweep=configs/sweeps/dsa.py --workdir=/tmp/dsa",
    "The command that ran the sweep.")
_DECODE_COMMAND = flags.DEFINE_string(
    "decode_command", "python scripts/benchmark_decode.py --config=configs/lm_decode.py "
    "--variants=mla_absorbed,mla_sparse --contexts=8192 --batches=1,8 --output_dir=/tmp/dsa_dec",
    "The command that ran the decode benchmark.")
flags.mark_flags_as_required(["workdir", "output_dir"])


def main(argv):
  del argv
  from latent_attention.studies import dsa_tables, pages  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(_WORKDIR.value):
    raise ValueError(f"--workdir={_WORKDIR.value} is invalid: no such directory")
  date = datetime.date.today().isoformat()
  tables = {"quality": dsa_tables.quality_table(_WORKDIR.value, _SWEEP_COMMAND.value,
                                                _MACHINE.value, date)}
  if _DECODE_JSON.value:
    tables["decode"] = dsa_tables.decode_table(_DECODE_JSON.value, _DECODE_COMMAND.value,
                                               _MACHINE.value, date)
  for path in pages.write_tables(_OUTPUT_DIR.value, tables):
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
