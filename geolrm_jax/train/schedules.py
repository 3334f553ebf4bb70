"""Learning-rate schedules of the original GeoLRM training recipe."""
import optax


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int, eta_min_ratio: float = 0.001):
    """Linear warmup 0 → base_lr over `warmup_steps`, then cosine decay to `base_lr * eta_min_ratio` at
    `total_steps` (counted from step 0, warmup included), constant afterwards.

    Steps are optimizer updates (after gradient accumulation), as the original's per-step scheduler.
    """
    if total_steps <= warmup_steps:
        raise ValueError(f"optim.total_steps ({total_steps}) must exceed optim.warmup_steps ({warmup_steps})")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=base_lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=base_lr * eta_min_ratio,
    )
