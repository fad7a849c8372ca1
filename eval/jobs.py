"""The job runner of ``daat experiment`` and ``daat quickstart``: each step runs in its own child
process (what ``daat experiment cell SPEC STEP``, the command --print-commands prints, runs), N at a
time, the cores split between them (each child gets OMP_NUM_THREADS = torch threads = threads; see
``threads_per_job``).

Why processes and not threads of one: torch parallelises one small model badly (on the 2-core
CPU two one-thread runs finish sooner than the same two runs one after the other with two threads
each; ``benchmarks/jobs.py`` measures it), and a child that dies takes nothing else with it.
Children are forked from a server process that has imported torch, timm and the stages once
(multiprocessing "forkserver"), so a step does not pay seconds of imports. On Linux every child is
killed with its parent (PR_SET_PDEATHSIG; the server exits with the runner), so after a kill -9
of the runner no orphan keeps writing an artifact the rerun is about to resume.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daat.errors import DaatError
from daat.eval.experiment import Spec, Step, experiment_artifact, finished

_POLL_S = 0.1
_LOG_TAIL = 15
_PRELOAD = [
    "torch",
    "timm",
    "daat.eval.experiment",
    "daat.pipeline.preprocess",
    "daat.train.loop",
    "daat.eval.evaluate",
    "daat.models",
]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores not busy with other work, judged by the 1-minute load average (at least 1)."""
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, cores() - busy)


def threads_per_job(jobs: int, available: int | None = None) -> int:
    """``available`` (default: all) cores split between ``jobs``; an OMP_NUM_THREADS already in
    the environment is an upper bound (how a shared machine keeps every torch job at one)."""
    threads = max(1, (available or cores()) // max(1, jobs))
    preset = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(preset)) if preset.isdigit() and int(preset) > 0 else threads


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@dataclass
class _Running:
    step: Step
    proc: multiprocessing.Process
    log: Path
    start: float


def _context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _child(spec_path: str, step: str, out: str, log: str, threads: int) -> None:
    """One step in a child process: output to ``log``, ``threads`` torch threads."""
    if sys.platform == "linux":
        _die_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    from daat.errors import DaatError
    from daat.eval import experiment
    from daat.eval.experiment_spec import load_spec

    torch.set_num_threads(threads)
    try:
        spec = load_spec(spec_path)
        print(experiment.run_step(spec, experiment.plan(spec), step, out).path, flush=True)
    except DaatError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _priority(steps: list[Step]) -> Callable[[Step], tuple]:
    """Preprocess first, then the runs others wait for, then the other runs, then evaluations
    (the longest chains start first, so the cores stay busy to the end); ties in plan order."""
    named = {d for s in steps if s.kind == "train" for d in s.deps}
    order = {s.name: i for i, s in enumerate(steps)}
    rank = {"preprocess": 0, "eval": 3}

    def key(step: Step) -> tuple:
        if step.kind == "train":
            return (1 if step.name in named else 2, order[step.name])
        return (rank[step.kind], order[step.name])

    return key


def say_experiment(message: str) -> None:
    print(f"[experiment] {message}", file=sys.stderr, flush=True)


def run_steps(
    spec: Spec,
    steps: list[Step],
    out: str,
    jobs: int,
    threads: int,
    say: Callable[[str], None] = say_experiment,
) -> None:
    """Run every unfinished step, ``jobs`` at a time with ``threads`` threads each, in
    dependency order. Raises DaatError naming the failed steps and their logs (the finished
    ones stay recorded: a rerun continues)."""
    art = experiment_artifact(spec, out)
    done = {s.name for s in steps if finished(art, s.name, out) is not None}
    waiting = [s for s in steps if s.name not in done]
    say(
        f"{len(steps)} steps: {len(done)} already finished (reused), {len(waiting)} to run, "
        f"{jobs} at a time with {threads} thread(s) each; logs in {art.path / 'logs'}"
    )
    priority = _priority(steps)
    running: dict[str, _Running] = {}
    failed: dict[str, str] = {}
    ctx = _context()
    while waiting or running:
        ready = sorted((s for s in waiting if all(d in done for d in s.deps)), key=priority)
        for step in ready[: max(0, jobs - len(running))]:
            waiting.remove(step)
            running[step.name] = _start(ctx, spec, step, out, art.path / "logs", threads)
            say(f"start {step.name}")
        if not running:
            break  # what is left waits on a failed step
        time.sleep(_POLL_S)
        for name, job in list(running.items()):
            rc = job.proc.exitcode
            if rc is None:
                continue
            job.proc.close()
            del running[name]
            seconds = time.perf_counter() - job.start
            made = finished(art, name, out) if rc == 0 else None
            if made is not None:
                done.add(name)
                say(
                    f"done {name} in {seconds:.0f} s{_outcome(made)} ({len(done)}/{len(steps)} "
                    f"steps finished)"
                )
            else:
                failed[name] = str(job.log)
                tail = job.log.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
                say(
                    f"FAILED {name} (exit {rc}) after {seconds:.0f} s; the end of {job.log}:\n"
                    + "\n".join(f"    {line}" for line in tail)
                )
    if failed or waiting:
        blocked = [s.name for s in waiting]
        raise DaatError(
            f"{len(failed)} step(s) failed ({', '.join(failed)}; logs: "
            f"{', '.join(failed.values())}) and {len(blocked)} could not start; fix "
            f"the cause and rerun: finished steps are reused"
        )


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _outcome(made) -> str:
    """A few words on what a finished step measured (for the progress lines)."""
    if made.kind == "run":
        val = made.extra.get("final_metrics") or {}
        if "val_clean_acc" not in val:
            return ""
        return (
            f": val clean {_pct(val['val_clean_acc'])}, PGD-{val.get('val_pgd_steps')} "
            f"{_pct(val.get('val_pgd_acc'))} on {val.get('val_n')} images"
        )
    if made.kind == "eval":
        acc = made.extra.get("accuracy") or {}
        parts = [f"{k} {_pct(v)}" for k, v in acc.items() if not isinstance(v, dict)]
        flags = made.extra.get("flags") or []
        return ": " + ", ".join(parts) + (f", SANITY FLAGS: {', '.join(flags)}" if flags else "")
    return ""


def _start(ctx, spec: Spec, step: Step, out: str, log_dir: Path, threads: int) -> _Running:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (step.name.replace(":", "-").replace("/", "+") + ".log")
    with open(log, "a") as sink:
        sink.write(
            f"# daat experiment cell {spec.path} {step.name} --out {out} ({threads} thread(s))\n"
        )
    proc = ctx.Process(
        target=_child, args=(str(spec.path), step.name, str(out), str(log), threads), name=step.name
    )
    proc.start()
    return _Running(step, proc, log, time.perf_counter())
