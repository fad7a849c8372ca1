"""Shape vs texture on the synthetic cue-conflict split (Geirhos et al. 2019).

Each cue-conflict image shows the shape of class i (its label) wearing the texture family that the
``synthetic-spurious`` training set ties to class j != i (``texture_label`` in its shard json). A
prediction is a *shape* decision when it is i, a *texture* decision when it is j, and neither
otherwise. Reported, clean and under the Table 1 PGD (``eval.pgd_steps`` steps at ``eval.eps``,
random start, pushed away from the shape label; the decision is read at the final iterate):

    shape accuracy   = #shape decisions / n
    texture accuracy = #texture decisions / n
    shape bias       = shape / (shape + texture)   (None when there is no shape or texture decision)

The split is small (C(C-1) pairs x a few images), so it is attacked in one pass after the val
split (on rank 0, its tars checked against the manifest first), not in resumable chunks.
"""

from __future__ import annotations

import numpy as np
import torch

from daat.config import Config
from daat.errors import DaatError, ShardFormatError
from daat.eval import attacks_eval, style
from daat.synthetic import CUE_CONFLICT

TASK = "cue_conflict"


def decisions(pred: np.ndarray, shape: np.ndarray, texture: np.ndarray) -> dict:
    """Shape / texture accuracy and shape bias of predictions ``pred`` (all int arrays [n])."""
    n = len(pred)
    shape_hits = int(np.sum(pred == shape))
    texture_hits = int(np.sum(pred == texture))
    decided = shape_hits + texture_hits
    return {
        "shape": shape_hits / n if n else None,
        "texture": texture_hits / n if n else None,
        "shape_bias": shape_hits / decided if decided else None,
        "shape_decisions": shape_hits,
        "texture_decisions": texture_hits,
        "n": n,
    }


def texture_labels(shard_art) -> dict[str, int]:
    """Sample key -> the class whose texture the object wears, from the shards' json members."""
    from daat.pipeline.shards import TEXTURE_LABEL, iter_samples

    out = {}
    for sample in iter_samples(shard_art, CUE_CONFLICT):
        if TEXTURE_LABEL not in sample.meta:
            raise DaatError(
                f"{shard_art.path}: cue-conflict sample {sample.key} has no "
                f"'{TEXTURE_LABEL}' in its json; preprocess the card again"
            )
        out[sample.key] = int(sample.meta[TEXTURE_LABEL])
    return out


def evaluate(model, cfg: Config, shard_art, device: torch.device) -> tuple[dict, dict] | None:
    """(summary, per-sample record) on the shards' cue-conflict split; None when it has none."""
    from daat.pipeline.loaders import EvalReadSpec, eval_pipeline

    if CUE_CONFLICT not in shard_art.splits:
        return None
    problems = shard_art.guard([CUE_CONFLICT]).verify(0, 1)
    if problems:
        raise ShardFormatError(
            f"{shard_art.path}/{problems[0]}: the cue-conflict shards no "
            f"longer hold what preprocessing wrote; preprocess again"
        )
    ev = cfg.eval
    textures = texture_labels(shard_art)
    keys, shapes, clean_pred, adv_pred = [], [], [], []
    spec = EvalReadSpec.from_config(cfg, grid=model.grid, split=CUE_CONFLICT, num_workers=0)
    batches = eval_pipeline(shard_art, spec)
    for k, (batch_keys, x, y, _saliency) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        clean = attacks_eval.clean(model, x, y)
        generator = torch.Generator(device=device)
        generator.manual_seed(attacks_eval.task_seed(ev.seed, TASK, k))
        adv = attacks_eval.pgd_eval(
            model,
            x,
            y,
            clean.correct,
            eps=ev.eps,
            alpha=ev.alpha,
            steps=ev.pgd_steps,
            generator=generator,
        )
        keys += list(batch_keys)
        shapes += y.cpu().tolist()
        clean_pred += clean.pred.tolist()
        adv_pred += adv.pred.tolist()
    shape = np.asarray(shapes)
    texture = np.asarray([textures[key] for key in keys])
    attack = f"pgd-{ev.pgd_steps}"
    summary = {
        "split": CUE_CONFLICT,
        "n": len(keys),
        "pairs": len({(int(a), int(b)) for a, b in zip(shape, texture)}),
        "attack": f"{attack} at eps {style.format_eps(ev.eps)} against the shape label, "
        f"decision at the final iterate",
        "clean": decisions(np.asarray(clean_pred), shape, texture),
        attack: decisions(np.asarray(adv_pred), shape, texture),
    }
    record = {
        "key": keys,
        "shape": shape.tolist(),
        "texture": texture.tolist(),
        "pred_clean": clean_pred,
        f"pred_{attack}": adv_pred,
    }
    return summary, record


def add_to(art, data: dict, model, cfg: Config, shard_art, device: torch.device) -> None:
    """Put the cue-conflict numbers in ``data`` (summary.json) and the per-sample record in the
    eval artifact, when the shards have the split."""
    cue = evaluate(model, cfg, shard_art, device)
    if cue is not None:
        data["cue_conflict"] = cue[0]
        art.write_json("cue_conflict.json", cue[1])
