"""What an MQAR model gets wrong, query by query (Zoology, arXiv 2312.04927, section 3).

Recall needs two things: retrieving the example's values at all, and binding each to its key.
At every scored query the greedy prediction is either the right value, another value of the
same example (retrieved, but bound to the wrong key) or neither (nothing retrieved). A model
that retrieves the values but cannot bind them guesses among the n = data.num_kv_pairs values:
right is then about 1/n of right + another.
"""

import jax
import numpy as np

from latent_attention.training import evaluate

KINDS = ("right", "another_value", "neither")


def classify(predicted_BT, inputs_BT, targets_BT, weights_BT, num_kv_pairs: int) -> dict:
  """Counts of KINDS over the positions with weight (predicted_BT: greedy token ids aligned
  with inputs_BT; -1 where the model scores no prediction). Values sit at the odd positions
  1, 3, ..., 2n - 1 of the context."""
  counts = dict.fromkeys(KINDS, 0)
  values_BN = inputs_BT[:, 1:2 * num_kv_pairs:2]
  for b, t in zip(*np.nonzero(weights_BT)):
    pred = predicted_BT[b, t]
    if pred < 0:
      continue
    kind = ("right" if pred == targets_BT[b, t] else
            "another_value" if pred in values_BN[b] else "neither")
    counts[kind] += 1
  return counts


def measure(workdir: str, split: str = "validation", batch_size: int = 250) -> dict:
  """{kind: fraction, "queries": count, ...} of the checkpoint in `workdir` on `split`."""
  exp, params, step = evaluate.restore_experiment(workdir)
  data = exp.config.data
  if data.name != "mqar":
    raise ValueError(f"--workdir={workdir} holds data.name={data.name!r}: the recall error "
                     "breakdown needs an mqar run (configs/lm_mqar.py)")
  apply = jax.jit(lambda p, x: exp.model.apply({"params": p}, x).argmax(-1))
  counts = dict.fromkeys(KINDS, 0)
  for batch in exp.dataset.eval_batches(split, batch_size):  # padding rows have weight 0.
    scored_BL = np.asarray(apply(params, batch["inputs"]))
    # Perceiver AR predicts its last M positions only: the others get -1 (not scored).
    predicted_BT = np.full(batch["inputs"].shape, -1, np.int64)
    predicted_BT[:, predicted_BT.shape[1] - scored_BL.shape[1]:] = scored_BL
    for kind, n in classify(predicted_BT, batch["inputs"], batch["targets"], batch["weights"],
                            data.num_kv_pairs).items():
      counts[kind] += n
  total = sum(counts.values())
  return {"workdir": workdir, "step": step, "split": split, "queries": total,
          **{kind: n / total for kind, n in counts.items()}}


def markdown(rows) -> str:
  lines = ["| workdir | step | queries | right | another value of the example | neither |",
           "|---|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['workdir']} | {r['step']} | {r['queries']} | {r['right']:.3f} | "
            f"{r['another_value']:.3f} | {r['neither']:.3f} |" for r in rows]
  return "\n".join(lines)
