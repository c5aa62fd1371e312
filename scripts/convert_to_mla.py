r"""Converts a trained MHA/GQA/MQA language model into MLA (MHA2MLA, arXiv 2502.14837).

  python scripts/convert_to_mla.py --workdir=/tmp/ctx/mha --out=/tmp/mla_c32 \
      --kv_lora_rank=32 --rope_dims=8
  python eval.py --workdir=/tmp/mla_c32
  python train.py --config=/tmp/mla_c32/config.py --workdir=/tmp/mla_c32_ft \
      --config.train.init_from=/tmp/mla_c32 --config.train.num_steps=75

Per layer it keeps RoPE on the --rope_dims/2 frequency pairs of each kv head that score highest
on calibration batches of the training split (MHA2MLA's 2-norm criterion), and compresses the
other key dims together with the values into one latent of width --kv_lora_rank by a joint SVD,
activation-aware by default (docs/design.md, 3.3.1). The new workdir holds a step-0 checkpoint,
config.py (the converted config, for train.py) and conversion.json (what was kept, the error of
each layer's keys and values, perplexity before and after).
"""

from absl import flags

from latent_attention import cli
from latent_attention.models.mla_conversion import METHODS
from latent_attention.studies import conversion

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the trained mha/gqa/mqa LM.")
_OUT = flags.DEFINE_string("out", None, "New run directory for the MLA (must not hold a run).")
_RANK = flags.DEFINE_integer("kv_lora_rank", None,
                             "d_c, the latent width (at most min(d_model, K·(2H − rope_dims))).")
_ROPE = flags.DEFINE_integer("rope_dims", None,
                             "d_R, RoPE dims kept per kv head (even; head_dim keeps them all).")
_METHOD = flags.DEFINE_enum("method", "activation", METHODS,
                            "activation: SVD weighted by the calibration inputs (the best "
                            "rank-C keys and values on them); svd: of the weights alone.")
_BATCHES = flags.DEFINE_integer("calibration_batches", 8,
                                "Training batches used to choose pairs and weight the SVD.")
_EVAL = flags.DEFINE_bool("evaluate", True, "Report eval-split perplexity before and after.")
flags.mark_flags_as_required(["workdir", "out", "kv_lora_rank", "rope_dims"])


def main(argv):
  del argv
  report = conversion.convert_workdir(
      _WORKDIR.value, _OUT.value, kv_lora_rank=_RANK.value, rope_dims=_ROPE.value,
      method=_METHOD.value, num_batches=_BATCHES.value, evaluate_split=_EVAL.value)
  cache = report["cache_elements_per_token_per_layer"]
  print(f"cache per token per layer: {cache['source']} -> {cache['converted']} elements")
  for layer in report["layers"]:
    print(f"layer {layer['layer']}: kv relative error {layer['kv_relative_error']:.4f}, "
          f"RoPE pairs {layer['rope_pairs']}")
  if "converted_perplexity" in report:
    print(f"{report['eval_split']} perplexity: {report['source_perplexity']:.4f} -> "
          f"{report['converted_perplexity']:.4f}")


if __name__ == "__main__":
  cli.run(main)
