"""Per-epoch validation: clean and PGD-k accuracy and mean cos(A(x), G) of the model evaluation
will use (the weight EMA when the run keeps one), on the first ``train.val_samples`` of the val
split, sharded over ranks and summed. Reads the training state; never changes it."""

from __future__ import annotations

import torch

from daat import dist
from daat.attacks import pgd
from daat.pipeline.loaders import EvalReadSpec, eval_pipeline
from daat.pipeline.shards import ShardArtifact
from daat.train.losses import cosine_distance
from daat.train.step import TrainState, amp_context, amp_dtype, to_device

VAL_FIELDS = ("n", "clean", "robust", "cos")


def validate(state: TrainState, shards: ShardArtifact, info: dist.DistInfo) -> dict:
    """The epoch record's ``val_*`` fields, identical on every rank."""
    cfg = state.cfg
    batches = eval_pipeline(
        shards,
        EvalReadSpec.from_config(
            cfg,
            grid=state.model.grid,
            batch_size=cfg.train.batch_size,
            max_samples=cfg.train.val_samples or None,
            rank=info.rank,
            world_size=info.world_size,
        ),
    )
    k = cfg.train.val_pgd_steps
    local = val_sums(
        state,
        ((x, y, g) for _, x, y, g in batches),
        k,
        seed=cfg.seed * 1_000_003 + 7919 + info.rank,
    )
    n, clean, robust, cos = dist.all_reduce_sum(local).tolist()
    n = max(n, 1.0)
    return {
        "val_n": int(n),
        "val_clean_acc": clean / n,
        "val_pgd_acc": robust / n,
        "val_pgd_steps": k,
        "val_eps": cfg.attack.eps,
        "val_cos_AG": cos / n,
    }


def val_sums(state: TrainState, batches, pgd_steps: int, seed: int) -> torch.Tensor:
    """Sums over ``batches`` of (count, clean correct, PGD-k correct, cos(A(x), G)) on this rank,
    as a float64 device tensor (``validate`` all-reduces it). PGD-k runs at ``attack.eps`` with
    α = 2.5 ε / k (Madry et al.; 1/255 for ε = 4/255, k = 10), random start from a generator
    seeded by ``seed`` (the global RNG streams are not touched), and a sample counts as robust only
    if no iterate fooled the model (worst case over iterates, as evaluation scores it). The model
    validated is the weight EMA when the state keeps one (what evaluation will use)."""
    cfg, device = state.cfg, state.device
    model = state.ema if state.ema is not None else state.model
    eps = cfg.attack.eps
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    attack_dtype = amp_dtype(device, cfg.attack.amp)
    sums = torch.zeros(len(VAL_FIELDS), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x, y, g = to_device(batch, device)
            with torch.no_grad(), amp_context(device, cfg.train.amp):
                out = model.forward_tapped(x, need_attention=True)
            clean = out.logits.argmax(dim=1) == y
            cos = 1.0 - cosine_distance(out.attention.float(), g.float().flatten(1))
            robust = clean
            if pgd_steps > 0:
                result = pgd(
                    model,
                    x,
                    y,
                    eps=eps,
                    alpha=2.5 * eps / pgd_steps,
                    steps=pgd_steps,
                    random_start=True,
                    generator=generator,
                    amp_dtype=attack_dtype,
                    check_final=True,
                )
                robust = clean & ~result.fooled_any
            sums += torch.stack(
                [
                    torch.tensor(float(len(y)), device=device, dtype=torch.float64),
                    clean.sum().double(),
                    robust.sum().double(),
                    cos.sum().double(),
                ]
            )
    finally:
        model.train(was_training)
    return sums
