"""The Python API behind ``daat.load_model`` & co. (``daat/__init__.py`` imports it lazily).

Like ``cli.py`` this sits on top of every stage: it may import from ``daat.train`` and
``daat.eval``, and nothing in the stages imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from daat.errors import DaatError


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The trained classifier, in eval mode on ``device``, taking images [B, 3, H, W] in [0,1]
    (its normalisation is its first layer) and returning logits [B, classes].

    ``path`` is a run directory (``daat train``; ``checkpoint`` picks a file inside it, default
    ``checkpoints/final.pt``), a ``daat export`` timm folder, or a ``daat export --format robust``
    folder / ``.pt2`` file. Runs and timm folders give a ``DaatViT``: ``model.input_size`` is
    (3, H, W), ``model.grid`` the patch grid, and ``attention_map(model, x)`` works on it; a
    robust export gives a plain ``torch.export`` module (logits only).
    """
    from daat.artifacts import MANIFEST
    from daat.export import CONFIG, ROBUST

    path = Path(path)
    if (path / MANIFEST).is_file():
        from daat.train.checkpoint import load_model_for_eval

        model, _, _ = load_model_for_eval(path, checkpoint, device)
        return model
    if checkpoint is not None:
        raise DaatError(f"{path}: checkpoint= only applies to a run directory")
    if (path / CONFIG).is_file():
        return _load_timm_folder(path, device)
    robust = path / ROBUST if path.is_dir() else path
    if robust.is_file() and robust.suffix == ".pt2":
        return torch.export.load(robust).module().to(device)
    raise DaatError(
        f"{path} is neither a run directory (no manifest.json), a `daat export` folder "
        f"(no {CONFIG} or {ROBUST}) nor a .pt2 file"
    )


def _load_timm_folder(path: Path, device) -> torch.nn.Module:
    import timm

    from daat.models import DaatViT

    try:
        spec = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise DaatError(f"{path / 'config.json'}: invalid JSON: {e}") from e
    aggregate = (spec.get("daat") or {}).get("attention_aggregate", "mean")
    try:
        vit = timm.create_model(f"local-dir:{path}", pretrained=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise DaatError(
            f"{path}: timm cannot load this folder ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})"
        ) from e
    # DaatViT reads mean/std from the pretrained_cfg: the normalisation becomes its first layer.
    return DaatViT(vit, aggregate).to(device).eval()


def open_artifact(path: str | os.PathLike):
    """Any daat artifact directory (shards, run, eval) as a ``daat.artifacts.Artifact``: ``.id``,
    ``.kind``, ``.complete``, ``.config`` (its resolved config as a dict), ``.manifest``,
    ``.file(relpath)``. Raises ``ArtifactError`` naming the problem if it is not one."""
    from daat.artifacts import open_artifact as open_

    return open_(path)


@dataclass
class Run:
    """A training run artifact, read: config, metrics and checkpoints."""

    path: Path
    id: str
    complete: bool
    config: Any  # daat.config.Config, the run's resolved config
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl, one dict per line
    checkpoints: list[Path] = field(default_factory=list)  # step-*, epoch-*, final.pt (sorted)
    lineage: list[str] = field(default_factory=list)  # ids of the artifacts it was made from
    final_metrics: dict = field(default_factory=dict)  # last validation (a complete run only)

    def steps(self, kind: str = "step") -> list[dict]:
        """The metrics records of one ``kind``: ``step`` (per log interval) or ``epoch``."""
        return [m for m in self.metrics if m.get("kind") == kind]


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory: its resolved ``config`` (a ``daat.config.Config``), ``metrics`` (the
    lines of ``metrics.jsonl`` as dicts, in order; ``Run.steps("epoch")`` filters one kind),
    ``checkpoints`` (paths) and lineage. Works on a run still in progress (``complete`` False)."""
    from daat import config as config_mod
    from daat.artifacts import open_artifact
    from daat.train import checkpoint as ckpt
    from daat.train.loop import CONFIG_FILE, METRICS

    art = open_artifact(path, kind="run")
    config_file = art.path / CONFIG_FILE
    if config_file.is_file():
        import yaml

        cfg = config_mod.from_dict(yaml.safe_load(config_file.read_text()))
    else:
        cfg = config_mod.from_dict(art.config)
    metrics = []
    metrics_file = art.path / METRICS
    if metrics_file.is_file():
        for number, line in enumerate(metrics_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    metrics.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DaatError(f"{metrics_file}:{number}: not JSON: {e}") from e
    ckpt_dir = art.path / ckpt.CKPT_DIR
    checkpoints = sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    return Run(
        path=art.path,
        id=art.id,
        complete=art.complete,
        config=cfg,
        metrics=metrics,
        checkpoints=checkpoints,
        lineage=list(art.manifest.get("lineage", [])),
        final_metrics=dict(art.extra.get("final_metrics") or {}),
    )


def depth_saliency(
    x: torch.Tensor,
    grid: int | tuple[int, int] | torch.nn.Module,
    depth_model: str | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """G = N(pool(E(depth))) (the paper's Eq. 1) on a patch grid: each map sums to 1.

    ``x`` is a depth map [H, W] or a batch [B, H, W]; with ``depth_model`` (a hub id or a local
    directory, as ``--depth`` takes) it is a batch of images [B, 3, H, W] in [0,1] that the
    depth model turns into depth first. ``grid`` is (h, w), an int for a square grid, or a model
    from ``load_model`` (its patch grid). Returns [h, w] or [B, h, w].
    """
    from daat.saliency import depth_saliency as g_of_depth

    grid = _grid(grid)
    if depth_model is not None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise DaatError(
                f"depth_saliency with depth_model expects images [B, 3, H, W] in "
                f"[0,1], got {tuple(x.shape)}"
            )
        from daat.depth import load_depth_model

        with torch.no_grad():
            x = load_depth_model(depth_model, device)(x.to(device))
    elif x.dim() == 2:
        return g_of_depth(x[None], grid)[0].reshape(grid)
    if x.dim() != 3:
        raise DaatError(
            f"depth_saliency expects depth maps [B, H, W] (or images [B, 3, H, W] "
            f"with depth_model=...), got {tuple(x.shape)}"
        )
    return g_of_depth(x, grid).reshape(-1, *grid)


def _grid(grid) -> tuple[int, int]:
    if isinstance(grid, torch.nn.Module):
        if not hasattr(grid, "grid"):
            raise DaatError(f"{type(grid).__name__} has no patch grid; pass grid=(h, w)")
        return tuple(grid.grid)
    if isinstance(grid, int):
        return (grid, grid)
    h, w = grid
    return (int(h), int(w))


def attention_map(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A(x): the CLS token's attention over the patches [B, h, w] (unit mass per image, the
    model's ``attention_aggregate`` over blocks), for a model from ``load_model`` and images
    [B, 3, H, W] in [0,1]. No gradient is kept."""
    if not hasattr(model, "forward_tapped"):
        raise DaatError(
            f"attention_map needs a model from daat.load_model on a run or a timm "
            f"export folder; {type(model).__name__} has no attention tap (a "
            f"--format robust export has none)"
        )
    from daat.eval.attention import attention_map as tap
    from daat.eval.attention import to_grid

    attention, _ = tap(model, x)
    return to_grid(attention, model.grid)
