"""Shared fixtures: a tiny synthetic data card, its shard artifact (built once per session with
the oracle depth) and tiny random depth models saved with ``save_pretrained``.

Other stages' tests reuse ``tiny_shards`` (an opened, complete ``ShardArtifact``: 10 classes,
30 train / 20 val samples of 64 px, shards of 8) instead of preprocessing again. Treat it as
read-only: tests that damage an artifact copy it first (``copy_artifact``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_SPEC = {"n_train_per_class": 3, "n_val_per_class": 2, "size": 64, "spurious": False, "seed": 0}


def write_synthetic_card(directory: Path, name: str = "tiny-synthetic", **spec) -> Path:
    """A synthetic data card YAML in ``directory`` (``spec`` overrides ``TINY_SPEC``)."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"name": name, "kind": "synthetic", "synthetic": {**TINY_SPEC, **spec}})
    )
    return path


def tiny_config(card: str | Path, *overrides: str, depth: str = "oracle"):
    """A Config for fast preprocessing of a small card (in-process decode, shards of 8)."""
    from daat import config

    return config.load(
        [],
        [
            f"data.card={card}",
            f"depth.model={depth}",
            "data.shard_size=8",
            "data.num_workers=0",
            "depth.batch_size=16",
            "device=cpu",
            *overrides,
        ],
    )


def copy_artifact(art_path: Path, dest: Path) -> Path:
    target = dest / Path(art_path).name
    shutil.copytree(art_path, target)
    return target


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    return write_synthetic_card(tmp_path_factory.mktemp("cards"))


@pytest.fixture(scope="session")
def tiny_shards(tiny_card, tmp_path_factory):
    """The tiny card preprocessed with the oracle depth: a complete ``ShardArtifact``."""
    from daat.pipeline import preprocess
    from daat.pipeline.shards import open_shards

    out = tmp_path_factory.mktemp("artifacts")
    return open_shards(preprocess.run(tiny_config(tiny_card), str(out)).path)


@pytest.fixture(scope="session")
def tiny_dpt_dir(tmp_path_factory) -> Path:
    from daat.tiny_models import save_tiny_dpt

    return Path(save_tiny_dpt(tmp_path_factory.mktemp("models") / "tiny-dpt"))


@pytest.fixture(scope="session")
def tiny_depth_anything_dir(tmp_path_factory) -> Path:
    from daat.tiny_models import save_tiny_depth_anything

    return Path(save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "tiny-da"))


# 2 steps of PGD-1 training on 16 of the tiny shards' images, 32 px, validation on 8.
TINY_RUN = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.samples_per_epoch=16",
    "train.epochs=1",
    "train.val_samples=8",
    "train.val_pgd_steps=1",
    "attack.steps=1",
    "data.num_workers=0",
    "train.log_every_steps=1",
    "train.ckpt_every_steps=100",
    "optim.warmup_epochs=0.5",
    "depth.target=cached",
    "device=cpu",
    "seed=1",
    "train.init_from=",
    "train.val_every_epochs=1",
]


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory) -> Path:
    """A complete ``daat train`` run (pgd-at, 10 classes, 32 px ViT) on ``tiny_shards``; the
    directory of the run artifact. Read-only, like ``tiny_shards``."""
    import torch

    from daat import config
    from daat.train import loop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # a patchify stem: plain timm can rebuild it (the export tests); ConvStem is tested apart
        cfg = config.load(["pgd-at", "synthetic"], TINY_RUN + ["model.stem=patch"])
        return loop.run(cfg, str(tiny_shards.path), str(tmp_path_factory.mktemp("runs"))).path
    finally:
        torch.set_num_threads(threads)
