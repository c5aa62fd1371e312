"""Train state and optimizer: AdamW with linear warm-up, cosine decay and global-norm clipping."""

from typing import Any

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # First step whose loss or gradient was non-finite (-1: none). Such a step leaves params and
  # optimizer state untouched, so the state stays the last good one and can still be saved.
  nonfinite_step: jax.Array


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """0 -> learning_rate over warmup_steps, then cosine to end_learning_rate at decay_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.learning_rate, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.decay_steps or train_cfg.num_steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.end_learning_rate)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  # As in nanoGPT and most LM recipes: decay matrices and embeddings, not norm scales or biases.
  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)

  adamw = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=decay_mask))
  if not train_cfg.get("freeze_main"):
    return adamw

  # DSA's warm-up: the indexer's parameters alone change (DeepSeek-V3.2, section 2.1.1).
  def labels(params):
    return traverse_util.path_aware_map(
        lambda path, _: "indexer" if "indexer" in path else "frozen", params)

  return optax.multi_transform({"indexer": adamw, "frozen": optax.set_to_zero()}, labels)


def create_state(rng, model, optimizer, example_inputs) -> TrainState:
  params = model.init(rng, example_inputs)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
