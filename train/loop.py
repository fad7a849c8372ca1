"""``daat train``: the training loop (resumable, DDP under torchrun).

    run(cfg, shards_dir, out) -> Artifact   # <out>/run-<key16>/{config.yaml, metrics.jsonl,
                                            #     checkpoints/{step-*,epoch-*,latest,final.pt}}

Running the same command again resumes from ``checkpoints/latest`` (model, optimiser, step, RNG
streams, data position) or returns the finished run at once. Only rank 0 writes files, holding the
run's writer lock (a second process on the same run fails at once); every rank reads the same
shards and checkpoints (multi-node: ``--out`` on a shared file system). Which run, which
checkpoint and which shards are acceptable is ``run_artifact``'s; the state is built by
``state``, validated by ``validate``, stepped by ``step.train_step``. A ``run:standard`` teacher
or start must be resolved before (``standard_first.resolve``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from daat import config as config_mod
from daat import dist, progress
from daat.artifact_admin import resume_line, reuse_line
from daat.artifacts import Artifact, FileGuard
from daat.config import Config
from daat.errors import TrainingError
from daat.pipeline.loaders import TrainReadSpec, batches_per_epoch, require_intact, train_pipeline
from daat.train import checkpoint as ckpt
from daat.train import loggers, warm_start
from daat.train import teacher as teacher_mod
from daat.train.run_artifact import (
    CONFIG_FILE,
    check_inputs,
    check_resumable,
    open_run,
    truncate_metrics,
)
from daat.train.state import build_state, seed_all
from daat.train.step import NonFiniteGuard, StepSchedule, train_step
from daat.train.validate import validate

METRICS = loggers.METRICS
LOSS_KEYS = ("loss", "ce", "align", "feat", "zero_grad")


def run(cfg: Config, shards_dir: str, out: str) -> Artifact:
    """Train (or resume, or reuse) the run that ``cfg`` on ``shards_dir`` determines."""
    with dist.session(cfg.device) as (device, info):
        art = None
        try:
            cfg, shards = check_inputs(cfg, shards_dir)
            source = teacher_mod.locate(cfg, out)
            init = warm_start.locate(cfg, out)
            cfg = warm_start.effective(cfg)
            art = open_run(cfg, shards, [source, init], out, info)
            if info.is_main:
                config_mod.print_resolved(cfg, art.id)
            if art.complete:
                if info.is_main:
                    print(f"[train] {reuse_line(art)}", file=sys.stderr, flush=True)
                return art
            files = shards.guard(["train", "val"])
            require_intact(shards, files.verify(info.rank, info.world_size), "before training")
            teacher = teacher_mod.load(source, cfg, device) if source else None
            if info.is_main:
                art.write_bytes(CONFIG_FILE, config_mod.dump(cfg).encode())
                art.save()
            loop = _Loop(cfg, art, shards, files, teacher, device, info, init)
            loop.restore()
            with loggers.open_loggers(cfg, art.path, art.id, loop.pos.step, info.is_main) as sink:
                loop.sink = sink
                loop.train()
                loop.finish()
            dist.barrier()
            return art
        finally:
            if art is not None:
                art.unlock()


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already consumed
    wall_s: float = 0.0  # training wall time of earlier sessions
    sums: dict = field(default_factory=dict)  # this epoch's loss sums so far (host floats)


class _Loop:
    """One training session; ``train`` is the epoch loop."""

    def __init__(self, cfg, art, shards, files: FileGuard, teacher, device, info, init=None):
        self.cfg, self.art, self.shards, self.info, self.device = cfg, art, shards, info, device
        self.files = files  # the train and val tars, hashed once before the first step
        self.init = init  # the run whose weights a fresh start loads (train.init_from)
        self.teacher_id = teacher.model_id if teacher else None
        self.ckpts = ckpt.RunCheckpoints(art)
        samples = cfg.train.samples_per_epoch or shards.split_size("train")
        self.steps_per_epoch = batches_per_epoch(samples, cfg.train.batch_size, info.world_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.state = build_state(cfg, shards.num_classes, teacher, device, info)
        self.pos = _Position()
        self.guard = NonFiniteGuard(device, self.steps_per_epoch)
        self.session_start = time.perf_counter()
        self.last_val: dict = {}
        self.sink: loggers.Loggers = loggers.Loggers([])  # replaced by run() for the session

    def restore(self) -> None:
        """Continue from ``checkpoints/latest`` if there is one (rank 0 picks an intact one)."""
        chosen = dist.main_first(self.ckpts.resume_from)
        shared = dist.all_gather_objects(None if chosen is None else str(chosen))[0]
        path = None if shared is None else Path(shared)
        if path is None:
            seed_all(self.cfg.seed + self.info.rank)
            if self.init is not None:
                warm_start.load_weights(
                    self.state.model, self.init, self.cfg, self.shards.num_classes
                )
                if self.state.ema is not None:
                    self.state.ema.load_state_dict(self.state.model.state_dict())
            if self.info.is_main:  # a run killed before its first ``latest`` starts over
                truncate_metrics(self.art.path / METRICS, None)
            return
        state = ckpt.load(path)
        check_resumable(state, path, self.shards, self.steps_per_epoch, self.cfg, self.info)
        self.state.model.load_state_dict(state["model"])
        if self.state.ema is not None:
            self.state.ema.load_state_dict(state["model_ema"])
        self.state.optimizer.load_state_dict(state["optimizer"])
        if self.state.projection is not None:
            self.state.projection.load_state_dict(state["projection"])
        ckpt.set_rng_state(state["rng"][self.info.rank])
        self.state.generator.set_state(state["generator"][self.info.rank])
        self.pos = _Position(
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
            float(state["wall_s"]),
            dict(state["epoch_sums"]),
        )
        self.last_val = dict(state["last_val"])
        if self.info.is_main:
            truncate_metrics(self.art.path / METRICS, self.pos.step)
            tqdm.write(
                "[train] "
                + resume_line(
                    path,
                    f"step {self.pos.step} of {self.total_steps}"
                    f", epoch {self.pos.epoch + 1} of "
                    f"{self.cfg.train.epochs}",
                ),
                file=sys.stderr,
            )

    def train(self) -> None:
        cfg = self.cfg
        bar = progress.bar(
            main=self.info.is_main,
            total=self.total_steps,
            initial=self.pos.step,
            dynamic_ncols=True,
            desc=self.art.id,
        )
        for epoch in range(self.pos.epoch, cfg.train.epochs):
            self.pos.epoch = epoch
            start, done_before = time.perf_counter(), self.pos.batch
            interval = _Interval(self.device)
            for batch in self._batches(epoch):
                sched = self._schedule(self.pos.step, epoch)
                out = train_step(self.state, batch, sched)
                self.guard.update(out["nonfinite"], sched.step)
                interval.add(out)
                self.pos.step += 1
                self.pos.batch += 1
                bar.update(1)
                if self.device.type == "cpu":
                    self.guard.check()  # free on CPU; on GPU only at log/checkpoint points
                if self.pos.step % cfg.train.log_every_steps == 0:
                    self._log(interval, sched, bar)
                    interval = _Interval(self.device)
                if (
                    self.pos.step % cfg.train.ckpt_every_steps == 0
                    and self.pos.batch < self.steps_per_epoch
                ):
                    self._flush(interval)
                    interval = _Interval(self.device)
                    self._save(ckpt.step_name(self.pos.step), epoch_end=False)
            self._flush(interval)
            self._end_epoch(epoch, time.perf_counter() - start, self.pos.batch - done_before)
        bar.close()

    def _batches(self, epoch: int):
        cfg = self.cfg
        spec = TrainReadSpec.from_config(
            cfg, grid=self.state.model.grid, rank=self.info.rank, world_size=self.info.world_size
        )
        batches = train_pipeline(
            self.shards,
            spec,
            epoch=epoch,
            skip_batches=self.pos.batch,
            pin_memory=dist.cuda_paths(self.device),
        )
        expected, seen = len(batches), 0
        for batch in batches:
            seen += 1
            yield batch
        if seen != expected:  # a short rank would leave the others waiting in DDP forever
            raise TrainingError(
                f"epoch {epoch}: the train pipeline gave {seen} batches, "
                f"expected {expected} ({self.shards.path})"
            )

    def _schedule(self, step: int, epoch: int) -> StepSchedule:
        return StepSchedule.at(self.cfg, step, epoch, self.steps_per_epoch)

    def _log(self, interval: _Interval, sched: StepSchedule, bar) -> None:
        self.guard.check()
        means = self._flush(interval)  # the one host-device sync of the interval
        rate = interval.n * self.cfg.train.batch_size * self.info.world_size / interval.elapsed()
        bar.set_postfix(
            ce=f"{means['ce']:.3f}",
            align=f"{means['align']:.3f}",
            feat=f"{means['feat']:.3f}",
            img_s=f"{rate:.0f}",
        )
        self._append(
            {
                "kind": "step",
                "epoch": sched.epoch,
                "step": self.pos.step,
                **means,
                "lr": sched.lr,
                "gamma": sched.gamma,
                "s": sched.s,
                "eps": self._train_eps(sched),
                "img_per_s": rate,
            }
        )

    def _train_eps(self, sched: StepSchedule) -> float:
        """The training attack's ε at this step (0 for standard training)."""
        return self.cfg.attack.eps * sched.eps_scale if self.cfg.attack.steps else 0.0

    def _flush(self, interval: _Interval) -> dict:
        self.guard.check()
        sums = interval.host_sums()
        for k, v in sums.items():
            self.pos.sums[k] = self.pos.sums.get(k, 0.0) + v
        n = max(sums["n"], 1.0)
        return {k: (sums[k] if k == "zero_grad" else sums[k] / n) for k in LOSS_KEYS}

    def _end_epoch(self, epoch: int, seconds: float, batches: int) -> None:
        keys = (*LOSS_KEYS, "n")
        local = torch.tensor(
            [self.pos.sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device
        )
        sums = dict(zip(keys, dist.all_reduce_sum(local).tolist()))
        n = max(sums["n"], 1.0)
        every = self.cfg.train.val_every_epochs
        validated = (epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs
        if validated:
            self.last_val = validate(self.state, self.shards, self.info)
        sched = self._schedule(max(self.pos.step - 1, 0), epoch)
        images = batches * self.cfg.train.batch_size * self.info.world_size
        self._append(
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": self.pos.step,
                **{k: sums[k] / n for k in LOSS_KEYS if k != "zero_grad"},
                "zero_grad": int(sums["zero_grad"]),
                "lr": sched.lr,
                "gamma": sched.gamma,
                "s": sched.s,
                "eps": self._train_eps(sched),
                "img_per_s": images / max(seconds, 1e-9),
                "wall_s": self._wall(),
                **(self.last_val if validated else {}),
            }
        )
        self.pos.epoch, self.pos.batch, self.pos.sums = epoch + 1, 0, {}
        self._save(ckpt.epoch_name(epoch + 1), epoch_end=True)

    def _wall(self) -> float:
        return self.pos.wall_s + time.perf_counter() - self.session_start

    def _append(self, record: dict) -> None:
        self.sink.log(record)  # metrics.jsonl and the trackers; no-op off rank 0

    def _save(self, name: str, epoch_end: bool) -> None:
        self.guard.check()
        require_intact(self.shards, self.files.recheck(), f"before checkpoint {name}")
        s = self.state
        rng = dist.all_gather_objects(ckpt.rng_state())  # every rank's streams, in rank order
        generators = dist.all_gather_objects(s.generator.get_state())
        if not self.info.is_main:
            return
        self.ckpts.save(
            name,
            {
                **self._model_state(),
                "optimizer": s.optimizer.state_dict(),
                "batch_in_epoch": self.pos.batch,
                "rng": rng,
                "generator": generators,
                "epoch_sums": dict(self.pos.sums),
                "wall_s": self._wall(),
                "last_val": self.last_val,
                "epoch_end": epoch_end,
                "num_workers": self.cfg.data.num_workers,
            },
            self.cfg.train.keep_step_checkpoints,
            self.cfg.train.keep_epoch_checkpoints,
        )

    def _model_state(self) -> dict:
        s = self.state
        return {
            "model": s.model.state_dict(),
            "model_ema": s.ema.state_dict() if s.ema is not None else None,
            "projection": s.projection.state_dict() if s.projection is not None else None,
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "config": config_mod.to_dict(self.cfg),
            "shards_id": self.shards.id,
            "num_classes": self.shards.num_classes,
        }

    def finish(self) -> None:
        require_intact(
            self.shards,
            self.files.verify(self.info.rank, self.info.world_size),
            f"before {ckpt.FINAL}",
        )
        if not self.info.is_main:
            return
        art, target = self.art, self.state.depth_target
        self.ckpts.save_final(self._model_state())
        for rel in (CONFIG_FILE, METRICS):
            art.record_file(rel)
        art.extra.update(
            {
                "shards_dir": str(self.shards.path.resolve()),
                "steps": self.pos.step,
                "shards_content": self.shards.content_digest,
                "classes": self.shards.classes,
                "depth_target": self.cfg.depth.target,
                "depth_model": target.model_id or self.shards.depth_model,
                "shards_depth_model": self.shards.depth_model,
                "online_depth_steps": target.online_calls,
                "teacher": self.teacher_id,
                "init_from": self.init.lineage[0] if self.init is not None else None,
                "final_metrics": self.last_val,
                "wall_s": self._wall(),
            }
        )
        art.mark_complete()


class _Interval:
    """Loss sums of one log interval, kept on the device until ``host_sums``."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(LOSS_KEYS), device=device, dtype=torch.float64)
        self.n = 0
        self.start = time.perf_counter()

    def add(self, out: dict) -> None:
        self.sums += torch.stack([out[k].double() for k in LOSS_KEYS])
        self.n += 1

    def host_sums(self) -> dict:
        return dict(zip(LOSS_KEYS, self.sums.tolist()), n=float(self.n))

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)
