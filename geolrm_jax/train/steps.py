"""The generic jit-compiled train step: gradient accumulation, non-finite guard, optimizer update.

A *loss function* has the signature

    loss_fn(params, batch_stats, micro_batch, rng) -> (loss, (metrics, new_batch_stats, aux))

with `loss` an fp32 scalar, `metrics` a flat dict of fp32 scalars (averaged over micro-batches) and `aux`
anything small the caller wants from the last micro-batch (ignored by the train step).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from geolrm_jax.train.train_state import TrainState


def _where(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable):
    """Return train_step(state, batch) -> (state, metrics).

    batch: pytree whose leaves are (accum, B, ...): gradients are averaged over the `accum` micro-batches
    (lax.scan, so memory is that of one micro-batch), then one optimizer update is applied.
    If the loss or any gradient is non-finite, params, batch_stats and opt_state are left unchanged, the step
    counter still advances (the data was consumed) and the non-finite counters are incremented.
    metrics: the loss-function metrics plus loss, grad_norm, learning_rate, nonfinite (0/1),
    nonfinite_consecutive.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch):
        step_key = jax.random.fold_in(state.rng, state.step)
        accum = jax.tree.leaves(batch)[0].shape[0]

        def micro_step(carry, xs):
            grad_sum, loss_sum, metric_sum, batch_stats = carry
            micro_batch, index = xs
            (loss, (metrics, batch_stats, _)), grads = grad_fn(
                state.params, batch_stats, micro_batch, jax.random.fold_in(step_key, index))
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            metric_sum = jax.tree.map(lambda a, m: a + m.astype(jnp.float32), metric_sum, metrics)
            return (grad_sum, loss_sum + loss.astype(jnp.float32), metric_sum, batch_stats), None

        first = jax.tree.map(lambda x: x[0], batch)
        metric_shapes = jax.eval_shape(loss_fn, state.params, state.batch_stats, first, step_key)[1][0]
        zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params),
                 jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metric_shapes),
                 state.batch_stats)
        (grad_sum, loss_sum, metric_sum, batch_stats), _ = jax.lax.scan(
            micro_step, zeros, (batch, jnp.arange(accum)))
        grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grad_sum, state.params)
        loss = loss_sum / accum
        metrics = jax.tree.map(lambda m: m / accum, metric_sum)

        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        updates_done = state.step - state.nonfinite_total
        consecutive = jnp.where(ok, 0, state.nonfinite_consecutive + 1).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=_where(ok, params, state.params),
            batch_stats=_where(ok, batch_stats, state.batch_stats),
            opt_state=_where(ok, opt_state, state.opt_state),
            nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32),
            nonfinite_consecutive=consecutive,
        )
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedule(updates_done),
                       nonfinite=(~ok).astype(jnp.float32),
                       nonfinite_consecutive=consecutive.astype(jnp.float32))
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state_shardings, batch_shardings, metrics_sharding):
    """jit with explicit in/out shardings; the old state is donated."""
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, metrics_sharding), donate_argnums=(0,))


def split_accumulation(batch, accum: int):
    """Host-side (accum·B, ...) numpy batch → (accum, B, ...); micro-batch i = rows [i·B, (i+1)·B)."""
    def split(x):
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by grad_accum_steps={accum}")
        return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
    return jax.tree.map(split, batch)
