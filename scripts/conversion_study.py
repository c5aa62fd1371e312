r"""Convert a trained MHA into MLA at several cache sizes, fine-tune, and compare with MLA
trained from scratch at the same cache bytes (studies/conversion_study.py).

  python train.py --config=configs/lm_shakespeare.py:mha --workdir=/tmp/ctx/mha
  python scripts/conversion_study.py --source=/tmp/ctx/mha --output_dir=/tmp/conv_study

Writes conversion_study.{json,md,png} to --output_dir, next to one workdir per run; a rerun
skips the finished ones. --noscratch leaves out the from-scratch runs (most of the time).
"""

from absl import flags

from latent_attention import cli
from latent_attention.studies import conversion_study

_SOURCE = flags.DEFINE_string("source", None, "Run directory of the trained mha/gqa/mqa LM.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the runs and tables go.")
_POINTS = flags.DEFINE_list("points", ["16:8", "32:8", "64:8", "128:8", "64:4", "64:16"],
                            "kv_lora_rank:rope_dims of each converted model.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 0,
                                 "Fine-tune steps; 0 = 5% of the source's num_steps.")
_FT_LR = flags.DEFINE_float("finetune_lr", 1e-3, "Peak learning rate of the fine-tune (warm-up "
                            "over its first 10%, cosine to the source's end_learning_rate).")
_SCRATCH = flags.DEFINE_bool("scratch", True, "Also train each shape from scratch.")
_BATCHES = flags.DEFINE_integer("calibration_batches", 8, "Training batches for calibration.")
flags.mark_flags_as_required(["source", "output_dir"])


def main(argv):
  del argv
  points = conversion_study.parse_points(_POINTS.value)
  rows = conversion_study.run(
      _SOURCE.value, _OUTPUT_DIR.value, points, finetune_steps=_FT_STEPS.value,
      finetune_lr=_FT_LR.value, scratch=_SCRATCH.value, num_batches=_BATCHES.value)
  paths = conversion_study.write(rows, _OUTPUT_DIR.value)
  print(open(paths["md"]).read())


if __name__ == "__main__":
  cli.run(main)
