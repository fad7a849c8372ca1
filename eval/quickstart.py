"""``daat quickstart``: every stage end to end on the built-in synthetic data, on a CPU, in minutes.

    synthetic card → preprocess (oracle depth) → train standard, PGD-AT and DAAT (synthetic preset,
    cached G: the --use-cached-depth equivalent) → evaluate each → report

Artifacts go to ``<out>/artifacts``, the report to ``<out>/report/report.md`` (its path is the last
line printed). Every stage reuses a finished artifact and resumes an unfinished one, so running it
again is quick, and an interrupted quickstart continues where it stopped. Evaluation settings
(val subset sizes for PGD-100 and AutoAttack) come from the synthetic preset's ``eval`` section;
the report states them. The standard run is also DAAT's stand-in teacher on this data
(``loss.teacher: run:standard``), so training it costs nothing extra.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from daat import config as config_mod

# (preset, what the step is called in the log). Order matters: DAAT's teacher on this data is the
# standard run (the synthetic preset's loss.teacher: run:standard), so it is trained first.
METHODS = (("standard", "standard training (also DAAT's stand-in teacher)"),
           ("pgd-at", "PGD adversarial training"),
           ("daat", "DAAT: PGD-AT + depth-attention alignment + feature alignment"))
TRAIN = ("depth.target=cached",)  # G(x) from the shards: the --use-cached-depth equivalent
EVAL = ("data.num_workers=0",)  # 400 val images decode faster than DataLoader workers start


def say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def _timed(label: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    say(f"{label}: done in {time.perf_counter() - start:.0f} s")
    return result


def _threads() -> None:
    """One intra-op thread unless OMP_NUM_THREADS says otherwise. The quickstart's models are tiny
    (16 tokens), so a second thread buys little, while on a busy 2-core machine a 2-thread torch
    process collapses: measured 46 vs 1,800-2,000 img/s forward+backward with one other process
    running (OpenMP threads spinning for a core they cannot get)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    say(f"torch intra-op threads: {torch.get_num_threads()} (set OMP_NUM_THREADS to change)")


def run(out: str) -> Path:
    from daat.eval import evaluate, report
    from daat.pipeline import preprocess
    from daat.train import loop

    start = time.perf_counter()
    _threads()
    root = Path(out)
    arts = root / "artifacts"
    say(f"writing everything under {root} (rerun to reuse/resume)")
    say("step 1/4: preprocess the synthetic card (10 classes, 3-D scenes, exact depth = oracle)")
    shard_cfg = config_mod.load(["synthetic"], [])
    shards = _timed("preprocess", preprocess.run, shard_cfg, str(arts))
    say(f"  shards: {shards.path}")
    runs = []
    for i, (preset, what) in enumerate(METHODS, 1):
        say(f"step 2/4 ({i}/{len(METHODS)}): train {preset} — {what}")
        cfg = config_mod.load([preset, "synthetic"], list(TRAIN))
        run_art = _timed(f"train {preset}", loop.run, cfg, str(shards.path), str(arts))
        say(f"  run: {run_art.path}")
        runs.append(run_art)
    evals = []
    for i, run_art in enumerate(runs, 1):
        say(f"step 3/4 ({i}/{len(runs)}): evaluate {run_art.config.get('preset')} — clean, "
            f"PGD-10, PGD-100 over ε, AutoAttack, attention under attack, figures")
        ev = _timed("evaluate", evaluate.run, str(run_art.path), None, [], list(EVAL),
                    str(arts))
        say(f"  eval: {ev.path}")
        evals.append(ev)
    say("step 4/4: report (Table 1, Fig. 3, attention under attack, sanity flags, figures)")
    path = report.run([str(a.path) for a in runs + evals], str(root / "report"))
    say(f"finished in {time.perf_counter() - start:.0f} s; the report is:")
    return path
