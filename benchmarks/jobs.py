"""``daat experiment --jobs``: N one-thread jobs against one job with all the threads.

    python benchmarks/jobs.py                 # 2 PGD-AT cells, jobs=1 (2 threads) vs jobs=2
    python benchmarks/jobs.py --rounds 3 --samples 960

The same two cells (PGD-AT, seeds 0 and 1, the synthetic preset cut to one short epoch, then a
short evaluation) run through ``daat experiment`` twice per round: once with ``--jobs 1`` (one
cell after the other, each with every core as torch threads) and once with ``--jobs N`` (N = the
number of cores, the cells side by side with cores/N threads each). Variants alternate within a
round and every run starts from a fresh output directory (shards are preprocessed once and linked
in), so both pay the same process start-ups. Printed: each run's wall time and the 1-minute load
average before and after it (the machine may be shared: say so with the figure), the per-round
ratio wall(jobs 1) / wall(jobs N) and its median; the LAST stdout line is one JSON object.
OMP_NUM_THREADS is removed from the children's environment (it would cap the split).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spec(samples: int, seeds: int) -> dict:
    return {
        "name": "jobs-benchmark",
        "cards": ["synthetic"],
        "depth": "oracle",
        "scale": ["synthetic"],
        "methods": ["pgd-at"],
        "seeds": list(range(seeds)),
        "baseline": "pgd-at",
        "set": {
            "depth.target": "cached",
            "train.epochs": 1,
            "train.samples_per_epoch": samples,
            "train.val_samples": 100,
        },
        "evaluate": {
            "data.num_workers": 0,
            "eval.n_samples": 200,
            "eval.eps_grid": [4 / 255],
            "eval.autoattack": False,
            "eval.n_figures": 0,
        },
    }


def run_once(spec_path: Path, shards: Path, jobs: int, env: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"jobs{jobs}-", dir=spec_path.parent))
    os.symlink(shards, out / shards.name)  # the preprocess step finds it complete
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "daat.cli",
            "experiment",
            str(spec_path),
            "--out",
            str(out),
            "--jobs",
            str(jobs),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    return {
        "jobs": jobs,
        "wall_s": round(wall, 1),
        "load1_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=640, help="train images per cell")
    args = parser.parse_args()
    from daat import config as config_mod
    from daat.eval.jobs import cores
    from daat.pipeline import preprocess

    n = cores()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    root = Path(tempfile.mkdtemp(prefix="daat-jobs-bench-"))
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec(args.samples, n)))
    shards = preprocess.run(config_mod.load(["synthetic"], []), str(root / "shared")).path
    runs, ratios = [], []
    for r in range(args.rounds):
        pair = {}
        for jobs in (1, n) if r % 2 == 0 else (n, 1):  # alternate which variant goes first
            pair[jobs] = run_once(spec_path, shards, jobs, env)
            print(
                f"round {r}: jobs={jobs} ({n // jobs} thread(s) each): "
                f"{pair[jobs]['wall_s']} s wall (1-min load before/after "
                f"{pair[jobs]['load1_before_after']})",
                flush=True,
            )
            runs.append(pair[jobs])
        ratios.append(pair[1]["wall_s"] / pair[n]["wall_s"])
        print(f"round {r}: wall(jobs 1) / wall(jobs {n}) = {ratios[-1]:.2f}", flush=True)
    print(
        json.dumps(
            {
                "cores": n,
                "cells": n,
                "samples_per_cell": args.samples,
                "runs": runs,
                "ratio_jobs1_over_jobsN": [round(x, 3) for x in ratios],
                "median_ratio": round(statistics.median(ratios), 3),
            }
        )
    )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
