"""One writer per artifact: a second trainer or preprocess on the same artifact fails at once
naming the holder's pid and host; the lock of a process killed with -9 is taken over; the same
process may take a lock it holds again (the run:standard teacher inside a run)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from daat import artifacts as A
from daat import config as config_mod
from daat.locks import LOCK_FILE, ArtifactInUse, WriterLock
from daat.pipeline import preprocess
from daat.train import loop

RUN = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.samples_per_epoch=8",
    "train.epochs=2",
    "train.val_samples=2",
    "train.val_pgd_steps=1",
    "attack.steps=1",
    "data.num_workers=0",
    "depth.target=cached",
    "device=cpu",
    "train.init_from=",
    "train.val_every_epochs=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def start_holder(code: str, out: Path, pattern: str, timeout: float = 240):
    """Run ``code`` in a child Python and wait until it holds a lock under ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while True:
        held = [p for p in out.glob(f"{pattern}/{LOCK_FILE}") if p.read_text().strip()]
        if held:
            return proc, held[0].parent
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the holder never took its lock: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)


def kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


SLOW_TRAINER = """
    import sys, time
    from daat import config
    from daat.train import loop
    real = loop.train_step
    loop.train_step = lambda *a: time.sleep(3600) or real(*a)  # holds the run, never finishes
    loop.run(config.load(["pgd-at", "synthetic"], {run}), {shards!r}, {out!r})
"""


def test_a_second_trainer_fails_at_once_and_a_killed_ones_lock_is_taken_over(
    tiny_shards, tmp_path, capsys
):
    out = tmp_path / "out"
    code = SLOW_TRAINER.format(run=RUN, shards=str(tiny_shards.path), out=str(out))
    proc, run_dir = start_holder(code, out, "run-*")
    try:
        start = time.perf_counter()
        cfg = config_mod.load(["pgd-at", "synthetic"], RUN)
        with pytest.raises(
            ArtifactInUse,
            match=rf"{run_dir.name} is in use by pid {proc.pid} "
            rf"\(host {socket.gethostname()}\)",
        ):
            loop.run(cfg, str(tiny_shards.path), str(out))
        assert time.perf_counter() - start < 30  # at once: no training, no waiting
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        kill(proc)
    art = loop.run(cfg, str(tiny_shards.path), str(out))  # the killed holder's lock is stale
    assert art.path == run_dir and art.complete
    assert f"taking over the lock of pid {proc.pid}" in capsys.readouterr().err


SLOW_PREPROCESS = """
    import time
    from daat import config
    from daat.pipeline import preprocess
    preprocess._process_split = lambda *a: time.sleep(3600)  # holds the shards, never finishes
    preprocess.run(config.load([], {overrides}), {out!r})
"""


def test_a_second_preprocess_is_refused_at_once(tiny_card, tmp_path):
    out = tmp_path / "out"
    cfg = tiny_config(tiny_card)
    overrides = [
        f"data.card={tiny_card}",
        "depth.model=oracle",
        "data.shard_size=8",
        "data.num_workers=0",
        "depth.batch_size=16",
        "device=cpu",
    ]
    assert config_mod.load([], overrides) == cfg
    proc, shards_dir = start_holder(
        SLOW_PREPROCESS.format(overrides=overrides, out=str(out)), out, "shards-*"
    )
    try:
        with pytest.raises(
            ArtifactInUse,
            match=rf"{shards_dir.name} is in use by pid "
            rf"{proc.pid}",
        ):
            preprocess.run(cfg, str(out))
        assert not list(shards_dir.glob("*/*.tar"))
    finally:
        kill(proc)
    art = preprocess.run(cfg, str(out))
    assert art.path == shards_dir and A.verify(art.path) == []


def test_the_lock_is_reentrant_in_one_process_and_released_cleanly(tmp_path):
    first = WriterLock.acquire(tmp_path)
    again = WriterLock.acquire(tmp_path)
    assert again is first
    again.release()
    child = "import sys; from daat.locks import WriterLock; WriterLock.acquire(sys.argv[1])"
    busy = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert busy.returncode != 0 and f"in use by pid {os.getpid()}" in busy.stderr
    first.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release leaves nothing stale
    free = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert free.returncode == 0 and "taking over" not in free.stderr


def test_a_complete_artifact_is_reused_while_another_process_holds_its_lock(tmp_path):
    art = A.create_or_open(tmp_path, "demo", {"a": 1}, config={})
    art.mark_complete()
    art.unlock()
    code = f"""
        from daat.locks import WriterLock
        import time
        WriterLock.acquire({str(art.path)!r})
        time.sleep(3600)
    """
    proc, _ = start_holder(code, tmp_path, "demo-*")
    try:
        again = A.create_or_open(tmp_path, "demo", {"a": 1}, config={})
        assert again.complete and again.path == art.path
        with pytest.raises(ArtifactInUse, match=f"in use by pid {proc.pid}"):
            again.lock()
    finally:
        kill(proc)
