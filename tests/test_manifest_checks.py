"""Manifests that check themselves: an edited class list, a shard dropped from a split or a wrong
``num_classes`` fails ``daat artifacts verify`` and stops training (edited by hand: the digest;
rewritten with a fresh digest: the shard facts' cross-checks); a file entry outside the artifact
is refused; evaluation reads only the shards in its run's lineage unless ``--shards`` names
others on purpose, which the evaluation records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_artifact, tiny_config, write_synthetic_card

from daat import artifacts as A
from daat import config as config_mod
from daat.errors import DaatError, ShardFormatError
from daat.eval import evaluate
from daat.pipeline import preprocess
from daat.pipeline.shards import open_shards
from daat.train import loop

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.samples_per_epoch=8",
    "train.epochs=1",
    "train.val_samples=2",
    "train.val_pgd_steps=1",
    "attack.steps=1",
    "data.num_workers=0",
    "depth.target=cached",
    "device=cpu",
    "train.init_from=",
    "train.val_every_epochs=1",
]
EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.n_figures=0",
    "eval.pgd_long_steps=2",
    "eval.eps_grid=[4/255]",
    "eval.autoattack=false",
    "eval.n_autoattack=0",
    "eval.n_samples=4",
    "eval.chunk_size=4",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(shards_dir, out):
    return loop.run(config_mod.load(["pgd-at", "synthetic"], RUN), str(shards_dir), str(out))


def verify_cli(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daat.cli", "artifacts", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def edit_by_hand(art_dir: Path, edit) -> None:
    """Change manifest.json as a text editor would: the digest is left as it was."""
    manifest = json.loads((art_dir / "manifest.json").read_text())
    edit(manifest)
    (art_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_and_reseal(art_dir: Path, edit) -> None:
    """Change the manifest through the API, so its digest is recomputed (a digest is no
    signature: the shard facts must still agree with each other)."""
    art = A.open_artifact(art_dir)
    edit(art.manifest)
    art.save()


def swap_classes(m):
    m["extra"]["classes"][0], m["extra"]["classes"][1] = (
        m["extra"]["classes"][1],
        m["extra"]["classes"][0],
    )


def drop_a_shard(m):
    m["extra"]["splits"]["train"]["shards"].pop()


def twelve_classes(m):
    m["extra"]["num_classes"] = 12


@pytest.mark.parametrize("edit", [swap_classes, drop_a_shard, twelve_classes])
def test_a_hand_edited_shard_manifest_fails_verify_and_training(tiny_shards, tmp_path, edit):
    copy = copy_artifact(tiny_shards.path, tmp_path)
    edit_by_hand(copy, edit)
    result = verify_cli(copy)
    assert result.returncode != 0 and "digest does not match" in result.stderr
    with pytest.raises(A.ArtifactError, match="digest does not match its fields"):
        train(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (drop_a_shard, "split train lists 3 shards, its manifest records 4 tars"),
        (twelve_classes, "num_classes is 12 but 10 classes are named"),
    ],
)
def test_a_resealed_manifest_whose_facts_disagree_is_refused(tiny_shards, tmp_path, edit, message):
    copy = copy_artifact(tiny_shards.path, tmp_path)
    edit_and_reseal(copy, edit)
    assert A.verify(copy) == []  # every file still matches ...
    result = verify_cli(copy)
    assert result.returncode != 0 and message in result.stderr  # ... but the facts do not
    with pytest.raises(ShardFormatError, match=message):
        train(copy, tmp_path / "out")


def test_a_file_entry_outside_the_artifact_is_refused(tiny_shards, tmp_path):
    copy = copy_artifact(tiny_shards.path, tmp_path)
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of any artifact\n")
    entry = {"sha256": A.sha256_file(outside), "bytes": outside.stat().st_size}
    edit_and_reseal(
        copy,
        lambda m: m["files"].__setitem__("../../../../../" + os.path.relpath(outside, "/"), entry),
    )
    with pytest.raises(A.ArtifactError, match=r"file entry '\.\./\.\./.*' points outside"):
        A.open_artifact(copy)
    problems = A.verify(copy)
    assert any("points outside the artifact" in p for p in problems)
    result = verify_cli(copy)
    assert result.returncode != 0 and "points outside the artifact" in result.stderr


def test_a_file_entry_that_is_a_symlink_out_of_the_artifact_fails_verify(tiny_shards, tmp_path):
    copy = copy_artifact(tiny_shards.path, tmp_path)
    outside = tmp_path / "elsewhere.tar"
    (copy / "val" / "val-00000.tar").rename(outside)
    (copy / "val" / "val-00000.tar").symlink_to(outside)
    assert A.verify(copy) == ["val/val-00000.tar: lies outside the artifact"]


def test_record_file_refuses_paths_that_leave_the_artifact(tmp_path):
    art = A.create_or_open(tmp_path, "demo", {"a": 1}, config={})
    with pytest.raises(A.ArtifactError, match="not a plain relative path"):
        art.record_file("../escape.bin")
    art.unlock()


# -- evaluation reads the run's own shards ----------------------------------------------------
@pytest.fixture(scope="module")
def other_shards(tmp_path_factory):
    """Another synthetic data set with the same 10 classes (another seed): another shard id."""
    root = tmp_path_factory.mktemp("other")
    card = write_synthetic_card(root, name="other-synthetic", seed=1)
    return open_shards(preprocess.run(tiny_config(card), str(root / "artifacts")).path)


@pytest.fixture(scope="module")
def tiny_run(tiny_shards, tmp_path_factory):
    return train(tiny_shards.path, tmp_path_factory.mktemp("runs"))


def test_evaluation_refuses_shards_outside_the_runs_lineage(tiny_run, other_shards, tmp_path):
    run_dir = copy_artifact(tiny_run.path, tmp_path / "runs")
    edit_and_reseal(run_dir, lambda m: m["extra"].__setitem__("shards_dir", str(other_shards.path)))
    with pytest.raises(
        DaatError,
        match=rf"holds {other_shards.id}.*was trained on "
        rf"{tiny_run.manifest['lineage'][0]}.*--shards",
    ):
        evaluate.run(str(run_dir), None, [], EVAL, str(tmp_path / "evals"))
    assert not list((tmp_path / "evals").glob("eval-*"))


def test_shards_given_on_purpose_are_evaluated_and_recorded(
    tiny_run, other_shards, tiny_shards, tmp_path
):
    own = evaluate.run(str(tiny_run.path), None, [], EVAL, str(tmp_path / "evals"))
    other = evaluate.run(
        str(tiny_run.path), None, [], EVAL, str(tmp_path / "evals"), shards=str(other_shards.path)
    )
    assert other.path != own.path
    assert other.manifest["lineage"] == [tiny_run.id, other_shards.id]
    assert own.manifest["lineage"] == [tiny_run.id, tiny_shards.id]
    summary = json.loads((other.path / "summary.json").read_text())
    assert summary["shards"]["id"] == other_shards.id
    assert summary["shards"]["source"].startswith("--shards")
    assert json.loads((own.path / "summary.json").read_text())["shards"]["source"] == "run lineage"


def test_shards_with_other_classes_are_refused_even_on_purpose(tiny_run, other_shards, tmp_path):
    renamed = copy_artifact(other_shards.path, tmp_path)
    edit_and_reseal(renamed, swap_classes)
    with pytest.raises(DaatError, match="same classes in the same order"):
        evaluate.run(
            str(tiny_run.path), None, [], EVAL, str(tmp_path / "evals"), shards=str(renamed)
        )
