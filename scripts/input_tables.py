r"""The input-pipeline page's tables (studies/input_tables.py) from benchmark_input.py's raw files:

  python scripts/benchmark_input.py --output=/tmp/pipeline.json
  python scripts/benchmark_input.py --loop=lm_shakespeare.py:nanogpt_cpu \
      --loop=lm_shakespeare.py:mla --loop=lm_mqar.py:mha,zoology --output=/tmp/loop.json
  python scripts/input_tables.py --pipeline_json=/tmp/pipeline.json --loop_json=/tmp/loop.json \
      --output_dir=docs/results/input_pipeline
  python scripts/render_results.py

Writes ceiling.json and/or loop.json (tables) to --output_dir.
"""

import os

from absl import flags

from latent_attention import cli

_PIPELINE = flags.DEFINE_string("pipeline_json", None, "Raw file of benchmark_input.py's cases.")
_LOOP = flags.DEFINE_string("loop_json", None, "Raw file of benchmark_input.py --loop.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the table files go.")
flags.mark_flags_as_required(["output_dir"])


def main(argv):
  del argv
  from latent_attention.studies import input_tables, pages  # pylint: disable=import-outside-toplevel
  builders = {"ceiling": (_PIPELINE, input_tables.ceiling_table),
              "loop": (_LOOP, input_tables.loop_table)}
  tables = {}
  for name, (flag, build) in builders.items():
    if flag.value is not None:
      if not os.path.isfile(flag.value):
        raise ValueError(f"--{flag.name}={flag.value} is invalid: no such file")
      tables[name] = build(input_tables.load(flag.value))
  if not tables:
    raise ValueError("--pipeline_json and --loop_json are both unset: give one or both")
  for path in pages.write_tables(_OUTPUT_DIR.value, tables):
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
