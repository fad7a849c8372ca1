"""L-inf PGD, shared by training (the inner max of Eq. 5) and evaluation (Table 1, Fig. 3c).

The exact procedure (evaluation tests re-implement it, so changes here are contract changes):

- random start: ``delta = (torch.rand(x.shape, generator=generator, device=x.device,
  dtype=torch.float32) * 2 - 1) * eps``, then ``x_0 = clamp(x + delta, 0, 1)``;
  without random start ``x_0 = x``.
- step k = 0..steps-1: ``loss = loss_fn(model(x_k).float(), y)`` (default: cross-entropy with
  ``reduction="sum"``, so each sample's gradient does not shrink with the batch size),
  ``g = autograd.grad(loss, x_k)``,
  ``x_{k+1} = clamp(clamp(x_k + alpha * sign(g), x - eps, x + eps),
  0, 1)`` -- i.e. delta <- delta + alpha sign(g), projected onto the eps-ball and so that x + delta
  stays in [0,1]. The iterate is kept as x + delta directly so x_adv is exactly inside [0,1].
- ``x_adv = x_steps`` (the final iterate, detached); ``steps == 0`` gives ``x_adv = x``.

While attacking, every parameter has ``requires_grad=False`` (restored afterwards, also on error):
the backward computes only the input gradient. The model's train/eval mode is left as the caller
set it. The iterate and the gradient stay fp32 even when the forward runs under bf16 autocast. No
host-device synchronisation happens inside the loop: the per-sample flags stay on the device.

Preconditions (not checked, to avoid a sync per batch): ``x`` in [0,1]; ``generator`` on
``x.device``; pass the bare module, not a DDP wrapper (its reducer expects weight gradients).
Do not call under ``torch.inference_mode`` (gradients are needed; plain ``no_grad`` is fine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PGDResult:
    x_adv: torch.Tensor  # [B, C, H, W], detached, dtype of x
    fooled_any: torch.Tensor  # [B] bool: misclassified at any iterate whose forward was computed
    zero_grad: (
        torch.Tensor
    )  # [B] bool: input gradient exactly all-zero at some step (masking/underflow)

    @property
    def zero_grad_count(self) -> torch.Tensor:
        """Number of flagged samples, as a device tensor (call ``.item()`` when logging)."""
        return self.zero_grad.sum()


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def random_init(
    x: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The first iterate x_0: uniform in the eps-ball (fp32 draw, exactly as documented above),
    clipped to [0,1]."""
    delta = (
        torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32) * 2 - 1
    ) * eps
    return (x.float() + delta).clamp(0.0, 1.0)


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """requires_grad=False on every parameter for the duration; the previous flags come back even
    when the body raises."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _validate(x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int) -> None:
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(
            f"pgd: x must be a floating batch [B, ...], got {tuple(x.shape)} {x.dtype}"
        )
    if y.shape != x.shape[:1]:
        raise ValueError(f"pgd: y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"pgd: eps and alpha must be non-negative, got eps={eps}, alpha={alpha}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"pgd: steps must be a non-negative integer, got {steps!r}")


def _autocast(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
    loss_fn: LossFn | None = None,
    check_final: bool = False,
) -> PGDResult:
    """L-inf PGD maximising ``loss_fn`` (default summed CE) of ``model(x) -> logits``; see the
    module docstring for the exact iteration. ``fooled_any`` covers x_0 .. x_{steps-1} (the
    iterates whose forward the attack computes); ``check_final=True`` adds one no-grad forward on
    x_adv so the final iterate counts too (evaluation's worst case over iterates)."""
    _validate(x, y, eps, alpha, steps)
    loss_fn = loss_fn or ce_sum
    x32 = x.detach().float()
    lo, hi = (x32 - eps).clamp(min=0.0), (x32 + eps).clamp(max=1.0)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    zero = torch.zeros_like(fooled)
    x_k = _first_iterate(x32, eps, steps, random_start, generator)
    with frozen_weights(model), torch.enable_grad():
        for _ in range(steps):
            x_k.requires_grad_(True)
            with _autocast(x.device, amp_dtype):
                logits = model(x_k)
            (grad,) = torch.autograd.grad(loss_fn(logits.float(), y), x_k)
            fooled |= logits.detach().argmax(dim=1) != y
            zero |= grad.flatten(1).eq(0).all(dim=1)
            x_k = torch.clamp(x_k.detach() + alpha * grad.sign(), lo, hi)
        if check_final:
            with torch.no_grad(), _autocast(x.device, amp_dtype):
                fooled |= model(x_k).argmax(dim=1) != y
    x_adv = x.detach() if steps == 0 else x_k.detach().to(x.dtype)
    return PGDResult(x_adv, fooled, zero)


def _first_iterate(
    x32: torch.Tensor, eps: float, steps: int, start: bool, generator: torch.Generator | None
) -> torch.Tensor:
    if start and steps > 0:
        return random_init(x32, eps, generator)
    return x32.clone()
