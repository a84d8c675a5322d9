"""The optimizer: Adam/AdamW, linear warm-up + cosine decay, global-norm clipping, optional accumulation."""
from __future__ import annotations

import optax


def learning_rate(optim) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, max(optim.warmup_steps, 1),
                                              max(optim.total_steps, optim.warmup_steps + 1), end_value=0.0)


def make_optimizer(optim, skip_nonfinite: bool = False) -> optax.GradientTransformation:
    """From the `optim` block of a config. `skip_nonfinite` drops updates whose gradients are NaN/inf."""
    if optim.name == "adam":
        core = optax.adam(learning_rate(optim), b1=optim.b1, b2=optim.b2)
    elif optim.name == "adamw":
        core = optax.adamw(learning_rate(optim), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    else:
        raise ValueError(f"config.optim.name must be 'adam' or 'adamw', got {optim.name!r}")
    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), core) if optim.clip_norm > 0 else core
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
    if optim.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum)
    return tx
