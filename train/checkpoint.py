"""Training checkpoints: one dict per file, written atomically, loaded with ``weights_only=True``.

Layout inside a run artifact::

    checkpoints/step-00000500.pt   mid-epoch checkpoints (every train.ckpt_every_steps)
    checkpoints/epoch-0003.pt      end of epoch 3 (i.e. 3 epochs done)
    checkpoints/latest             text file naming the newest of the above (updated after it)
    checkpoints/final.pt           the finished model (no optimiser state), for evaluation

Everything inside is a tensor, a number, a string, a list or a dict, so ``torch.load`` with
``weights_only=True`` reads it and nothing in a checkpoint is ever unpickled as code.

Every checkpoint is recorded with its sha256 in the run's manifest before ``latest`` names it,
and is used only if it still matches: a resumed run starts from the checkpoint ``latest`` names
if it is intact, else from the newest intact earlier one (with a warning naming the damaged one;
the replay from there is exact, so the result is the same), else it stops with an error. A
damaged ``final.pt`` is never reused or evaluated: ``daat train`` rewrites it from the last epoch
checkpoint, ``daat evaluate`` refuses it.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daat.artifacts import (
    Artifact,
    ArtifactError,
    atomic_path,
    atomic_write_text,
    open_artifact,
    sha256_file,
)
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
        "numpy": [
            np_kind,
            torch.from_numpy(np_keys.astype(np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
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
def save(path: str | os.PathLike, state: dict[str, Any]) -> str:
    """Write ``state`` to a temporary file beside ``path`` and rename it into place; returns the
    file's sha256."""
    state = {"format": FORMAT, **state}
    # torch.save names the zip's inner folder after a path it is given (here a random temp
    # name); through a file object it is always "archive", so equal states give equal bytes
    # (an evaluation's content key includes its checkpoint's sha256)
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except RuntimeError as e:  # torch reports a failed write as a C++ iostream error
            raise _write_failure(Path(path), state, e) from e
        digest = sha256_file(tmp)
    return digest


def _write_failure(path: Path, state: dict[str, Any], error: RuntimeError) -> Exception:
    """What a failed ``torch.save`` means: ENOSPC (naming the file) when the disk has less room
    than the checkpoint's tensors, else a one-line TrainingError."""
    need = sum(t.numel() * t.element_size() for t in _tensors(state))
    free = shutil.disk_usage(path.parent).free
    if free < need:
        return OSError(
            errno.ENOSPC,
            f"No space left on device (the checkpoint needs about "
            f"{need / 2**20:.0f} MB, {free / 2**20:.0f} MB are free)",
            str(path),
        )
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return TrainingError(f"cannot write checkpoint {path}: {first}")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


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
        raise TrainingError(
            f"{pointer} names {name}, which is missing; delete {pointer} to "
            f"restart the run from scratch"
        )
    return path


def prune(
    ckpt_dir: str | os.PathLike, keep_steps: int, keep_epochs: int, before_delete=None
) -> list[Path]:
    """Delete all but the newest ``keep_steps`` step-* and ``keep_epochs`` epoch-* files; the one
    ``latest`` names is always kept. ``before_delete(names)`` runs first (the run forgets them in
    its manifest, so a manifest never lists a deleted checkpoint). Returns the deleted paths."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    current = pointer.read_text().strip() if pointer.is_file() else None
    stale = []
    for pattern, keep in ((_STEP_RE, keep_steps), (_EPOCH_RE, keep_epochs)):
        names = sorted(p.name for p in ckpt_dir.iterdir() if pattern.match(p.name))
        stale += [name for name in (names[:-keep] if keep > 0 else names) if name != current]
    if stale and before_delete is not None:
        before_delete(stale)
    for name in stale:
        (ckpt_dir / name).unlink()
    return [ckpt_dir / name for name in stale]


class RunCheckpoints:
    """The checkpoints of one run artifact, each recorded with its sha256 (and step) in the run's
    manifest; only rank 0 saves."""

    def __init__(self, art: Artifact):
        self.art, self.dir = art, art.path / CKPT_DIR

    def save(self, name: str, state: dict[str, Any], keep_steps: int, keep_epochs: int) -> None:
        """Write, record (manifest saved), point ``latest`` at it, prune the old ones."""
        rel = f"{CKPT_DIR}/{name}"
        self.art.record_file(rel, sha256=save(self.dir / name, state))["step"] = state["step"]
        self.art.save()
        write_latest(self.dir, name)
        prune(self.dir, keep_steps, keep_epochs, before_delete=self._forget)

    def save_final(self, state: dict[str, Any]) -> None:
        self.art.record_file(f"{CKPT_DIR}/{FINAL}", sha256=save(self.dir / FINAL, state))

    def _forget(self, names: list[str]) -> None:
        for name in names:
            self.art.manifest["files"].pop(f"{CKPT_DIR}/{name}", None)
        self.art.save()

    def final_problem(self) -> str | None:
        return self.art.check_file(f"{CKPT_DIR}/{FINAL}")

    def resume_from(self) -> Path | None:
        """The checkpoint ``latest`` names if it matches its recorded sha256, else the newest
        recorded one that does (warning which were damaged); None if there is no ``latest`` (a
        run starts over); an error if ``latest`` exists but no checkpoint is intact."""
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        named = pointer.read_text().strip()
        steps = {
            rel[len(CKPT_DIR) + 1 :]: entry["step"]
            for rel, entry in self.art.manifest["files"].items()
            if rel.startswith(f"{CKPT_DIR}/") and "step" in entry
        }
        earlier = sorted((n for n in steps if n != named), key=lambda n: -steps[n])
        damaged = []
        for name in [named] + earlier:
            problem = self.art.check_file(f"{CKPT_DIR}/{name}")
            if problem is None:
                if damaged:
                    sys.stderr.write(
                        f"warning: {self.dir}: {'; '.join(damaged)}; resuming from "
                        f"{name} instead (the replay from there is exact)\n"
                    )
                return self.dir / name
            damaged.append(problem)
        raise TrainingError(
            f"{self.dir}: no intact checkpoint to resume from ({damaged[0]}); "
            f"delete {pointer} to restart the run from scratch"
        )


def verify_checkpoint(run_art: Artifact, path: Path) -> None:
    """A checkpoint inside the run must match the sha256 the run's manifest records for it (one
    named from elsewhere on purpose is taken as it is; evaluation records its sha256)."""
    try:
        rel = path.resolve().relative_to(run_art.path.resolve()).as_posix()
    except ValueError:
        return
    problem = run_art.check_file(rel)
    if problem is not None:
        raise TrainingError(
            f"{run_art.path}: {problem}: the checkpoint is damaged or is not the "
            f"one the run wrote (run the same `daat train` again to rewrite a "
            f"damaged {FINAL})"
        )


# -- evaluation entry point ------------------------------------------------------------------
def eval_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint is evaluated with: its weight EMA when the run kept one."""
    return state["model_ema"] if state.get("model_ema") is not None else state["model"]


def load_model_for_eval(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
):
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
    path = Path(checkpoint) if checkpoint is not None else final_or_latest(art.path)
    verify_checkpoint(art, path)
    state = load(path)
    cfg = config_mod.from_dict(state["config"])
    model = build_student(cfg.model, int(state["num_classes"]))
    model.load_state_dict(eval_weights(state))
    model.to(device).eval()
    shards_dir = art.extra.get("shards_dir")
    if not shards_dir:
        raise TrainingError(f"{art.path}: manifest does not record its shards directory")
    return model, cfg, Path(shards_dir)


def final_or_latest(run_dir: Path) -> Path:
    """The checkpoint a run is used by default: ``checkpoints/final.pt``, else the one ``latest``
    names (a run still in progress). Raises ``TrainingError`` when there is neither."""
    final = run_dir / CKPT_DIR / FINAL
    if final.is_file():
        return final
    found = latest(run_dir / CKPT_DIR)
    if found is None:
        raise TrainingError(
            f"{run_dir} has no checkpoint yet (no {CKPT_DIR}/{FINAL} or {CKPT_DIR}/{LATEST})"
        )
    return found
