"""The optimizer: Adam/AdamW, linear warm-up + cosine decay, global-norm clipping, optional accumulation.

`optim.total_steps` and `optim.warmup_steps` count train steps (micro-steps with gradient accumulation).
With `grad_accum = k` the optimizer updates every k steps, and its schedule runs over the updates
(total_steps // k of them, warm-up warmup_steps // k), so the cosine ends with the run.
"""
from __future__ import annotations

import optax

from headsup_jax.errors import ConfigError


def _updates(optim) -> tuple[int, int]:
    """(updates of the whole run, warm-up updates)"""
    k = max(optim.grad_accum, 1)
    return max(optim.total_steps // k, 1), max(optim.warmup_steps // k, 1)


def learning_rate(optim) -> optax.Schedule:
    """Learning rate of the n-th optimizer update (n from 0)."""
    total, warmup = _updates(optim)
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(total, warmup + 1), end_value=0.0)


def step_learning_rate(optim, step: int) -> float:
    """The learning rate applied at train step `step` (from 1): that of the update the step completes, or
    of the update it accumulates towards."""
    return float(learning_rate(optim)((step - 1) // max(optim.grad_accum, 1)))


def make_optimizer(optim, skip_nonfinite: bool = False) -> optax.GradientTransformation:
    """From the `optim` block of a config. `skip_nonfinite` drops updates whose gradients are NaN/inf."""
    if optim.name == "adam":
        core = optax.adam(learning_rate(optim), b1=optim.b1, b2=optim.b2)
    elif optim.name == "adamw":
        core = optax.adamw(learning_rate(optim), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    else:
        raise ConfigError(f"config.optim.name must be 'adam' or 'adamw', got {optim.name!r}")
    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), core) if optim.clip_norm > 0 else core
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=1_000_000)
    if optim.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum)
    return tx
