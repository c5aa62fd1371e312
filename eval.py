r"""Restores a checkpoint and its saved config from a workdir and evaluates it.

  python eval.py --workdir=/tmp/lm_mla [--step=1000]
  python eval.py --workdir=/tmp/lm_mla --seq_len=512 \
      --override=model.attention.rope_scaling=yarn --override=model.attention.rope_factor=4 \
      --override=model.attention.rope_original_len=128

Reports validation and test loss / perplexity / bits per char (accuracy for classifiers), the
measured KV-cache bytes next to the formula, decode tokens/s and a sample; writes
<workdir>/eval_results.json (and with --plot_attention, <workdir>/attention_maps.png; with
--plot_curves, <workdir>/learning_curve.png: loss and accuracy vs step and wall time).
--seq_len and --override evaluate the checkpoint under a changed config (another context
length, YaRN scaling of RoPE, ...); their results go to eval_results_<overrides>.json.
"""

import json

from absl import flags

from latent_attention import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by train.py.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to restore (default: latest).",
                             lower_bound=0)
_PLOT = flags.DEFINE_bool("plot_attention", False,
                          "Perceiver classifiers: write <workdir>/attention_maps.png, the "
                          "cross-attention maps of a few latents over test images.")
_CURVES = flags.DEFINE_bool("plot_curves", False,
                            "Write <workdir>/learning_curve.png: train and eval loss (and "
                            "accuracy) vs step, from the run's metrics.jsonl.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Evaluate at this context length instead of "
                               "the trained data.seq_len (language models).", lower_bound=1)
_OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "A saved-config field to change before evaluating, as dotted.key=value "
    "(repeatable), e.g. model.attention.rope_scaling=yarn.")
_INITIALIZE_DISTRIBUTED = cli.define_distributed_flags()  # a model too big for one host.
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  overrides = {}
  for item in _OVERRIDE.value:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--override={item}: expected dotted.key=value, e.g. "
                       "model.attention.rope_scaling=yarn")
    overrides[key] = value
  if _SEQ_LEN.value:
    overrides["data.seq_len"] = str(_SEQ_LEN.value)
  # pylint: disable=import-outside-toplevel  (JAX loads after the flags are checked, as train.py)
  import jax
  from latent_attention.training.evaluate import evaluate_workdir
  _INITIALIZE_DISTRIBUTED()
  results = evaluate_workdir(_WORKDIR.value, _STEP.value, plot_attention=_PLOT.value,
                             plot_curves=_CURVES.value, overrides=overrides)
  sample = results.pop("sample", None)
  if jax.process_index() == 0:  # every process computed the same results.
    print(json.dumps(results, indent=2))
    if sample:
      print(sample)


if __name__ == "__main__":
  cli.run(main)
