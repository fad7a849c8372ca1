"""One DAAT update (Eq. 5), as a plain function of the training state and one batch.

    x_adv = PGD(x)                       maximises CE only, weights frozen, no syncs
    CE(f(x_adv), y) + λ s(t) L_align(A(x_adv), G) + γ(t) L_feat(φθ(x), φT(x))

The adversarial forward and (while γ(t) > 0) the clean forward for L_feat share one batched
forward of ``[x_adv; x]``: a ViT has no batch statistics, so this is exactly two forwards in one
launch, and DDP sees one forward per backward. Losses come back as detached 0-d tensors; nothing
here waits for the device, so the loop decides when to synchronise (once per log interval).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from daat.attacks import pgd
from daat.config import Config
from daat.dist import cuda_paths
from daat.errors import TrainingError
from daat.train.losses import align_loss, feat_loss
from daat.train.online_depth import DepthTarget
from daat.train.schedules import ema_decay_at, eps_scale_at, gamma_at, lr_at, s_at


class TrainForward(nn.Module):
    """The module DDP wraps: one forward of the student on ``x_adv`` (and the clean ``x``)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, x_adv: torch.Tensor, x_clean: torch.Tensor | None, need_attention: bool):
        if x_clean is None:
            out = self.student.forward_tapped(x_adv, need_attention=need_attention)
            return out.logits, out.attention, None
        b = x_adv.shape[0]
        out = self.student.forward_tapped(
            torch.cat([x_adv, x_clean]), need_attention=need_attention, need_tokens=True
        )
        attention = out.attention[:b] if need_attention else None
        return out.logits[:b], attention, out.tokens[b:]


@dataclass
class TrainState:
    """Everything ``train_step`` touches. ``forward`` is ``TrainForward(model)``, DDP-wrapped
    under torchrun; ``model`` is the bare student (PGD runs on it, outside DDP)."""

    cfg: Config
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    depth_target: DepthTarget
    generator: torch.Generator  # PGD random starts; its state is checkpointed
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None
    projection: nn.Module | None = None  # student width -> teacher width, trained with L_feat
    distributed: bool = False
    attack_model: nn.Module | None = None  # torch.compile'd ``model`` for PGD (train.compile)
    ema: nn.Module | None = (
        None  # frozen copy of ``model`` holding the weight EMA (train.ema_decay)
    )
    params: list[torch.Tensor] = field(default_factory=list)  # clipped together

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]


@dataclass(frozen=True)
class StepSchedule:
    """The schedule values of one step (pure functions of step/epoch: ``at``)."""

    step: int
    epoch: int
    lr: float
    gamma: float = 0.0  # γ(t), Eq. 4
    s: float = 1.0  # s(t)
    eps_scale: float = 1.0  # ε warm-up: the attack's ε and α times this
    ema_decay: float = 0.0  # weight-EMA decay of this update (used when the state keeps an EMA)

    @classmethod
    def at(cls, cfg: Config, step: int, epoch: int, steps_per_epoch: int) -> StepSchedule:
        """The schedules of ``cfg`` at global ``step`` in ``epoch`` (warm-ups in whole steps)."""
        c, epochs = cfg, cfg.train.epochs
        total_steps = steps_per_epoch * epochs
        warmup = min(round(c.optim.warmup_epochs * steps_per_epoch), total_steps)
        eps_warmup = min(round(c.attack.eps_warmup_epochs * steps_per_epoch), total_steps)
        return cls(
            step=step,
            epoch=epoch,
            lr=lr_at(step, total_steps, warmup, c.optim.lr, c.optim.min_lr),
            gamma=gamma_at(epoch, epochs, c.loss.gamma0, c.loss.gamma_frac),
            s=s_at(epoch, epochs, c.loss.s_schedule, c.loss.s_warmup_frac),
            eps_scale=eps_scale_at(step, eps_warmup) if c.attack.steps else 1.0,
            ema_decay=ema_decay_at(step, c.train.ema_decay),
        )


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the CUDA paths apply (``dist.cuda_paths``) and ``enabled``; else None (fp32)."""
    return torch.bfloat16 if enabled and cuda_paths(device) else None


def amp_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (fp32 master weights); nothing on CPU."""
    if amp_dtype(device, enabled) is not None:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adversarial(state: TrainState, x: torch.Tensor, y: torch.Tensor, eps_scale: float = 1.0):
    """``(x_adv, zero-grad count)``; x itself when attack.steps == 0 (standard training). PGD uses
    ε and α of ``attack`` times ``eps_scale`` (the ε warm-up)."""
    a = state.cfg.attack
    if a.steps == 0:
        return x, torch.zeros((), device=x.device)
    was_training = state.model.training
    state.model.eval()  # the attack sees the deterministic model
    try:
        attacked = state.model if state.attack_model is None else state.attack_model
        result = pgd(
            attacked,
            x,
            y,
            eps=a.eps * eps_scale,
            alpha=a.alpha * eps_scale,
            steps=a.steps,
            random_start=a.random_start,
            generator=state.generator,
            amp_dtype=amp_dtype(state.device, a.amp),
        )
    finally:
        state.model.train(was_training)
    return result.x_adv.detach(), result.zero_grad.sum().float()


def train_step(state: TrainState, batch, sched: StepSchedule) -> dict[str, torch.Tensor]:
    """Attack, one forward, Eq. 5, backward, clip, AdamW. Returns detached 0-d loss tensors:
    loss, ce, align, feat, zero_grad (PGD samples whose input gradient was all zero) and
    nonfinite (1.0 when the total loss was NaN/inf)."""
    cfg, device = state.cfg, state.device
    x, y, g_cached = to_device(batch, device)
    for group in state.optimizer.param_groups:
        group["lr"] = sched.lr

    x_adv, zero_grad = adversarial(state, x, y, sched.eps_scale)
    weight_align = cfg.loss.lam * sched.s
    need_align = weight_align > 0
    need_feat = sched.gamma > 0 and state.teacher is not None
    target = state.depth_target(sched.step, sched.epoch, x_adv, g_cached) if need_align else None

    state.forward.train()
    with amp_context(device, cfg.train.amp):
        logits, attention, tokens = state.forward(x_adv, x if need_feat else None, need_align)
        ce = F.cross_entropy(logits.float(), y)
        align = align_loss(attention.float(), target.float()) if need_align else ce.new_zeros(())
        feat = _feat(state, x, tokens) if need_feat else ce.new_zeros(())
    loss = ce + weight_align * align + sched.gamma * feat

    loss.backward()
    if need_feat and state.distributed and state.projection is not None:
        _average_grads(state.projection)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.params, cfg.optim.grad_clip, foreach=True)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        update_ema(state.ema, state.model, sched.ema_decay)
    return {
        "loss": loss.detach(),
        "ce": ce.detach(),
        "align": align.detach(),
        "feat": feat.detach(),
        "zero_grad": zero_grad,
        "nonfinite": (~torch.isfinite(loss.detach())).float(),
    }


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for mine, theirs in zip(ema.buffers(), model.buffers()):
        mine.copy_(theirs)


def _feat(state: TrainState, x: torch.Tensor, student_tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        teacher_tokens = state.teacher(x)
    if state.projection is not None:
        student_tokens = state.projection(student_tokens)
    return feat_loss(student_tokens.float(), teacher_tokens.float())


def _average_grads(module: nn.Module) -> None:
    """The projection lives outside DDP (it is unused once γ = 0), so average it by hand."""
    import torch.distributed as torch_dist

    world = torch_dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad.div_(world)


def to_device(batch, device: torch.device):
    """``(images, labels, G or None)`` of a loader batch on ``device`` (non-blocking copies)."""
    images, labels = batch[0], batch[1]
    g = batch[2] if len(batch) > 2 else None
    move = dict(device=device, non_blocking=True)
    return images.to(**move), labels.to(**move), (g.to(**move) if g is not None else None)


class NonFiniteGuard:
    """Remembers the first step whose loss was NaN/inf, on the device, without syncing; ``check``
    (once per log interval and before every checkpoint; every step on CPU, where it is free)
    raises naming that step, so a broken update is never checkpointed."""

    def __init__(self, device: torch.device, steps_per_epoch: int):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.steps_per_epoch = max(1, steps_per_epoch)

    def update(self, nonfinite: torch.Tensor, step: int) -> None:
        hit = (nonfinite > 0) & (self.first_bad < 0)
        self.first_bad = torch.where(hit, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self) -> None:
        bad = int(self.first_bad.item())
        if bad >= 0:
            raise TrainingError(
                f"loss became NaN/inf at step {bad} (epoch {bad // self.steps_per_epoch}); the "
                "run stopped without checkpointing it. Lower optim.lr or check the data"
            )
