"""How far cached decoding drifts from the float32 forward, per compute dtype and decode mode.

MLA's absorbed decoding (design.md 3.3) folds W_UK into the query and W_UV into the output
projection: exact in exact arithmetic, but it rounds other products than the naive path, and in
bfloat16 (eps 2^-7) that shows. A trained checkpoint's eval windows are decoded teacher-forced
(a prefill of half the window, then one token per step) in every (dtype, mode) and compared
with the float32 full forward of the same parameters, the model as trained and evaluated.
"""

import jax
import jax.numpy as jnp
import numpy as np

from latent_attention.models.decoding import decode_chunks
from latent_attention.training import evaluate as evaluate_lib


def _windows(exp, split: str, count: int):
  inputs, targets = [], []
  for batch in exp.dataset.eval_batches(split, exp.config.train.eval_batch_size):
    keep = batch["weights"].sum(axis=1) == batch["weights"].shape[1]  # full windows only.
    inputs.append(batch["inputs"][keep])
    targets.append(batch["targets"][keep])
    if sum(len(x) for x in inputs) >= count:
      break
  return np.concatenate(inputs)[:count], np.concatenate(targets)[:count]


def _decode(workdir, overrides, tokens_BT):
  exp, params, _ = evaluate_lib.restore_experiment(workdir, overrides=overrides)
  t = tokens_BT.shape[1]
  apply = jax.jit(exp.model.apply, static_argnames=("decode", "mutable"))
  logits_BTV, _ = decode_chunks(exp.model, params, jnp.asarray(tokens_BT),
                                (t // 2,) + (1,) * (t - t // 2), apply)
  return np.asarray(logits_BTV, np.float64)


def compare(ref_BTV, x_BTV, targets_BT) -> dict:
  """Drift of logits x from the reference logits, and the NLL of the targets under x."""
  log_ref = ref_BTV - np.logaddexp.reduce(ref_BTV, axis=-1, keepdims=True)
  log_x = x_BTV - np.logaddexp.reduce(x_BTV, axis=-1, keepdims=True)
  nll = -np.take_along_axis(log_x, targets_BT[..., None], -1).mean()
  return {"max_abs_logit_diff_rel": float(np.abs(x_BTV - ref_BTV).max() / np.abs(ref_BTV).max()),
          "mean_kl_nats": float((np.exp(log_ref) * (log_ref - log_x)).sum(-1).mean()),
          "top1_agreement": float((x_BTV.argmax(-1) == ref_BTV.argmax(-1)).mean()),
          "nll": float(nll)}


def measure(workdir: str, dtypes=("float32", "bfloat16"), modes=("naive", "absorbed"),
            windows: int = 8, split: str | None = None) -> list[dict]:
  """One row per (dtype, mode): `compare` against the float32 full forward; then, per dtype,
  every other mode against that dtype's naive decoding (mode 'absorbed vs naive', say)."""
  exp, params, step = evaluate_lib.restore_experiment(workdir, overrides={"model.dtype":
                                                                           "float32"})
  if exp.config.model.get("attention", {}).get("kind") not in ("mla", "gla"):
    raise ValueError(f"--workdir={workdir} holds a "
                     f"{exp.config.model.get('attention', {}).get('kind')} model: decode modes "
                     "are MLA's and GLA's (naive, latent, absorbed)")
  inputs_BT, targets_BT = _windows(exp, split or exp.config.data.eval_split, windows)
  ref_BTV = np.asarray(jax.jit(exp.model.apply)({"params": params}, jnp.asarray(inputs_BT)),
                       np.float64)
  rows = [{"dtype": "float32", "mode": "full forward", "step": step,
           **compare(ref_BTV, ref_BTV, targets_BT)}]
  pairs = []
  for dtype in dtypes:
    decoded = {}
    for mode in modes:
      decoded[mode] = _decode(workdir, {"model.dtype": dtype,
                                        "model.attention.mla_decode_mode": mode}, inputs_BT)
      rows.append({"dtype": dtype, "mode": mode, "step": step,
                   **compare(ref_BTV, decoded[mode], targets_BT)})
    pairs += [{"dtype": dtype, "mode": f"{mode} vs naive", "step": step,
               **compare(decoded["naive"], x_BTV, targets_BT)}
              for mode, x_BTV in decoded.items() if mode != "naive" and "naive" in decoded]
  return rows + pairs


def markdown(rows) -> str:
  lines = ["| dtype | decode | max abs logit diff / max abs logit | mean KL (nats) | "
           "top-1 agreement | NLL (nats) |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['dtype']} | {r['mode']} | {r['max_abs_logit_diff_rel']:.2e} | "
                 f"{r['mean_kl_nats']:.2e} | {r['top1_agreement']:.2%} | {r['nll']:.4f} |")
  return "\n".join(lines)


def table(raw: dict) -> dict:
  """docs/results/decode_drift.md's table (a studies/pages.py table file) from the raw file:
  {"command", "machine", "date", "wall_s", "rows"}, rows as `measure` returns them."""
  def label(r):
    if r["mode"] == "full forward":
      return "full forward (reference)"
    return r["mode"].replace("vs naive", f"vs {r['dtype']} naive")

  return {
      "command": raw["command"], "machine": raw["machine"], "date": raw["date"],
      "provenance": f"the rows of docs/results/decode_drift/raw/drift.json (scripts/"
                    f"decode_drift.py --output), by studies/decode_drift.py; wall time "
                    f"{raw['wall_s']:.0f} s",
      "columns": ["dtype", "decode", "max abs logit diff / max abs logit", "mean KL (nats)",
                  "top-1 agreement", "NLL (nats)"],
      "format": [None, None, "{:.1e}", "{:.1e}", "{:.2f}%", "{:.4f}"],
      "cell_format": [[0, 2, "{}"], [0, 3, "{}"]],
      "rows": [[r["dtype"], label(r), r["max_abs_logit_diff_rel"], r["mean_kl_nats"],
                100 * r["top1_agreement"], r["nll"]] for r in raw["rows"]]}
