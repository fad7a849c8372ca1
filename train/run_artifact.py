"""The run artifact's rules: which shards a run may train on, when a run is created, resumed or
reused, which checkpoint a session may resume from, and the metrics log's truncation on resume.

Shard integrity: the run's key includes its shards' content digest; ``open_checked`` refuses tars
whose sizes differ from the manifest; every session hashes the train and val tars before its first
step (the ranks split the work), re-checks them (a stat each, a re-hash of any that moved) before
every checkpoint and hashes them all again before ``final.pt`` (the loop calls
``pipeline.loaders.require_intact`` at those points). A changed byte stops the run naming the
file, and no checkpoint or final model is written from shards that differ.

Knows nothing of models, optimisers or the training step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from daat import config as config_mod
from daat import dist, keys
from daat.artifacts import Artifact, atomic_write_text, create_or_open, open_artifact
from daat.config import Config
from daat.errors import ShardFormatError, TrainingError
from daat.pipeline.shards import ShardArtifact, open_shards
from daat.train import checkpoint as ckpt
from daat.train import loggers
from daat.train.online_depth import check_policy, resolve_model
from daat.train.teacher import TeacherSource

CONFIG_FILE = "config.yaml"


def check_inputs(cfg: Config, shards_dir: str | Path) -> tuple[Config, ShardArtifact]:
    """The shards checked against ``cfg`` and ``cfg`` with its depth model resolved from them;
    raises before anything trains (trackers installed, splits present, image size, policy)."""
    loggers.check(cfg)
    shards = open_checked(cfg, shards_dir)
    cfg = resolve_model(cfg, shards)
    check_policy(cfg)
    return cfg, shards


def open_checked(cfg: Config, shards_dir: str | Path) -> ShardArtifact:
    """The shard artifact, checked against what this config needs from it."""
    shards = open_shards(shards_dir)
    for split in ("train", "val"):
        if split not in shards.splits or shards.split_size(split) == 0:
            raise ShardFormatError(
                f"{shards.path}: training needs a non-empty '{split}' split (has {shards.splits})"
            )
    stored = int(shards.image_policy["resize_short"])
    if stored < cfg.model.img_size:
        raise ShardFormatError(
            f"{shards.path}: images are stored with short side {stored} px, smaller than "
            f"model.img_size={cfg.model.img_size}; preprocess again with data.resize_short >= "
            f"{cfg.model.img_size} or lower model.img_size"
        )
    if not shards.saliency_encoding:
        raise ShardFormatError(f"{shards.path}: no depth saliency stored (needed for L_align)")
    return shards


def open_run(
    cfg: Config,
    shards: ShardArtifact,
    sources: list[TeacherSource | None],
    out: str | Path,
    info: dist.DistInfo,
) -> Artifact:
    """Rank 0 creates, resumes or reuses the run (holding its writer lock unless it is complete
    and intact); the other ranks open the same one. A complete run whose ``final.pt`` no longer
    matches its sha256 is reopened to write it again from its last checkpoint. ``sources``: the
    teacher and ``init_from`` runs (None where unused); their ids join the lineage."""
    lineage = list(
        dict.fromkeys([shards.id] + [i for s in sources if s is not None for i in s.lineage])
    )
    determining = {**keys.determining("run", cfg), "shards_content": shards.content_digest}

    def open_on_main() -> Artifact:
        art = create_or_open(
            out, "run", determining, config=config_mod.to_dict(cfg), lineage=lineage
        )
        problem = ckpt.RunCheckpoints(art).final_problem() if art.complete else None
        if problem is not None:
            art.lock()
            tqdm.write(
                f"warning: {art.path}: {problem}; not reusing it: {ckpt.FINAL} is written "
                "again from the run's last checkpoint",
                file=sys.stderr,
            )
            art.mark_incomplete()
        return art

    art = dist.main_first(open_on_main)
    path = dist.all_gather_objects(None if art is None else str(art.path))[0]
    return art or open_artifact(path, kind="run")


def check_resumable(
    state: dict,
    path: Path,
    shards: ShardArtifact,
    steps_per_epoch: int,
    cfg: Config,
    info: dist.DistInfo,
) -> None:
    """A checkpoint may continue this session only on the same shards, with the same number of
    processes and steps per epoch; another ``data.num_workers`` is a warning (the sample order
    differs from an uninterrupted run)."""
    if state["shards_id"] != shards.id:
        raise TrainingError(f"{path} was trained on {state['shards_id']}, not {shards.id}")
    if state["steps_per_epoch"] != steps_per_epoch or len(state["rng"]) != info.world_size:
        raise TrainingError(
            f"{path} was written by {len(state['rng'])} process(es) with "
            f"{state['steps_per_epoch']} steps/epoch; this run has {info.world_size} "
            f"with {steps_per_epoch}: resume with the same number of processes"
        )
    if state["num_workers"] != cfg.data.num_workers and info.is_main:
        tqdm.write(
            f"warning: {path.name} was written with data.num_workers="
            f"{state['num_workers']}, now {cfg.data.num_workers}: the sample "
            "order differs from an uninterrupted run (one stream per worker)",
            file=sys.stderr,
        )


def truncate_metrics(path: Path, step: int | None) -> None:
    """Drop lines written after the checkpoint we resume from (they will be written again);
    ``None``: no checkpoint, drop them all."""
    if path.is_file():
        keep = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and step is not None and json.loads(line)["step"] <= step
        ]
        atomic_write_text(path, "".join(line + "\n" for line in keep))
