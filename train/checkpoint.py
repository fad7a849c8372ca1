"""Training checkpoints: one dict per file, written atomically, loaded with ``weights_only=True``.

Layout inside a run artifact::

    checkpoints/step-00000500.pt   mid-epoch checkpoints (every train.ckpt_every_steps)
    checkpoints/epoch-0003.pt      end of epoch 3 (i.e. 3 epochs done)
    checkpoints/latest             text file naming the newest of the above (updated after it)
    checkpoints/final.pt           the finished model (no optimiser state), for evaluation

Everything inside is a tensor, a number, a string, a list or a dict, so ``torch.load`` with
``weights_only=True`` reads it and nothing in a checkpoint is ever unpickled as code.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daat.artifacts import ArtifactError, atomic_path, atomic_write_text, open_artifact
from daat.errors import TrainingError

FORMAT = 1
CKPT_DIR = "checkpoints"
LATEST = "latest"
FINAL = "final.pt"
_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")
_EPOCH_RE = re.compile(r"^epoch-(\d{4})\.pt$")


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def epoch_name(epochs_done: int) -> str:
    return f"epoch-{epochs_done:04d}.pt"


# -- RNG state as plain tensors/lists (weights_only-loadable) ---------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states of this process."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files -----------------------------------------------------------------------------------
def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary file beside ``path`` and rename it into place."""
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        raise TrainingError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a daat checkpoint (format {FORMAT})")
    return state


def write_latest(ckpt_dir: str | os.PathLike, name: str) -> None:
    atomic_write_text(Path(ckpt_dir) / LATEST, name + "\n")


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, or None before the first checkpoint."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = Path(ckpt_dir) / name
    if not path.is_file():
        raise TrainingError(f"{pointer} names {name}, which is missing; delete {pointer} to "
                            f"restart the run from scratch")
    return path


def prune(ckpt_dir: str | os.PathLike, keep_steps: int, keep_epochs: int) -> list[Path]:
    """Delete all but the newest ``keep_steps`` step-* and ``keep_epochs`` epoch-* files; the one
    ``latest`` names is always kept. Returns the deleted paths."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    current = pointer.read_text().strip() if pointer.is_file() else None
    deleted = []
    for pattern, keep in ((_STEP_RE, keep_steps), (_EPOCH_RE, keep_epochs)):
        names = sorted(p.name for p in ckpt_dir.iterdir() if pattern.match(p.name))
        stale = names[:-keep] if keep > 0 else names
        for name in stale:
            if name != current:
                (ckpt_dir / name).unlink()
                deleted.append(ckpt_dir / name)
    return deleted


# -- evaluation entry point ------------------------------------------------------------------
def eval_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint is evaluated with: its weight EMA when the run kept one."""
    return state["model_ema"] if state.get("model_ema") is not None else state["model"]


def load_model_for_eval(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu"):
    """``(model in eval mode on device, Config, shards_dir)`` from a run artifact.

    ``checkpoint`` defaults to ``checkpoints/final.pt``, else the ``latest`` one (a run still in
    progress). The trained feature projection is not part of the model.
    """
    from daat import config as config_mod
    from daat.models import build_student

    try:
        art = open_artifact(run_dir, kind="run")
    except ArtifactError as e:
        raise TrainingError(str(e)) from e
    path = Path(checkpoint) if checkpoint is not None else _default_checkpoint(art.path)
    state = load(path)
    cfg = config_mod.from_dict(state["config"])
    model = build_student(cfg.model, int(state["num_classes"]))
    model.load_state_dict(eval_weights(state))
    model.to(device).eval()
    shards_dir = art.extra.get("shards_dir")
    if not shards_dir:
        raise TrainingError(f"{art.path}: manifest does not record its shards directory")
    return model, cfg, Path(shards_dir)


def _default_checkpoint(run_dir: Path) -> Path:
    final = run_dir / CKPT_DIR / FINAL
    if final.is_file():
        return final
    found = latest(run_dir / CKPT_DIR)
    if found is None:
        raise TrainingError(f"{run_dir} has no checkpoint yet (no {CKPT_DIR}/{FINAL} or "
                            f"{CKPT_DIR}/{LATEST})")
    return found
