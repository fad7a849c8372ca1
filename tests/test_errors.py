"""Errors a user can fix arrive as one line naming the cause and the fix: a read-only --out, a
data-loader worker's error, a full disk while training, an offline or mismatched teacher, a
repeated key in a data card. Every command also prints the config it resolved."""

from __future__ import annotations

import errno
import os
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_evaluate import memorised  # noqa: F401 (fixture)
from test_train_resume import E2E

from daat import config as config_mod
from daat.cli import main
from daat.errors import DaatError, DataError, ShardFormatError, one_line, storage_problem
from daat.train import checkpoint as ckpt

Usage = namedtuple("Usage", "total used free")
TINY_EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.n_figures=0",
    "eval.pgd_long_steps=2",
    "eval.eps_grid=[4/255]",
    "eval.autoattack=false",
    "eval.chunk_size=20",
]


def sets(*assignments: str) -> list[str]:
    return [a for s in assignments for a in ("--set", s)]


def single_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    # the line may follow a progress bar's last redraw ('...\r'): the error is what follows it
    lines = [
        line[line.index("error: ") :] for line in result.stderr.splitlines() if "error: " in line
    ]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: a 0555 folder, or (root ignores modes) sysfs."""
    if os.geteuid() != 0:
        path = tmp_path / "locked"
        path.mkdir()
        path.chmod(0o555)
        return path / "out"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no read-only directory to try")
    return Path("/sys/kernel/daat-test-out")


def test_a_read_only_out_is_one_line_before_any_work(tiny_card, tmp_path):
    out = read_only_dir(tmp_path)
    result = CliRunner().invoke(
        main, ["preprocess", "--card", str(tiny_card), "--depth", "oracle", "--out", str(out)]
    )
    line = single_error_line(result)
    assert f"--out {out} is not writable" in line and "choose a directory" in line


def test_a_data_loader_worker_error_is_one_line(memorised, tmp_path, monkeypatch):  # noqa: F811
    run_dir, _, _ = memorised
    from daat.pipeline import loaders

    def broken(raw):
        raise ShardFormatError(f"{raw['__url__']}:{raw['__key__']}: undecodable sample: boom")

    monkeypatch.setattr(loaders, "decode", broken)  # the forked worker inherits the patch
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--run",
            str(run_dir),
            "--out",
            str(tmp_path),
            *sets(*TINY_EVAL, "data.num_workers=1"),
        ],
    )
    line = single_error_line(result)
    assert line.startswith("error: ") and ".tar:val-" in line
    assert line.endswith("undecodable sample: boom (in a data-loader worker)")


def test_one_line_keeps_a_foreign_worker_error_short():
    worker = RuntimeError(
        "Caught ValueError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: bad crop size"
    )
    assert one_line(worker) == "bad crop size (in a data-loader worker)"
    assert one_line(DaatError("a\n  b")) == "a b"


def test_a_full_disk_while_checkpointing_names_the_file(tmp_path, monkeypatch):
    def full_disk(state, f):  # checkpoint.save hands torch.save an open file
        f.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs "
            "598\nbasic_ios::clear: iostream error"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 100))
    target = tmp_path / "checkpoints" / "step-00000003.pt"
    with pytest.raises(OSError) as caught:
        ckpt.save(target, {"model": {"w": torch.zeros(1024)}})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not list(target.parent.iterdir())  # the partial temp file is gone
    line = storage_problem(caught.value)
    assert line.startswith(f"cannot write {target}: No space left on device")
    assert "(ENOSPC)" in line and "rerun the same command" in line


def test_train_on_a_full_disk_says_so_in_one_line(tiny_shards, tmp_path, monkeypatch):
    real_save = torch.save

    def save(state, path, *args, **kwargs):
        if "step-" in str(path) or "epoch-" in str(path):
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 0))
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            "pgd-at",
            "--config",
            "synthetic",
            "--shards",
            str(tiny_shards.path),
            "--out",
            str(tmp_path),
            *sets(*E2E),
        ],
    )
    line = single_error_line(result)
    assert "checkpoints/step-00000003.pt: No space left on device" in line
    assert "ENOSPC" in line and "basic_ios" not in line


def test_an_offline_teacher_fails_at_once_naming_the_ways_out(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    from daat.teacher_model import build_teacher

    name = "vit_small_patch14_dinov2.lvd142m"
    if isinstance(try_to_load_from_cache(f"timm/{name}", "model.safetensors"), str):
        pytest.skip(f"{name} is in this machine's Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DaatError) as caught:
        build_teacher(name, 56, (4, 4))
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "loss.teacher: run:standard" in message
    assert "\n" not in message


def test_teacher_weights_of_another_architecture_name_loss_teacher_arch(tmp_path):
    import timm
    from safetensors.torch import save_file

    from daat.train import teacher as teacher_mod

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=0)  # records no architecture in the file
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    cfg = config_mod.load(["daat", "synthetic"], E2E[:5] + [f"loss.teacher={weights}"])
    source = teacher_mod.TeacherSource(str(weights), None, ())
    with pytest.raises(DaatError) as caught:
        teacher_mod.load(source, cfg, torch.device("cpu"))
    message = str(caught.value)
    assert "do not fit the architecture vit_base_patch14_dinov2" in message
    assert "loss.teacher_arch" in message and "\n" not in message and len(message) < 400
    cfg.loss.teacher_arch = "test_vit"
    teacher = teacher_mod.load(source, cfg, torch.device("cpu"))
    assert teacher.embed_dim == 64
    assert teacher.module(torch.rand(1, 3, 32, 32)).shape == (1, 1 + 16, 64)


def test_a_repeated_key_in_a_data_card_is_an_error(tmp_path):
    from daat.cards import load_card

    card = tmp_path / "twice.yaml"
    card.write_text("name: a\nkind: synthetic\nname: b\nsynthetic: {n_train_per_class: 1}\n")
    with pytest.raises(DataError, match=r"twice.yaml.*'name' appears twice \(lines 1 and 3\)"):
        load_card(card)


def test_preprocess_and_evaluate_print_their_resolved_config(
    tiny_card,
    memorised,  # noqa: F811
    tmp_path,
):
    runner = CliRunner()
    pre = runner.invoke(
        main,
        [
            "preprocess",
            "--card",
            str(tiny_card),
            "--out",
            str(tmp_path / "a"),
            *sets("data.num_workers=0", "device=cpu", "data.shard_size=8"),
        ],
    )
    assert pre.exit_code == 0, pre.output
    assert "# resolved config (preprocess tiny-synthetic)" in pre.stderr
    assert "  model: oracle\n" in pre.stderr  # depth.model unset: the synthetic card's oracle
    run_dir, _, _ = memorised
    ev = runner.invoke(
        main, ["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "b"), *sets(*TINY_EVAL)]
    )
    assert ev.exit_code == 0, ev.output
    assert "# resolved config (eval-" in ev.stderr and "  eps: 0.0157 (4/255)\n" in ev.stderr


def test_storage_problems_name_path_cause_and_fix():
    denied = storage_problem(PermissionError(errno.EACCES, "Permission denied", "/data/x.tar"))
    assert denied == (
        "cannot access /data/x.tar: Permission denied (EACCES); fix that path's "
        "permissions or choose a writable --out"
    )
    full = storage_problem(OSError(errno.ENOSPC, "No space left on device"), "artifacts")
    assert full.startswith("cannot write artifacts: No space left on device (ENOSPC); free space")
    assert storage_problem(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
