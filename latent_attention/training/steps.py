"""The pure train and eval steps (jitted and sharded by the loop)."""

import jax
import jax.numpy as jnp
import optax

from latent_attention.training.state import TrainState


def _align(logits, batch, *keys):
  """The batch's per-position `keys` at the positions the model scored (Perceiver AR: the last
  M; a batch with `positions`: those)."""
  arrays = [batch[k] for k in keys]
  if "positions" in batch:
    return [jnp.take_along_axis(a, batch["positions"], axis=1) for a in arrays]
  if logits.ndim == 3 and logits.shape[1] != arrays[0].shape[1]:
    return [a[:, -logits.shape[1]:] for a in arrays]
  return arrays


def sums(params, batch, model, aux_losses=False):
  """Weighted sums of NLL and of correct argmax predictions, and the weight total.

  A batch with `positions` (synthetic tasks with data.scored_positions) is scored only there:
  the model computes logits at those positions alone. `aux_losses`: also the mean of the losses
  the model sows (DSA's indexer KL per layer, attention/indexer.py), as `indexer_kl`.
  """
  scored = {"positions_BP": batch["positions"]} if "positions" in batch else {}
  if aux_losses:
    logits, sown = model.apply({"params": params}, batch["inputs"], mutable=["losses"],
                               **scored)
    kls = jax.tree.leaves(sown.get("losses", {}))
  else:
    logits, kls = model.apply({"params": params}, batch["inputs"], **scored), []
  targets, weights = _align(logits, batch, "targets", "weights")
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  out = {"nll": jnp.sum(nll * weights), "correct": jnp.sum(correct * weights),
         "count": jnp.sum(weights)}
  if "target_bytes" in batch:  # text LMs' eval batches: the UTF-8 bytes of the targets.
    out["bytes"] = jnp.sum(_align(logits, batch, "target_bytes")[0] * weights)
  if kls:
    out["indexer_kl"] = sum(kls) / len(kls)
  return out


def train_step(state: TrainState, batch, *, model, optimizer):
  """One AdamW step on the mean weighted NLL (plus DSA's indexer KL, whose gradient reaches
  the indexer alone); a non-finite step is skipped and recorded. `loss` is the NLL."""

  def loss_fn(params):
    s = sums(params, batch, model, aux_losses=True)
    nll = s["nll"] / jnp.maximum(s["count"], 1.0)
    return nll + s.get("indexer_kl", 0.0), (nll, s)

  (_, (loss, s)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A cond selects whole buffers; a where per leaf would be one more pass over the state.
  params, opt_state = jax.lax.cond(finite, lambda: (params, opt_state),
                                   lambda: (state.params, state.opt_state))
  first_bad = jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                        state.nonfinite_step)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         nonfinite_step=first_bad)
  metrics = {"loss": loss, "grad_norm": grad_norm, **s}
  return new_state, metrics


def eval_step(params, batch, *, model):
  return sums(params, batch, model)


def summarize(totals: dict, task: str, bits_name: str = "bits_per_token") -> dict:
  """Loss, accuracy and (LM) perplexity, bits per token (`bits_name`) and, with the targets'
  bytes, bits per byte (the same text's information whatever the tokenizer) from sums."""
  count = int(round(float(totals["count"])))  # a sum of 0/1 weights: an integer.
  loss = float(totals["nll"]) / max(count, 1)
  out = {"loss": loss, "accuracy": float(totals["correct"]) / max(count, 1), "count": count}
  if task == "lm":
    out["perplexity"] = float(jnp.exp(loss))
    out[bits_name] = loss / float(jnp.log(2.0))
    if float(totals.get("bytes", 0.0)) > 0:
      out["bits_per_byte"] = float(totals["nll"]) / float(totals["bytes"]) / float(jnp.log(2.0))
  return out
