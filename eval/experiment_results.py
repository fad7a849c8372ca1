"""The finished cells of an experiment as ``Result``s (a cell's run, eval and summary.json, with its
per-sample correctness read from results.zarr on demand), and ``results.csv``: one row per
evaluated cell, every number of its summary.json as a ``section.key`` column (nothing time- or
machine-dependent, so the same cells give the same file however they were run).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daat import config as config_mod
from daat.artifacts import Artifact
from daat.eval import results
from daat.eval.experiment import Cell, Spec, Step, finished

SKIPPED_SUMMARY = {
    "run",
    "checkpoint",
    "checkpoint_sha256",
    "preset",
    "seed",
    "lam",
    "card",
    "attacks",
    "resume",
    "compute_seconds",
    "figures",
    "note",
}


@dataclass
class Result:
    cell: Cell
    run: Artifact
    eval: Artifact
    summary: dict

    @property
    def key(self) -> tuple:
        return (self.cell.card, self.cell.method, self.cell.grid)

    def samples(self) -> dict[str, np.ndarray]:
        """Per-sample correctness from results.zarr: keys, clean, the Table 1 PGD, AutoAttack
        (with its subset mask)."""
        ev = config_mod.from_dict(self.eval.config).eval
        tasks = {t.name: t for t in results.plan_tasks(ev)}
        store = results.Store.open(self.eval.path / "results.zarr", list(tasks.values()))
        out = {
            "key": store.read("key"),
            "clean": store.read_full(tasks["clean"], "correct"),
            "pgd": store.read_full(tasks[results.table_task_name(ev)], "correct"),
        }
        aa = tasks.get(results.autoattack_task_name(ev))
        if aa is not None:
            out["autoattack"] = store.read_full(aa, "correct")
            out["autoattack_mask"] = store.member("autoattack")
        return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, bool) or value is None or isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = value
    return flat


def summary_numbers(summary: dict) -> dict:
    numbers = _flatten({k: v for k, v in summary.items() if k not in SKIPPED_SUMMARY})
    flags = summary.get("sanity", {}).get("flags", [])
    return {
        **{k: v for k, v in numbers.items() if not k.startswith("sanity.")},
        "sanity.flags": len(flags),
    }


def gather(spec: Spec, steps: list[Step], out: str, art: Artifact) -> tuple[list[Result], list]:
    """(finished evaluated cells, names of the cells still missing), in plan order."""
    done, missing = [], []
    for step in (s for s in steps if s.kind == "eval"):
        ev = finished(art, step.name, out)
        run = finished(art, step.deps[0], out)
        if ev is None or run is None:
            missing.append(step.cell.name)
            continue
        summary = json.loads((ev.path / "summary.json").read_text())
        done.append(Result(step.cell, run, ev, summary))
    return done, missing


def results_csv(spec: Spec, rows: list[Result]) -> str:
    axes = [k for k, _ in spec.grid]
    numbers = [summary_numbers(r.summary) for r in rows]
    metric_cols: list[str] = []
    for n in numbers:
        metric_cols += [k for k in n if k not in metric_cols]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cell", "card", "method", "seed", *axes, "run", "eval", *metric_cols])
    for r, n in zip(rows, numbers):
        grid = dict(r.cell.grid)
        writer.writerow(
            [
                r.cell.name,
                Path(r.cell.card).stem,
                Path(r.cell.method).stem,
                r.cell.seed,
                *(grid.get(a, "") for a in axes),
                r.run.id,
                r.eval.id,
                *("" if n.get(c) is None else repr(n[c]) for c in metric_cols),
            ]
        )
    return buf.getvalue()
