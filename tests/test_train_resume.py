"""End-to-end ``daat train`` on a tiny synthetic shard artifact: metrics, run artifact, teacher
schedule, NaN stop, exact resume (epoch boundary and mid-epoch), and -- marked slow -- kill -9 of
the CLI and torchrun with two gloo processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from daat import config as config_mod
from daat.artifacts import open_artifact, verify
from daat.errors import ShardFormatError, TrainingError
from daat.teacher_model import Teacher, save_random_teacher
from daat.train import checkpoint as ckpt
from daat.train import loop, standard_first
from daat.train.schedules import lr_at

REPO = Path(__file__).resolve().parents[1]
# 4 steps per epoch (32 samples, batch 8), 1-step PGD, 10 val samples with PGD-2.
E2E = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.samples_per_epoch=32",
    "train.epochs=2",
    "train.val_samples=10",
    "train.val_pgd_steps=2",
    "attack.steps=1",
    "data.num_workers=0",
    "train.log_every_steps=2",
    "train.ckpt_every_steps=3",
    "optim.warmup_epochs=0.5",
    "depth.target=cached",
    "device=cpu",
    "train.init_from=",
    "train.val_every_epochs=1",
]
STEPS_PER_EPOCH = 4
EPOCH_FIELDS = {
    "kind",
    "epoch",
    "step",
    "loss",
    "ce",
    "align",
    "feat",
    "zero_grad",
    "lr",
    "gamma",
    "s",
    "eps",
    "img_per_s",
    "wall_s",
    "val_n",
    "val_clean_acc",
    "val_pgd_acc",
    "val_pgd_steps",
    "val_eps",
    "val_cos_AG",
}


class Stop(Exception):
    """Simulates a crash right after a given checkpoint became ``latest``."""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 cores shared by everything
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tiny_shards):
    """conftest's session-wide tiny shard artifact: 30 train / 20 val synthetic images."""
    return tiny_shards


def cfg_for(*presets, overrides=()):
    return config_mod.load(list(presets), E2E + list(overrides))


def train(shards, out, *presets, overrides=()):
    """As ``daat train``: the ``run:standard`` stand-in first (where one acts), then the run."""
    cfg = standard_first.resolve(cfg_for(*presets, overrides=overrides), shards.path, out)
    return loop.run(cfg, str(shards.path), str(out))


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / loop.METRICS).read_text().splitlines()]


def stop_after(monkeypatch, name):
    real = ckpt.write_latest

    def write_latest(ckpt_dir, written):
        real(ckpt_dir, written)
        if written == name:
            raise Stop(written)

    monkeypatch.setattr(ckpt, "write_latest", write_latest)


def stop_before_latest(monkeypatch, name):
    """Crash after checkpoint ``name`` is on disk but before ``latest`` names it."""
    real = ckpt.write_latest

    def write_latest(ckpt_dir, written):
        if written == name:
            raise Stop(written)
        real(ckpt_dir, written)

    monkeypatch.setattr(ckpt, "write_latest", write_latest)


def final_weights(run_dir):
    return ckpt.load(Path(run_dir) / "checkpoints" / ckpt.FINAL)["model"]


# -- a complete run --------------------------------------------------------------------------
def test_pgd_at_run_fills_metrics_manifest_and_checkpoints(shards, tmp_path, monkeypatch):
    art = train(shards, tmp_path, "pgd-at", "synthetic")
    assert art.complete and verify(art.path) == []
    lines = metrics(art.path)
    steps = [r for r in lines if r["kind"] == "step"]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(0, 4), (1, 8)]
    for r in epochs:
        assert set(r) == EPOCH_FIELDS
        assert r["val_n"] == 10 and r["val_pgd_steps"] == 2
        assert 0 <= r["val_pgd_acc"] <= r["val_clean_acc"] <= 1
        assert 0 < r["val_cos_AG"] < 1 and r["ce"] > 0 and r["img_per_s"] > 0
        assert r["align"] == 0 and r["feat"] == 0 and r["gamma"] == 0  # pgd-at: CE only
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, 8, 2, 1e-3, 1e-6))
    assert steps[0]["loss"] == pytest.approx(steps[0]["ce"])
    m = art.manifest
    assert m["lineage"] == [shards.id]
    kept = ["epoch-0001.pt", "epoch-0002.pt", "step-00000003.pt", "step-00000006.pt"]
    assert set(m["files"]) == {
        "checkpoints/final.pt",
        "config.yaml",
        "metrics.jsonl",
        *(f"checkpoints/{name}" for name in kept),
    }
    assert m["files"]["checkpoints/step-00000006.pt"]["step"] == 6
    assert m["extra"]["steps"] == 8 and m["extra"]["depth_model"] == "oracle"
    assert m["extra"]["final_metrics"]["val_clean_acc"] == epochs[-1]["val_clean_acc"]
    saved = config_mod.from_dict(yaml.safe_load((art.path / "config.yaml").read_text()))
    expected = cfg_for("pgd-at", "synthetic")
    assert expected.depth.model is None  # unset: the run takes the shards' depth model
    expected.depth.model = "oracle"
    assert saved == expected == config_mod.from_dict(m["config"])
    names = sorted(p.name for p in (art.path / "checkpoints").iterdir())
    assert names == [
        "epoch-0001.pt",
        "epoch-0002.pt",
        "final.pt",
        "latest",
        "step-00000003.pt",
        "step-00000006.pt",
    ]
    # the same command again returns the finished run without building anything
    monkeypatch.setattr(loop, "build_state", lambda *a, **k: pytest.fail("retrained"))
    again = train(shards, tmp_path, "pgd-at", "synthetic", overrides=["train.log_every_steps=1"])
    assert again.path == art.path and metrics(art.path) == lines


def test_daat_cached_never_loads_depth_and_teacher_only_in_first_20_percent(
    shards, tmp_path, monkeypatch
):
    import daat.depth

    monkeypatch.setattr(
        daat.depth,
        "load_depth_model",
        lambda *a, **k: pytest.fail("cached target loaded the depth model"),
    )
    calls = []
    real_forward = Teacher.forward
    monkeypatch.setattr(
        Teacher, "forward", lambda self, x: calls.append(x.shape[0]) or real_forward(self, x)
    )
    teacher = save_random_teacher(
        tmp_path / "teacher.safetensors",
        embed_dim=24,
        depth=1,
        num_heads=2,
        patch_size=8,
        img_size=32,
    )
    art = train(
        shards,
        tmp_path / "out",
        "daat",
        "synthetic",
        overrides=[
            "train.epochs=5",
            f"loss.teacher={teacher}",
            "loss.gamma0=1.0",
            "depth.target=cached",
        ],
    )
    # gamma(t) = 1 - t / (0.2 * 5): 1 in epoch 0, 0 from epoch 1 on -> one epoch of teacher calls
    assert calls == [8] * STEPS_PER_EPOCH
    epochs = [r for r in metrics(art.path) if r["kind"] == "epoch"]
    assert [r["gamma"] for r in epochs] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert epochs[0]["feat"] > 0 and all(r["feat"] == 0 for r in epochs[1:])
    assert all(0 < r["align"] < 1 for r in epochs)
    assert epochs[0]["loss"] == pytest.approx(
        epochs[0]["ce"] + 0.1 * epochs[0]["align"] + epochs[0]["feat"], rel=1e-6
    )
    final = ckpt.load(art.path / "checkpoints" / ckpt.FINAL)
    assert final["projection"]["proj.weight"].shape == (24, 32)  # student 32 -> teacher 24
    assert art.manifest["extra"]["teacher"] == str(teacher)
    assert art.manifest["extra"]["online_depth_steps"] == 0


def test_online_target_runs_a_real_depth_model_every_step(shards, tmp_path, tiny_dpt_dir):
    overrides = [
        "train.epochs=1",
        "loss.gamma0=0",
        "depth.target=online",
        f"depth.model={tiny_dpt_dir}",
    ]
    with pytest.raises(config_mod.ConfigError, match="depth.allow_other_model"):
        train(shards, tmp_path, "daat", "synthetic", overrides=overrides)  # oracle shards
    art = train(
        shards,
        tmp_path,
        "daat",
        "synthetic",
        overrides=overrides + ["depth.allow_other_model=true"],
    )
    extra = art.manifest["extra"]
    assert extra["online_depth_steps"] == STEPS_PER_EPOCH
    assert extra["depth_model"].startswith(str(tiny_dpt_dir))  # the loaded model's id
    assert extra["shards_depth_model"] == "oracle"  # the run records the difference
    assert art.manifest["config"]["depth"]["allow_other_model"] is True
    (epoch,) = [r for r in metrics(art.path) if r["kind"] == "epoch"]
    assert 0 < epoch["align"] < 1


def test_run_standard_teacher_is_trained_once_and_reused(shards, tmp_path):
    overrides = ["loss.teacher=run:standard", "loss.gamma0=1.0", "train.epochs=1"]
    art = train(shards, tmp_path, "daat", "synthetic", overrides=overrides)
    runs = {a.manifest["config"]["preset"]: a for a in map(open_artifact, tmp_path.glob("run-*"))}
    assert set(runs) == {"standard", "daat+synthetic"}
    standard = runs["standard"]
    assert standard.complete and art.manifest["lineage"] == [shards.id, standard.id]
    assert art.manifest["extra"]["teacher"] == standard.id
    assert standard.manifest["config"]["attack"]["steps"] == 0
    stamp = standard.manifest["updated"]
    other = train(shards, tmp_path, "daat", "synthetic", overrides=overrides + ["loss.lam=0.3"])
    assert other.path != art.path and other.manifest["lineage"][1] == standard.id
    assert open_artifact(standard.path).manifest["updated"] == stamp  # reused, not retrained
    assert len(list(tmp_path.glob("run-*"))) == 3
    # the run records which standard run it used; naming that run directly is the same run
    assert art.manifest["config"]["loss"]["teacher"] == f"run:{standard.id}"
    direct = overrides[1:] + [f"loss.teacher=run:{standard.path}"]
    assert train(shards, tmp_path, "daat", "synthetic", overrides=direct).path == art.path


def test_teacher_and_init_resolution_never_train(shards, tmp_path):
    for overrides in (
        ["loss.teacher=run:standard", "loss.gamma0=1.0"],
        ["train.init_from=run:standard"],
    ):
        key = overrides[0].split("=")[0]
        with pytest.raises(TrainingError, match=rf"^{key}=run:standard .*standard_first.resolve"):
            loop.run(
                cfg_for("pgd-at", "synthetic", overrides=overrides), str(shards.path), tmp_path
            )
        assert not list(tmp_path.glob("run-*"))  # refused before any run was created
    # where run:standard cannot act, nothing is trained and the config comes back as given
    inert = cfg_for(
        "standard", "synthetic", overrides=["attack.steps=0", "train.init_from=run:standard"]
    )
    assert standard_first.acting_refs(inert) == []
    assert standard_first.resolve(inert, shards.path, tmp_path) is inert
    assert not list(tmp_path.glob("run-*"))


def test_eps_warmup_is_logged_and_written_in_the_config(shards, tmp_path):
    art = train(shards, tmp_path, "pgd-at", "synthetic", overrides=["attack.eps_warmup_epochs=1"])
    steps = [r for r in metrics(art.path) if r["kind"] == "step"]
    # logged after steps 2, 4, 6, 8 (0-based step 1, 3, 5, 7 of a 4-step warm-up)
    assert [r["eps"] for r in steps] == pytest.approx([2 / 255, 4 / 255, 4 / 255, 4 / 255])
    assert art.manifest["config"]["attack"]["eps_warmup_epochs"] == 1.0


def test_val_every_epochs_validates_every_nth_and_the_last_epoch(shards, tmp_path):
    art = train(
        shards,
        tmp_path,
        "standard",
        "synthetic",
        overrides=["attack.steps=0", "train.epochs=3", "train.val_every_epochs=2"],
    )
    epochs = [r for r in metrics(art.path) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert ["val_clean_acc" in r for r in epochs] == [False, True, True]  # epoch 2 is the last
    assert all(r["eps"] == 0.0 for r in epochs)  # standard training: no attack
    assert set(epochs[0]) == EPOCH_FIELDS - {k for k in EPOCH_FIELDS if k.startswith("val_")}
    final = art.manifest["extra"]["final_metrics"]
    assert final == {k: epochs[-1][k] for k in final} and final["val_n"] == 10


def test_init_from_a_run_starts_from_its_final_weights(shards, tmp_path):
    source = train(
        shards, tmp_path, "standard", "synthetic", overrides=["attack.steps=0", "train.epochs=1"]
    )
    spec = f"train.init_from=run:{source.path}"
    # lr 1e-30: the fine-tune moves no weight measurably, so it ends where it started
    art = train(
        shards,
        tmp_path,
        "pgd-at",
        "synthetic",
        overrides=[spec, "optim.lr=1e-30", "optim.min_lr=0", "train.finetune_epochs=1"],
    )
    mine, theirs = final_weights(art.path), final_weights(source.path)
    assert mine.keys() == theirs.keys()
    for k in theirs:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-20)
    assert art.manifest["lineage"] == [shards.id, source.id]
    assert art.manifest["extra"]["init_from"] == source.id
    assert art.manifest["config"]["train"]["epochs"] == 1  # finetune_epochs, as trained
    assert [r["epoch"] for r in metrics(art.path) if r["kind"] == "epoch"] == [0]
    with pytest.raises(TrainingError, match="train.init_from.*model.embed_dim"):
        train(shards, tmp_path, "pgd-at", "synthetic", overrides=[spec, "model.embed_dim=16"])
    with pytest.raises(TrainingError, match="train.init_from"):
        train(
            shards,
            tmp_path,
            "pgd-at",
            "synthetic",
            overrides=[f"train.init_from=run:{tmp_path / 'nowhere'}"],
        )


def test_init_from_run_standard_is_the_teachers_standard_run(shards, tmp_path):
    overrides = [
        "train.init_from=run:standard",
        "train.finetune_epochs=1",
        "loss.teacher=run:standard",
        "loss.gamma0=1.0",
    ]
    art = train(shards, tmp_path, "daat", "synthetic", overrides=overrides)
    runs = {a.manifest["config"]["preset"]: a for a in map(open_artifact, tmp_path.glob("run-*"))}
    assert set(runs) == {"standard", "daat+synthetic"}  # one standard run: init and teacher
    standard = runs["standard"]
    assert art.manifest["lineage"] == [shards.id, standard.id]
    assert standard.manifest["config"]["train"]["epochs"] == 2  # from scratch: train.epochs
    assert standard.manifest["config"]["train"]["init_from"] == ""
    assert art.manifest["config"]["train"]["epochs"] == 1
    # the Standard row's own run (standard preset, same scale settings) is that same artifact
    direct = train(
        shards, tmp_path, "standard", "synthetic", overrides=overrides[:2] + ["attack.steps=0"]
    )
    assert direct.path == standard.path


def test_ema_run_validates_saves_and_is_evaluated_with_its_ema(shards, tmp_path):
    art = train(shards, tmp_path, "pgd-at", "synthetic", overrides=["train.ema_decay=0.5"])
    final = ckpt.load(art.path / "checkpoints" / ckpt.FINAL)
    assert final["model_ema"].keys() == final["model"].keys()
    assert any(not torch.equal(final["model_ema"][k], final["model"][k]) for k in final["model"])
    model, _, _ = ckpt.load_model_for_eval(art.path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, final["model_ema"][name]), name
    # the last epoch's val numbers are the EMA's: validate the loaded EMA model the same way
    from daat.pipeline.loaders import EvalReadSpec, eval_pipeline
    from daat.train.validate import val_sums

    cfg = config_mod.from_dict(art.manifest["config"])
    state = loop.build_state(cfg, shards.num_classes, None, torch.device("cpu"))
    state.ema.load_state_dict(final["model_ema"])
    state.model.load_state_dict(final["model"])
    batches = eval_pipeline(
        shards, EvalReadSpec(split="val", image_size=32, grid=(4, 4), batch_size=8, max_samples=10)
    )
    sums = val_sums(
        state, ((x, y, g) for _, x, y, g in batches), 2, seed=cfg.seed * 1_000_003 + 7919
    )
    last = [r for r in metrics(art.path) if r["kind"] == "epoch"][-1]
    assert sums[1].item() / 10 == last["val_clean_acc"]
    assert sums[3].item() / 10 == pytest.approx(last["val_cos_AG"], abs=1e-6)


# -- resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "crash_at, workers, ema",
    [
        ("epoch-0001.pt", 0, 0.0),
        ("step-00000003.pt", 0, 0.0),
        ("step-00000003.pt", 2, 0.0),
        ("step-00000003.pt", 0, 0.9),
    ],
)
def test_resume_reproduces_the_uninterrupted_run(
    shards, tmp_path, monkeypatch, crash_at, workers, ema, capsys
):
    """Crash right after a checkpoint (epoch boundary, or mid-epoch after batch 3 of 4), rerun:
    only the remaining steps run, and the final weights (and weight EMA) equal the uninterrupted
    run's within 1e-5, with the same step count and metrics (data loader workers too)."""
    presets = ("daat", "synthetic")
    overrides = [
        "loss.gamma0=0",
        "loss.lam=0.5",
        f"data.num_workers={workers}",
        f"train.ema_decay={ema}",
    ]
    whole = train(shards, tmp_path / "whole", *presets, overrides=overrides)
    with monkeypatch.context() as patch:
        stop_after(patch, crash_at)
        with pytest.raises(Stop):
            train(shards, tmp_path / "split", *presets, overrides=overrides)
    (run_dir,) = (tmp_path / "split").glob("run-*")
    assert not open_artifact(run_dir).complete
    done_before = ckpt.load(run_dir / "checkpoints" / crash_at)["step"]
    steps_run = []
    real_step = loop.train_step
    monkeypatch.setattr(
        loop,
        "train_step",
        lambda st, b, sched: steps_run.append(sched.step) or real_step(st, b, sched),
    )
    capsys.readouterr()
    resumed = train(shards, tmp_path / "split", *presets, overrides=overrides)
    assert steps_run == list(range(done_before, 8))  # continued, did not start over
    assert (
        f"[train] resuming from {run_dir / 'checkpoints' / crash_at} (step {done_before} of 8"
        in capsys.readouterr().err
    )
    assert resumed.path.name == whole.path.name and resumed.complete
    assert resumed.manifest["extra"]["steps"] == whole.manifest["extra"]["steps"] == 8
    a, b = final_weights(whole.path), final_weights(resumed.path)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    a, b = (
        ckpt.load(r / "checkpoints" / ckpt.FINAL)["model_ema"] for r in (whole.path, resumed.path)
    )
    assert (a is None) == (b is None) == (ema == 0)
    for name in a or {}:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    assert strip(metrics(resumed.path)) == strip(metrics(whole.path))
    again = train(shards, tmp_path / "split", *presets, overrides=overrides)
    assert again.path == resumed.path
    assert f"[train] reusing {resumed.path} (finished 20" in capsys.readouterr().err


def test_a_crash_before_the_first_latest_starts_over_without_duplicate_metrics(
    shards, tmp_path, monkeypatch
):
    """Killed after logging steps and writing step-3.pt, but before ``latest`` named it: the
    rerun starts from scratch, and metrics.jsonl holds each step once, as an unbroken run's."""
    presets, overrides = ("pgd-at", "synthetic"), ["train.log_every_steps=1"]
    whole = train(shards, tmp_path / "whole", *presets, overrides=overrides)
    with monkeypatch.context() as patch:
        stop_before_latest(patch, "step-00000003.pt")
        with pytest.raises(Stop):
            train(shards, tmp_path / "split", *presets, overrides=overrides)
    (run_dir,) = (tmp_path / "split").glob("run-*")
    assert ckpt.latest(run_dir / "checkpoints") is None and metrics(run_dir)
    resumed = train(shards, tmp_path / "split", *presets, overrides=overrides)
    assert strip(metrics(resumed.path)) == strip(metrics(whole.path))


def test_nan_loss_stops_the_run_naming_the_step(shards, tmp_path, monkeypatch):
    real_step = loop.train_step

    def poisoned(state, batch, sched):
        if sched.step == 5:
            batch = (batch[0].clone().fill_(float("nan")), *batch[1:])
        return real_step(state, batch, sched)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"NaN/inf at step 5 \(epoch 1\)"):
        train(shards, tmp_path, "pgd-at", "synthetic", overrides=["train.ckpt_every_steps=6"])
    (run_dir,) = tmp_path.glob("run-*")
    assert ckpt.latest(run_dir / "checkpoints").name == "epoch-0001.pt"  # nothing after step 5


def test_shards_that_do_not_fit_the_config_are_refused(shards, tmp_path):
    with pytest.raises(ShardFormatError, match="short side 64 px.*model.img_size=72"):
        train(
            shards,
            tmp_path,
            "pgd-at",
            "synthetic",
            overrides=["model.img_size=72", "model.patch_size=8"],
        )
    with pytest.raises(config_mod.ConfigError, match="oracle"):
        train(shards, tmp_path, "daat", "synthetic", overrides=["depth.target=online"])
    assert not list(tmp_path.glob("run-*"))


# -- slow: the real CLI, kill -9, torchrun ---------------------------------------------------
def _cli_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli_args(shards, out, overrides, method="pgd-at"):
    args = [
        "--config",
        method,
        "--config",
        "synthetic",
        "--shards",
        str(shards.path),
        "--use-cached-depth",
        "--out",
        str(out),
    ]
    for o in E2E + overrides:
        args += ["--set", o]
    return args


def _kill_at_first_checkpoint(cmd: list[str], out: Path, timeout: float) -> None:
    """Start ``cmd`` in its own process group; kill -9 the group once the run's first mid-epoch
    checkpoint (step 2) exists. Polled often and that early: with the step-6 checkpoint a 12-step
    run once finished between two 0.2 s polls after the reader got faster."""
    proc = subprocess.Popen(
        cmd,
        cwd=out,
        env=_cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not list(out.glob("run-*/checkpoints/step-00000002.pt")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_finishes(shards, tmp_path):
    overrides = ["train.epochs=4", "train.ckpt_every_steps=2"]
    cmd = [sys.executable, "-m", "daat.cli", "train", *_cli_args(shards, tmp_path, overrides)]
    _kill_at_first_checkpoint(cmd, tmp_path, timeout=300)
    (run_dir,) = tmp_path.glob("run-*")
    assert not open_artifact(run_dir).complete
    done = subprocess.run(
        cmd, cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(run_dir)
    art = open_artifact(run_dir, require_complete=True)
    assert art.manifest["extra"]["steps"] == 4 * STEPS_PER_EPOCH
    epochs = [r for r in metrics(run_dir) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert [r["step"] for r in metrics(run_dir) if r["kind"] == "step"] == list(range(2, 17, 2))


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_checkpoint_and_resume(shards, tmp_path):
    """Two ranks (gloo): kill -9 the whole torchrun group after a mid-run checkpoint, rerun the
    same command: it resumes, finishes with the full step count, val sums both ranks' shards."""
    teacher = save_random_teacher(
        tmp_path / "teacher.safetensors",
        embed_dim=24,
        depth=1,
        num_heads=2,
        patch_size=8,
        img_size=32,
    )
    # daat with L_feat in epoch 0: the projection (outside DDP) is averaged by hand across ranks
    overrides = [
        "train.epochs=3",
        "train.samples_per_epoch=64",
        "train.ckpt_every_steps=2",
        f"loss.teacher={teacher}",
        "loss.gamma0=1.0",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "daat.cli",
        "train",
        *_cli_args(shards, tmp_path, overrides, "daat"),
    ]
    _kill_at_first_checkpoint(cmd, tmp_path, timeout=400)
    (run_dir,) = tmp_path.glob("run-*")
    assert not open_artifact(run_dir).complete
    state = ckpt.load(ckpt.latest(run_dir / "checkpoints"))
    assert len(state["rng"]) == 2 and len(state["generator"]) == 2  # one stream per rank
    assert not torch.equal(state["generator"][0], state["generator"][1])
    done = subprocess.run(
        cmd, cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    art = open_artifact(run_dir, require_complete=True)
    # 64 samples per epoch over 2 ranks of batch 8 -> 4 steps per epoch on each rank
    assert art.manifest["extra"]["steps"] == 3 * STEPS_PER_EPOCH
    epochs = [r for r in metrics(run_dir) if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(0, 4), (1, 8), (2, 12)]
    assert all(r["val_n"] == 10 for r in epochs)  # both ranks' halves of the val subset, summed
    assert epochs[0]["feat"] > 0 and epochs[1]["feat"] == 0
    assert art.manifest["extra"]["teacher"] == str(teacher)


def strip(rows: list[dict]) -> list[dict]:
    """Metrics rows without the timing fields, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in ("img_per_s", "wall_s")} for r in rows]
