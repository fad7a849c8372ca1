"""Schedules as pure functions of the step or epoch (no state, so resuming needs nothing saved)."""

from __future__ import annotations

import math

S_KINDS = ("constant", "warmup_anneal")


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up then cosine decay. Warm-up: base_lr * (step + 1) / warmup_steps for
    step < warmup_steps (so step 0 already trains and step warmup_steps - 1 reaches base_lr). Then
    min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2 with p = (step - warmup_steps) /
    (total_steps - warmup_steps), clipped to [0, 1]: base_lr right after warm-up, min_lr at the
    end."""
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"lr_at: need total_steps > 0 and 0 <= warmup_steps <= total_steps, "
            f"got total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    if step < 0:
        raise ValueError(f"lr_at: step must be non-negative, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def gamma_at(epoch: float, total_epochs: int, gamma0: float, frac: float = 0.2) -> float:
    """Eq. 4: gamma0 * max(0, 1 - t / (frac * T)); t is the epoch index (0-based)."""
    if total_epochs <= 0 or frac <= 0:
        raise ValueError(
            f"gamma_at: need total_epochs > 0 and frac > 0, got {total_epochs}, {frac}"
        )
    if epoch < 0:
        raise ValueError(f"gamma_at: epoch must be non-negative, got {epoch}")
    return gamma0 * max(0.0, 1.0 - epoch / (frac * total_epochs))


def s_at(
    epoch: float, total_epochs: int, kind: str = "constant", warmup_frac: float = 0.1
) -> float:
    """s(t) in [0, 1], the weight on lambda * L_align (the paper gives no schedule).
    ``constant``: 1. ``warmup_anneal``: t / W for t < W = warmup_frac * T (so 0 at t = 0), then
    (T - t) / (T - W), reaching 0 at t = T."""
    if kind not in S_KINDS:
        raise ValueError(f"s_at: kind must be one of {S_KINDS}, got {kind!r}")
    if total_epochs <= 0 or not 0 <= warmup_frac < 1:
        raise ValueError(
            f"s_at: need total_epochs > 0 and 0 <= warmup_frac < 1, "
            f"got {total_epochs}, {warmup_frac}"
        )
    if epoch < 0:
        raise ValueError(f"s_at: epoch must be non-negative, got {epoch}")
    if kind == "constant":
        return 1.0
    warm = warmup_frac * total_epochs
    if epoch < warm:
        return epoch / warm
    return min(1.0, max(0.0, (total_epochs - epoch) / (total_epochs - warm)))


def eps_scale_at(step: int, warmup_steps: int) -> float:
    """ε(t) / ε for an ε warm-up (PGD's α is scaled by the same factor, keeping α / ε): linear as
    the lr warm-up, (step + 1) / warmup_steps for step < warmup_steps, so step 0 already attacks
    and step warmup_steps - 1 reaches the full ε; then 1. ``warmup_steps == 0``: always 1 (off)."""
    if warmup_steps < 0 or step < 0:
        raise ValueError(
            f"eps_scale_at: need step >= 0 and warmup_steps >= 0, "
            f"got step={step}, warmup_steps={warmup_steps}"
        )
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def ema_decay_at(step: int, decay: float) -> float:
    """The weight-EMA decay after update ``step`` (0-based): min(decay, (1 + step) / (10 + step)),
    so the average forgets the random initialisation within the first few dozen updates instead
    of 1 / (1 - decay) of them (TensorFlow's ExponentialMovingAverage with num_updates)."""
    if step < 0 or not 0 <= decay < 1:
        raise ValueError(f"ema_decay_at: need step >= 0 and 0 <= decay < 1, got {step}, {decay}")
    return min(decay, (1 + step) / (10 + step))
