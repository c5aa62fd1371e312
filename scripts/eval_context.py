r"""Perplexity of trained language models at several context lengths, with and without YaRN.

  python scripts/eval_context.py --workdirs=/tmp/ctx/mha,/tmp/ctx/mla \
      --lengths=128,256,512,1024 --output_dir=/tmp/ctx/context

Each checkpoint is evaluated on its eval split at every length: with plain RoPE, and above its
training length also with YaRN (factor = length / training length; design.md 3.1). Writes
context.{json,md,png} to --output_dir (studies/context_eval.py).
"""

from absl import flags, logging

from latent_attention import cli
from latent_attention.studies import context_eval

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories written by train.py (LMs).")
_LENGTHS = flags.DEFINE_list("lengths", ["128", "256", "512", "1024"],
                             "Evaluation context lengths (tokens).")
_YARN = flags.DEFINE_bool("yarn", True, "Also evaluate with YaRN above the training length.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where context.{json,md,png} go.")
flags.mark_flags_as_required(["workdirs", "output_dir"])


def main(argv):
  del argv
  lengths = []
  for text in _LENGTHS.value:
    if not text.isdigit() or int(text) < 1:
      raise ValueError(f"--lengths: {text!r} is invalid: positive integers, e.g. 128,256,512")
    lengths.append(int(text))
  rows = []
  for i, workdir in enumerate(_WORKDIRS.value):
    logging.info("[%d/%d] %s", i + 1, len(_WORKDIRS.value), workdir)
    rows += context_eval.evaluate_lengths(workdir, lengths, _YARN.value)
  paths = context_eval.write(rows, _OUTPUT_DIR.value)
  print(open(paths["md"]).read())


if __name__ == "__main__":
  cli.run(main)
