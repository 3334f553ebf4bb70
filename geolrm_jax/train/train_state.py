"""Train state (a pytree of arrays only, so Orbax saves all of it) and the optimizer of the recipe."""
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from geolrm_jax.train.schedules import warmup_cosine


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training.

    step: iterations done (skipped non-finite steps included), int32 scalar.
    params / batch_stats: model variables (fp32 params).
    opt_state: optax state (its own count = successful updates, which indexes the lr schedule).
    rng: raw uint32[2] PRNG key; the key of step t is fold_in(rng, t), so resuming replays the same randomness.
    nonfinite_total / nonfinite_consecutive: int32 counters of skipped steps.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_total: jax.Array
    nonfinite_consecutive: jax.Array

    @classmethod
    def create(cls, params, batch_stats, tx: optax.GradientTransformation, rng):
        zero = jnp.zeros((), jnp.int32)
        return cls(step=zero, params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                   rng=jnp.asarray(rng, jnp.uint32), nonfinite_total=zero, nonfinite_consecutive=zero)


def subtree_labels(params, frozen: Sequence[str]):
    """'frozen' for leaves under a top-level key in `frozen`, 'trainable' otherwise."""
    missing = [name for name in frozen if name not in params]
    if missing:
        raise ValueError(f"optim.frozen names {missing} are not top-level parameter subtrees {list(params)}")
    return {k: jax.tree.map(lambda _, k=k: "frozen" if k in frozen else "trainable", v)
            for k, v in params.items()}


def make_optimizer(optim_config):
    """AdamW (b1, b2, weight decay) with warmup-cosine lr and global-norm clipping.

    optim_config fields: lr, warmup_steps, total_steps, eta_min_ratio, b1, b2, eps, weight_decay, grad_clip,
    frozen (tuple of top-level param subtrees that get zero updates and no optimizer state).
    Returns (tx, schedule). Gradient accumulation happens in the train step (see steps.py).
    """
    c = optim_config
    schedule = warmup_cosine(c.lr, c.warmup_steps, c.total_steps, c.eta_min_ratio)
    chain = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip and c.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))
    tx = optax.chain(*chain)
    frozen = tuple(c.get("frozen", ()))
    if frozen:
        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                                   lambda params: subtree_labels(params, frozen))
    return tx, schedule
