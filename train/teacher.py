"""The frozen L_feat teacher named by ``loss.teacher`` (only resolved when ``loss.gamma0 > 0``).

- a timm name or a local weights file/dir (the paper: DINOv2 ViT-B/14) -> ``build_teacher``
  (``loss.teacher_arch`` names the timm architecture of a weights file that does not record it);
- ``run:/path/to/run-…``: a finished daat run whose final student is frozen and used as teacher
  (its CLS + patch tokens after the final norm); ``run:run-…`` (a bare artifact id) names that
  run under the same ``--out`` directory (what ``daat experiment`` passes, so the saved config
  does not depend on where the artifacts live);
- ``run:standard``: the ``standard`` run with the same data/model/optim settings on the same
  shards (``standard_config``). Offline, with no DINOv2 weights, this is the synthetic preset's
  stand-in teacher. It is trained before this run by ``standard_first.resolve`` (``daat train``)
  or as its own cell (``daat experiment``), which pass ``run:run-<id>`` instead: ``locate`` only
  opens finished runs and never trains.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from daat.artifacts import ArtifactError, open_artifact
from daat.config import Config
from daat.errors import TrainingError

RUN_PREFIX = "run:"
STANDARD = "run:standard"


@dataclass
class ResolvedTeacher:
    module: nn.Module  # frozen, eval mode: x [B,3,S,S] in [0,1] -> tokens [B,1+N,D_t]
    model_id: str  # what the manifest records
    lineage: list[str]  # artifact ids the run depends on through its teacher
    embed_dim: int


class RunTeacher(nn.Module):
    """A trained daat student used as a frozen teacher: its tokens after the final norm."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.forward_tapped(x, need_tokens=True).tokens

    def train(self, mode: bool = True) -> RunTeacher:
        return super().train(False)  # always frozen


def standard_config(cfg: Config) -> Config:
    """The ``standard`` run (no attack, no alignment terms) with cfg's data/model/optim/train."""
    std = copy.deepcopy(cfg)
    std.preset = "standard"
    std.attack.steps = 0
    std.loss.lam = 0.0
    std.loss.gamma0 = 0.0
    std.depth.target = "cached"
    std.train.init_from = ""  # the standard run is what run:standard starts from, never a fine-tune
    return std


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher comes from, known before anything is loaded (it enters the content key
    through the lineage when it is a run)."""

    spec: str  # loss.teacher as given
    run_dir: Path | None  # a finished daat run, for run:... teachers
    lineage: tuple[str, ...]


def locate(cfg: Config, out: str | Path) -> TeacherSource | None:
    """The teacher's source, or None when L_feat is off (γ0 = 0). A run teacher must be finished
    already: ``run:standard`` here is an error (``standard_first.resolve`` replaces it)."""
    if cfg.loss.gamma0 <= 0:
        return None
    spec = cfg.loss.teacher
    require_resolved(spec, "loss.teacher")
    if spec.startswith(RUN_PREFIX):
        return run_source(spec, run_dir(spec, out))
    return TeacherSource(spec, None, ())


def require_resolved(spec: str, key: str) -> None:
    """Refuse ``run:standard`` where only a finished run can be opened."""
    if spec == STANDARD:
        raise TrainingError(
            f"{key}={STANDARD} names a run that is not trained yet: call "
            "daat.train.standard_first.resolve(cfg, shards_dir, out) first (daat train does; "
            "daat experiment trains it as its own cell) or name a finished run with "
            "run:/path/to/run-..."
        )


def run_dir(ref: str, out: str | Path) -> Path:
    """The directory a ``run:`` reference names: a path, or a bare artifact id under ``out``."""
    target = ref[len(RUN_PREFIX) :]
    if "/" not in target and target.startswith("run-"):
        return Path(out) / target
    return Path(target)


def run_source(spec: str, run_dir: Path, key: str = "loss.teacher") -> TeacherSource:
    """The finished run at ``run_dir``, named by config ``key`` = ``spec`` (in errors)."""
    try:
        art = open_artifact(run_dir, kind="run", require_complete=True)
    except ArtifactError as e:
        raise TrainingError(f"{key}={spec}: {e}") from e
    return TeacherSource(spec, art.path, (art.id,))


def load(source: TeacherSource, cfg: Config, device: torch.device) -> ResolvedTeacher:
    """The frozen teacher module (eval mode, no gradients) on ``device``."""
    if source.run_dir is not None:
        from daat.train.checkpoint import load_model_for_eval

        student, _, _ = load_model_for_eval(source.run_dir, device=device)
        return ResolvedTeacher(
            RunTeacher(student), source.lineage[0], list(source.lineage), int(student.embed_dim)
        )
    from daat.teacher_model import build_teacher

    grid = (cfg.model.img_size // cfg.model.patch_size,) * 2
    arch = {"architecture": cfg.loss.teacher_arch} if cfg.loss.teacher_arch else None
    teacher = build_teacher(source.spec, cfg.model.img_size, grid, device, arch_overrides=arch)
    teacher.eval().requires_grad_(False)
    model_id = getattr(teacher, "model_id", source.spec)
    return ResolvedTeacher(teacher, str(model_id), [], int(teacher.embed_dim))
