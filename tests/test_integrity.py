"""Shards and checkpoints that changed after they were written are never trained on, evaluated,
reused or resumed from: a flipped label or JPEG byte, a truncated tar (training and evaluation
refuse, naming the file), a byte changed mid-run (no further checkpoint), shards with other
content under the same id (another run key), a truncated ``final.pt`` (rewritten, not reused;
evaluation refuses it) and a damaged ``latest`` checkpoint (the newest intact one is used)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import copy_artifact
from test_train_resume import E2E

from daat import config as config_mod
from daat.artifacts import ArtifactError, open_artifact, verify
from daat.errors import ShardFormatError, TrainingError
from daat.eval import evaluate
from daat.pipeline.shards import open_shards
from daat.train import checkpoint as ckpt
from daat.train import loop

RUN = E2E  # 4 steps per epoch (32 samples, batch 8), 1-step PGD, 10 val samples with PGD-2
EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.n_figures=0",
    "eval.pgd_long_steps=2",
    "eval.eps_grid=[4/255]",
    "eval.autoattack=false",
    "eval.n_autoattack=0",
    "eval.n_samples=8",
    "eval.chunk_size=8",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(shards_dir, out, *overrides):
    cfg = config_mod.load(["pgd-at", "synthetic"], RUN + list(overrides))
    return loop.run(cfg, str(shards_dir), str(out))


def member_offset(tar_path: Path, suffix: str) -> tuple[int, int]:
    """(offset of the data, size) of the first member whose name ends with ``suffix``."""
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return member.offset_data, member.size


def flip_byte(path: Path, offset: int, new: bytes | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = new[0] if new is not None else data[offset] ^ 0x20
    path.write_bytes(bytes(data))


@pytest.fixture()
def damaged_copy(tiny_shards, tmp_path):
    return copy_artifact(tiny_shards.path, tmp_path / "copy")


# -- shards ------------------------------------------------------------------------------------
def test_a_flipped_label_byte_stops_training_before_any_step_naming_the_tar(damaged_copy, tmp_path):
    tar = damaged_copy / "train" / "train-00001.tar"
    offset, size = member_offset(tar, ".cls")
    assert size == 1
    flip_byte(tar, offset, b"7")  # label 0..9 -> 7: the tar stays a valid tar
    with pytest.raises(ShardFormatError, match=r"train/train-00001\.tar: sha256"):
        train(damaged_copy, tmp_path / "out")
    assert not list((tmp_path / "out").glob("run-*/checkpoints/*.pt"))


def test_a_flipped_jpeg_byte_stops_training_and_evaluation(damaged_copy, tiny_shards, tmp_path):
    run = train(tiny_shards.path, tmp_path / "out", "train.epochs=1")
    tar = damaged_copy / "val" / "val-00000.tar"
    offset, size = member_offset(tar, ".jpg")
    flip_byte(tar, offset + size // 2)
    with pytest.raises(ShardFormatError, match=r"val/val-00000\.tar: sha256"):
        train(damaged_copy, tmp_path / "out2")
    with pytest.raises(ShardFormatError, match=r"val/val-00000\.tar: sha256"):
        evaluate.run(
            str(run.path), None, [], EVAL, str(tmp_path / "evals"), shards=str(damaged_copy)
        )
    assert not list((tmp_path / "evals").glob("eval-*/summary.json"))


def test_a_truncated_tar_is_refused_when_the_shards_are_opened(damaged_copy, tmp_path):
    tar = damaged_copy / "train" / "train-00003.tar"
    os.truncate(tar, tar.stat().st_size - 1024)
    with pytest.raises(
        ShardFormatError,
        match=r"train/train-00003\.tar: \d+ bytes, manifest "
        r"says \d+ \(truncated",
    ):
        open_shards(damaged_copy)
    with pytest.raises(ShardFormatError, match=r"train-00003\.tar"):
        train(damaged_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the run artifact existed


def test_a_byte_changed_mid_run_stops_it_before_the_next_checkpoint(
    damaged_copy, tmp_path, monkeypatch
):
    real_step, tar = loop.train_step, damaged_copy / "train" / "train-00000.tar"

    def step_then_damage(state, batch, sched):
        if sched.step == 1:
            offset, _ = member_offset(tar, ".cls")
            flip_byte(tar, offset, b"9")
        return real_step(state, batch, sched)

    monkeypatch.setattr(loop, "train_step", step_then_damage)
    with pytest.raises(
        ShardFormatError,
        match=r"train-00000\.tar.*before checkpoint "
        r"step-00000003\.pt",
    ):
        train(damaged_copy, tmp_path / "out")
    (run_dir,) = (tmp_path / "out").glob("run-*")
    assert not list((run_dir / "checkpoints").glob("*.pt"))


def test_other_shard_content_under_the_same_id_trains_under_another_run_key(
    damaged_copy, tiny_shards, tmp_path
):
    """Shards re-recorded after a label edit keep their id (same config) but not their content
    digest, so they can never share a run with the clean shards."""
    tar = damaged_copy / "train" / "train-00001.tar"
    offset, _ = member_offset(tar, ".cls")
    flip_byte(tar, offset, b"7")
    art = open_artifact(damaged_copy)
    art.record_file(
        "train/train-00001.tar", samples=art.manifest["files"]["train/train-00001.tar"]["samples"]
    )
    art.save()
    assert verify(damaged_copy) == [] and art.id == tiny_shards.id
    one = ["train.epochs=1", "train.samples_per_epoch=8", "train.val_samples=2"]
    clean = train(tiny_shards.path, tmp_path / "out", *one)
    relabelled = train(damaged_copy, tmp_path / "out", *one)
    assert clean.path != relabelled.path
    assert clean.manifest["lineage"] == relabelled.manifest["lineage"] == [tiny_shards.id]


# -- checkpoints -------------------------------------------------------------------------------
def test_a_truncated_final_pt_is_rewritten_not_reused_and_evaluation_refuses_it(
    tiny_shards, tmp_path, capsys
):
    run = train(tiny_shards.path, tmp_path / "out")
    final = run.path / "checkpoints" / ckpt.FINAL
    good = final.read_bytes()
    weights = ckpt.load(final)["model"]
    final.write_bytes(good[: len(good) // 2])
    with pytest.raises(TrainingError, match=r"checkpoints/final\.pt: \d+ bytes"):
        evaluate.run(str(run.path), None, [], EVAL, str(tmp_path / "evals"))
    again = train(tiny_shards.path, tmp_path / "out")
    assert again.path == run.path and again.complete
    err = capsys.readouterr().err
    assert "checkpoints/final.pt: " in err and "not reusing it" in err and verify(run.path) == []
    for name, value in ckpt.load(final)["model"].items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)


def test_a_damaged_latest_checkpoint_is_never_resumed_from(
    tiny_shards, tmp_path, monkeypatch, capsys
):
    """Stopped after epoch 1 (latest = epoch-0001.pt), that file then damaged: the rerun resumes
    from the intact step-00000003.pt instead and ends with the uninterrupted run's weights."""
    whole = train(tiny_shards.path, tmp_path / "whole")
    real = ckpt.write_latest

    class Stop(Exception):
        pass

    def stop_after_epoch_one(ckpt_dir, name):
        real(ckpt_dir, name)
        if name == "epoch-0001.pt":
            raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_latest", stop_after_epoch_one)
        with pytest.raises(Stop):
            train(tiny_shards.path, tmp_path / "split")
    (run_dir,) = (tmp_path / "split").glob("run-*")
    damaged = run_dir / "checkpoints" / "epoch-0001.pt"
    flip_byte(damaged, damaged.stat().st_size // 2)
    steps_run, real_step = [], loop.train_step
    monkeypatch.setattr(
        loop,
        "train_step",
        lambda st, b, sched: steps_run.append(sched.step) or real_step(st, b, sched),
    )
    resumed = train(tiny_shards.path, tmp_path / "split")
    assert steps_run == [3, 4, 5, 6, 7]
    err = capsys.readouterr().err
    assert "epoch-0001.pt: sha256" in err and "resuming from step-00000003.pt instead" in err
    a, b = (
        ckpt.load(whole.path / "checkpoints" / "final.pt")["model"],
        ckpt.load(resumed.path / "checkpoints" / "final.pt")["model"],
    )
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_no_intact_checkpoint_is_a_clear_error(tiny_shards, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    real = ckpt.write_latest

    def stop_at_three(ckpt_dir, name):
        real(ckpt_dir, name)
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_latest", stop_at_three)
        with pytest.raises(Stop):
            train(tiny_shards.path, tmp_path / "out")
    (run_dir,) = (tmp_path / "out").glob("run-*")
    os.truncate(run_dir / "checkpoints" / "step-00000003.pt", 100)
    with pytest.raises(
        TrainingError,
        match=r"no intact checkpoint to resume from .*"
        r"step-00000003\.pt: 100 bytes.*delete .*latest",
    ):
        train(tiny_shards.path, tmp_path / "out")


def test_checkpoint_entries_follow_pruning(tiny_shards, tmp_path):
    run = train(
        tiny_shards.path,
        tmp_path / "out",
        "train.keep_step_checkpoints=1",
        "train.keep_epoch_checkpoints=1",
    )
    on_disk = {f"checkpoints/{p.name}" for p in (run.path / "checkpoints").glob("*.pt")}
    recorded = {rel for rel in run.manifest["files"] if rel.startswith("checkpoints/")}
    assert (
        recorded
        == on_disk
        == {"checkpoints/final.pt", "checkpoints/epoch-0002.pt", "checkpoints/step-00000006.pt"}
    )
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["extra"]["steps"] = 99
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="digest does not match"):
        open_artifact(run.path)
