"""``daat quickstart``: every stage end to end on the built-in synthetic data, on a CPU, in minutes.

    synthetic card → preprocess (oracle depth) → train standard, PGD-AT and DAAT (synthetic preset,
    cached G: the --use-cached-depth equivalent) → evaluate each → report

It is a one-seed experiment (``daat experiment``, spec written to ``<out>/quickstart.yaml``) run
through the same job runner: with 2+ free cores, two steps at a time with the cores split between
them (the standard run first, because DAAT's stand-in teacher on this data is that run,
``loss.teacher: run:standard``, with PGD-AT beside it; then DAAT; then the evaluations, two at a
time).
Artifacts go to ``<out>/artifacts``, the report to ``<out>/report/report.md`` (its path is the last
line printed). Every stage reuses a finished artifact and resumes an unfinished one, so running it
again is quick, and an interrupted quickstart continues where it stopped. Evaluation settings
(val subset sizes for PGD-100 and AutoAttack) come from the synthetic preset's ``eval`` section;
the report states them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from daat.artifacts import atomic_write_text

METHODS = ("standard", "pgd-at", "daat")
SPEC = {
    "name": "quickstart",
    "cards": ["synthetic"],
    "depth": "oracle",
    "scale": ["synthetic"],
    "methods": list(METHODS),
    "seeds": [0],
    "baseline": "pgd-at",
    # G(x) from the shards: the --use-cached-depth equivalent
    "set": {"depth.target": "cached"},
    # 400 val images decode faster than DataLoader workers start
    "evaluate": {"data.num_workers": 0},
}
WHAT = {
    "standard": "standard training (also DAAT's stand-in teacher)",
    "pgd-at": "PGD adversarial training",
    "daat": "DAAT: PGD-AT + depth-attention alignment + feature alignment",
}


def say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


def write_spec(root: Path) -> Path:
    path = root / "quickstart.yaml"
    text = (
        "# The quickstart as a `daat experiment` spec (written by `daat quickstart`).\n"
        + yaml.safe_dump(SPEC, sort_keys=False)
    )
    if not path.is_file() or path.read_text() != text:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


def run(out: str, jobs: int | None = None) -> Path:
    from daat.eval import experiment, experiment_report, report
    from daat.eval import jobs as jobs_mod
    from daat.eval.experiment_spec import load_spec

    start = time.perf_counter()
    root = Path(out)
    arts = str(root / "artifacts")
    spec = load_spec(write_spec(root))
    steps = experiment.plan(spec)
    free = jobs_mod.free_cores()
    if jobs is None:
        jobs = 2 if free >= 2 else 1
    threads = jobs_mod.threads_per_job(jobs, available=free)
    say(f"writing everything under {root} (rerun to reuse/resume)")
    say(
        f"{jobs} step(s) at a time, {threads} torch thread(s) each ({free} of "
        f"{jobs_mod.cores()} cores free; OMP_NUM_THREADS caps the threads, --jobs sets the jobs)"
    )
    say("step 1/4: preprocess the synthetic card (10 classes, 3-D scenes, exact depth = oracle)")
    say("step 2/4: train")
    for method in METHODS:
        say(f"  {method} — {WHAT[method]}")
    say(
        "step 3/4: evaluate each — clean, PGD-10, PGD-100 over ε, AutoAttack, attention under "
        "attack, figures"
    )
    jobs_mod.run_steps(spec, steps, arts, jobs, threads, say)
    summary = experiment_report.collect(spec, steps, arts)
    say(f"  experiment artifact (results.csv, report.md): {summary.path}")
    art = experiment.experiment_artifact(spec, arts)
    made = [experiment.finished(art, s.name, arts) for s in steps if s.kind != "preprocess"]
    say("step 4/4: report (Table 1, Fig. 3, attention under attack, sanity flags, figures)")
    path = report.run([str(a.path) for a in made if a is not None], str(root / "report"))
    say(f"finished in {time.perf_counter() - start:.0f} s; the report is:")
    return path
