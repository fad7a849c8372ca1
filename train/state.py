"""Building the training state: student, projection, DDP wrapper, compiled attack model, weight
EMA, AdamW, PGD generator and depth target, gathered in the ``TrainState`` that ``train_step``
takes (also the entry point for benchmarks and tests that step a model by hand).

Seeding is part of building: every rank seeds from ``cfg.seed`` so initial weights are
identical; the loop reseeds per rank afterwards (``seed_all``).
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch import nn

from daat import dist
from daat.config import Config
from daat.train.online_depth import DepthTarget
from daat.train.step import TrainForward, TrainState
from daat.train.teacher import ResolvedTeacher

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_state(
    cfg: Config,
    num_classes: int,
    teacher: ResolvedTeacher | None,
    device: torch.device,
    info: dist.DistInfo | None = None,
) -> TrainState:
    """Student, projection, DDP wrapper, AdamW, PGD generator and depth target for ``train_step``
    (also the entry point for benchmarks). ``info`` None: one process."""
    from daat.models import FeatureProjection, build_student

    info = info or dist.DistInfo()
    seed_all(cfg.seed)  # identical initial weights on every rank
    model = build_student(cfg.model, num_classes).to(device)
    projection = None
    if teacher is not None and teacher.embed_dim != model.embed_dim:
        projection = FeatureProjection(model.embed_dim, teacher.embed_dim).to(device)
    forward: nn.Module = TrainForward(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        forward = torch.compile(forward)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed * 1_000_003 + info.rank)
    # PGD is ~90% of a step: compiling only the update forward would leave it eager.
    attack_model = torch.compile(model) if cfg.train.compile else None
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.train.ema_decay > 0 else None
    return TrainState(
        cfg=cfg,
        model=model,
        forward=forward,
        attack_model=attack_model,
        ema=ema,
        optimizer=build_optimizer(cfg, model, projection),
        device=device,
        depth_target=DepthTarget(cfg, model.grid, device),
        generator=generator,
        teacher=teacher.module if teacher else None,
        projection=projection,
        distributed=info.enabled,
    )


def build_optimizer(
    cfg: Config, model: nn.Module, projection: nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW over the student (and projection); no weight decay on norms, biases, layer-scale
    gains (every 1-d tensor), the positional embedding or the CLS/register tokens."""
    named = list(model.named_parameters())
    if projection is not None:
        named += [(f"projection.{n}", p) for n, p in projection.named_parameters()]
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            skip = p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES)
            (no_decay if skip else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = True if dist.cuda_paths(next(model.parameters()).device) else None
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), fused=fused)
