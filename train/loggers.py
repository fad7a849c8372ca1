"""Where training metrics go: ``metrics.jsonl`` and the experiment trackers in ``train.loggers``.

The loop calls ``log(record)`` once per metrics record (``kind`` "step" per log interval, "epoch"
after each validation); every logger gets the same record. Trackers log each numeric field as
the scalar ``{kind}/{field}`` (``step/ce``, ``epoch/val_pgd_acc``, ...) at ``record["step"]``,
and the resolved config as hyper-parameters when they start. Only rank 0 logs.

    jsonl         metrics.jsonl in the run (always; reports and resume read it)
    tensorboard   <run>/tensorboard event files         pip install 'daat[tensorboard]'
    mlflow        train.mlflow_uri, default a file store in <run>/mlruns   'daat[mlflow]'
    wandb         <run>/wandb, offline unless train.wandb_mode=online     'daat[wandb]'

A tracker must never stop a training run: if one fails to start or to log (a server down, a full
quota), a warning names it and it is switched off for the rest of the session; metrics.jsonl
stays complete. A resumed run logs into the same TensorBoard directory (events after the resumed
checkpoint are purged), MLflow run (found by its ``daat.run`` tag) and W&B run id; MLflow and
W&B may show the steps between the checkpoint and the crash twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from daat import config as config_mod
from daat.config import Config, ConfigError

METRICS = "metrics.jsonl"
# tracker -> (module it needs, the extra that installs it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
_NOT_SCALARS = {"kind", "step"}


class MetricsLogger(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self, failed: bool) -> None: ...


def check(cfg: Config) -> None:
    """Each tracker in ``train.loggers`` has its package installed (on every rank, before
    training, so a missing extra stops all ranks at once). The names themselves, 'jsonl' being
    required and no repeats, are ``TrainConfig.check``'s rules."""
    for name in cfg.train.loggers:
        if name in TRACKERS and importlib.util.find_spec(TRACKERS[name][0]) is None:
            raise ConfigError(
                f"train.loggers includes {name!r} but the {TRACKERS[name][0]} "
                f"package is not installed: pip install 'daat[{TRACKERS[name][1]}]'"
            )


def scalars(record: dict) -> dict[str, float]:
    """The tracker view of one metrics record: ``{kind}/{field}`` -> number."""
    kind = record["kind"]
    return {
        f"{kind}/{k}": float(v)
        for k, v in record.items()
        if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def hyperparameters(cfg: Config) -> dict[str, str | int | float | bool]:
    """The resolved config flattened to ``section.key`` -> scalar (lists and None as JSON text)."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (str, int, float, bool)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    walk("", config_mod.to_dict(cfg))
    return flat


class JsonlLogger:
    """One JSON object per line in ``metrics.jsonl`` (errors propagate: this is the record)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS

    def log(self, record: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a failed write (a full disk) names no file: say which one
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self, failed: bool) -> None:
        pass


class TensorBoardLogger:
    """Event files in ``<run>/tensorboard``: ``tensorboard --logdir <run>/tensorboard``."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step drops events a crashed session wrote after the checkpoint we resume from.
        self.writer = SummaryWriter(
            log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1, flush_secs=30
        )
        for summary in hparams(hyperparameters(cfg), {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```yaml\n" + config_mod.dump(cfg) + "```", 0)
        self.writer.add_text("run", run_id, 0)

    def log(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def close(self, failed: bool) -> None:
        self.writer.close()


def _is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


class MlflowLogger:
    """An MLflow run named after the daat run, in experiment ``train.tracker_project``."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, resume_step: int):
        uri = cfg.train.mlflow_uri or (Path(run_dir).resolve() / "mlruns").as_uri()
        if _is_file_store(uri):
            # MLflow 3 keeps its file store in maintenance mode behind this opt-in; it is the one
            # backend that needs neither a server nor a database, which offline runs want.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.train.tracker_project)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(cfg.train.tracker_project)
        )
        found = self.client.search_runs(
            [experiment_id], f"tags.`daat.run` = '{run_id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_id, tags={"daat.run": run_id})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in hyperparameters(cfg).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, record: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(tag, value, now, record["step"]) for tag, value in scalars(record).items()
            ],
        )

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class WandbLogger:
    """A W&B run with the daat run's id, written under ``<run>/wandb``; offline by default
    (``wandb sync <run>/wandb/offline-run-*`` uploads it later)."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, resume_step: int):
        import wandb

        self.run = wandb.init(
            project=cfg.train.tracker_project,
            name=run_id,
            id=run_id,
            dir=str(run_dir),
            mode=cfg.train.wandb_mode,
            config=config_mod.to_dict(cfg),
            resume="allow",
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


_OPENERS = {"tensorboard": TensorBoardLogger, "mlflow": MlflowLogger, "wandb": WandbLogger}


class _Guarded:
    """A tracker that is switched off, with a warning, at its first error."""

    def __init__(self, name: str, logger: MetricsLogger | None):
        self.name, self.logger = name, logger

    def _call(self, method: str, *args) -> None:
        if self.logger is None:
            return
        try:
            getattr(self.logger, method)(*args)
        # Trackers talk to services whose errors come in any type; none may stop training.
        except Exception as e:
            _warn(self.name, f"{method} failed", e)
            self.logger = None

    def log(self, record: dict) -> None:
        self._call("log", record)

    def close(self, failed: bool) -> None:
        self._call("close", failed)


def _warn(name: str, what: str, e: Exception) -> None:
    first_line = (str(e).splitlines() or [""])[0][:300]
    print(
        f"warning: {name} {what} ({type(e).__name__}: {first_line}); {name} is off for the rest "
        f"of this session, metrics.jsonl is complete",
        file=sys.stderr,
        flush=True,
    )


class Loggers:
    """Every configured logger behind one ``log(record)``."""

    def __init__(self, loggers: list[MetricsLogger]):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self, failed: bool) -> None:
        for logger in self.loggers:
            logger.close(failed)


@contextmanager
def open_loggers(
    cfg: Config, run_dir: str | os.PathLike, run_id: str, resume_step: int, enabled: bool = True
) -> Iterator[Loggers]:
    """The loggers of ``train.loggers`` for one training session (none unless ``enabled``, i.e.
    on ranks other than 0); trackers are told whether the session failed when it ends."""
    run_dir = Path(run_dir)
    loggers: list[MetricsLogger] = []
    if enabled:
        loggers.append(JsonlLogger(run_dir))
        for name in cfg.train.loggers:
            if name in _OPENERS:
                loggers.append(_open_tracker(name, cfg, run_dir, run_id, resume_step))
    sink = Loggers(loggers)
    try:
        yield sink
    except BaseException:
        sink.close(failed=True)
        raise
    sink.close(failed=False)


def _open_tracker(name: str, cfg: Config, run_dir: Path, run_id: str, resume_step: int) -> _Guarded:
    try:
        return _Guarded(name, _OPENERS[name](cfg, run_dir, run_id, resume_step))
    # As in _Guarded: a tracker that cannot start (no server, bad credentials) must not stop a
    # run that is otherwise ready to train.
    except Exception as e:
        _warn(name, "could not start", e)
        return _Guarded(name, None)
