"""``train.loggers``: every tracker's values, read back with the tracker's own reader, equal
metrics.jsonl; the config arrives as hyper-parameters; a failing tracker never stops training; a
missing extra is one clear error. A tracker whose package is absent is skipped."""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN

from daat import config as config_mod
from daat import keys
from daat.config import ConfigError
from daat.train import checkpoint as ckpt
from daat.train import loggers, loop

INSTALLED = [
    name
    for name, (module, _) in loggers.TRACKERS.items()
    if importlib.util.find_spec(module) is not None
]
# 2 epochs of 2 steps, a step record every step: 4 step records and 2 epoch records.
TRACKED = TINY_RUN + [
    "train.epochs=2",
    "train.ckpt_every_steps=3",
    f"train.loggers={json.dumps(['jsonl', *INSTALLED])}",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(*overrides):
    return config_mod.load(["daat", "synthetic"], [*TRACKED, "loss.gamma0=0", *overrides])


@pytest.fixture(scope="module")
def tracked_run(tiny_shards, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = cfg_for()
    art = loop.run(cfg, str(tiny_shards.path), str(tmp_path_factory.mktemp("tracked")))
    return art.path, cfg


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value for every numeric field of every metrics.jsonl record."""
    out = {}
    for record in jsonl(run_dir):
        for key, value in record.items():
            if key not in ("kind", "step"):
                out[(f"{record['kind']}/{key}", record["step"])] = float(value)
    return out


def test_scalars_are_every_numeric_field_under_its_kind():
    record = {
        "kind": "epoch",
        "epoch": 1,
        "step": 8,
        "ce": 0.5,
        "zero_grad": 0,
        "val_pgd_acc": 0.25,
    }
    assert loggers.scalars(record) == {
        "epoch/epoch": 1.0,
        "epoch/ce": 0.5,
        "epoch/zero_grad": 0.0,
        "epoch/val_pgd_acc": 0.25,
    }


# -- each tracker, read back -----------------------------------------------------------------
def test_tensorboard_event_files_hold_metrics_jsonl_and_the_config(tracked_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, cfg = tracked_run
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    expected = expected_scalars(run_dir)
    assert {k: np.float32(v) for k, v in expected.items()} == got  # event files store float32
    assert {
        "step/ce",
        "step/lr",
        "step/gamma",
        "step/s",
        "step/img_per_s",
        "epoch/val_clean_acc",
        "epoch/val_pgd_acc",
        "epoch/val_cos_AG",
    } <= {tag for tag, _ in got}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    flat = loggers.hyperparameters(cfg)
    assert hparams["attack.eps"].number_value == pytest.approx(cfg.attack.eps)
    assert hparams["model.name"].string_value == cfg.model.name
    assert hparams["train.loggers"].string_value == json.dumps(cfg.train.loggers)
    assert set(hparams) == set(flat)


def test_mlflow_file_store_holds_metrics_jsonl_and_the_config(tracked_run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir, cfg = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("daat")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["daat.run"] == run_dir.name
    expected = expected_scalars(run_dir)
    got = {}
    for tag in {tag for tag, _ in expected}:
        for m in client.get_metric_history(run.info.run_id, tag):
            got[(tag, m.step)] = m.value
    assert got == expected
    resolved = copy.deepcopy(cfg)
    resolved.depth.model = "oracle"  # the run logs its resolved config: the shards' depth model
    assert run.data.params == {k: str(v) for k, v in loggers.hyperparameters(resolved).items()}


def wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (.wandb: a LevelDB-style log of 32 KiB
    blocks after a 7-byte header, each chunk = crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_metrics_jsonl_and_the_config(tracked_run):
    pytest.importorskip("wandb")
    run_dir, cfg = tracked_run
    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    got, config = {}, {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }  # "a/b" keys come split into nested_key
            for key, value in items.items():
                if not key.startswith("_"):
                    got[(key, items["_step"])] = value
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    assert got == expected_scalars(run_dir)
    assert {k: v for k, v in config.items() if k != "_wandb"} == config_mod.to_dict(cfg)


# -- contracts -------------------------------------------------------------------------------
def test_resumed_run_leaves_one_tensorboard_value_per_step(tiny_shards, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Crash(Exception):
        pass

    real = ckpt.write_latest

    def crash_before_last_latest(ckpt_dir, name):
        if name == ckpt.epoch_name(2):  # step 4 and epoch 1 are logged, `latest` is step 3
            raise Crash(name)
        real(ckpt_dir, name)

    cfg = cfg_for("train.loggers=[jsonl,tensorboard]")
    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_latest", crash_before_last_latest)
        with pytest.raises(Crash):
            loop.run(cfg, str(tiny_shards.path), str(tmp_path))
    (run_dir,) = tmp_path.glob("run-*")
    assert max(r["step"] for r in jsonl(run_dir)) == 4
    art = loop.run(cfg, str(tiny_shards.path), str(tmp_path))  # resumes at step 3
    assert art.complete
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert got == {k: np.float32(v) for k, v in expected_scalars(run_dir).items()}


class Flaky:
    """A tracker whose server goes away at the second record."""

    calls = 0

    def __init__(self, *args):
        pass

    def log(self, record):
        Flaky.calls += 1
        if Flaky.calls == 2:
            raise ConnectionError("tracking server unreachable")

    def close(self, failed):
        pass


def test_a_failing_tracker_never_stops_training(tiny_shards, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(Flaky, "calls", 0)
    monkeypatch.setitem(loggers._OPENERS, "tensorboard", Flaky)
    art = loop.run(
        cfg_for("train.loggers=[jsonl,tensorboard]"), str(tiny_shards.path), str(tmp_path)
    )
    assert art.complete and len(jsonl(art.path)) == 6
    assert Flaky.calls == 2  # switched off after its error
    err = capsys.readouterr().err
    assert "warning: tensorboard log failed (ConnectionError: tracking server unreachable)" in err


def test_a_tracker_that_cannot_start_is_switched_off(tmp_path, monkeypatch, capsys):
    def refuse(*args):
        raise OSError("no route to host")

    monkeypatch.setitem(loggers._OPENERS, "mlflow", refuse)
    cfg = config_mod.load([], ["train.loggers=[jsonl,mlflow]"])
    with loggers.open_loggers(cfg, tmp_path, "run-x", 0) as sink:
        sink.log({"kind": "step", "step": 1, "ce": 1.0})
    assert "mlflow could not start (OSError: no route to host)" in capsys.readouterr().err
    assert jsonl(tmp_path) == [{"kind": "step", "step": 1, "ce": 1.0}]


def test_only_rank_zero_logs(tmp_path):
    cfg = config_mod.load([], [])
    with loggers.open_loggers(cfg, tmp_path, "run-x", 0, enabled=False) as sink:
        sink.log({"kind": "step", "step": 1, "ce": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_a_missing_extra_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        ConfigError,
        match=r"the wandb package is not installed: "
        r"pip install 'daat\[wandb\]'",
    ):
        loggers.check(config_mod.load([], ["train.loggers=[jsonl,wandb]"]))


@pytest.mark.parametrize(
    "loggers_value, message",
    [
        (
            "[jsonl,tensorbord]",
            r"train.loggers\[1\]' must be one of jsonl, tensorboard, mlflow, "
            r"wandb; got 'tensorbord'",
        ),
        ("[tensorboard]", "must be a list that includes 'jsonl'"),
        ("[jsonl,jsonl]", "must be a list without repeats"),
    ],
)
def test_bad_logger_lists_are_refused_when_the_config_is_read(loggers_value, message):
    with pytest.raises(ConfigError, match=message):
        config_mod.load([], [f"train.loggers={loggers_value}"])
    with pytest.raises(ConfigError, match="train.wandb_mode' must be one of offline, online"):
        config_mod.load([], ["train.wandb_mode=onlin"])


def test_tracker_settings_do_not_change_the_run_key():
    base = keys.determining("run", cfg_for())
    other = keys.determining(
        "run",
        cfg_for(
            "train.loggers=[jsonl]",
            "train.wandb_mode=online",
            "train.mlflow_uri=http://localhost:5000",
            "train.tracker_project=x",
        ),
    )
    assert base == other
