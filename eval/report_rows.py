"""What ``daat report`` reads: run and eval artifacts (or directories holding them) gathered into
``Row``s, one per evaluation (or per run given without one), each eval paired with its run through
its lineage ([run id, shard id]), or with the run of that id found beside it (same parent
directory); each row carries the eval's summary.json and the run's metrics.jsonl.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from daat.artifacts import Artifact, ArtifactError, list_artifacts, open_artifact
from daat.errors import DaatError
from daat.eval import style
from daat.eval.report_figures import lam, method

METHOD_NAMES = {
    "standard": "Standard",
    "pgd-at": "PGD-AT",
    "daat-no-align": "DAAT w/o L_align",
    "daat": "DAAT",
}
METHOD_ORDER = ("standard", "pgd-at", "daat-no-align", "daat")


@dataclass
class Row:
    """One Table 1 row: a run and (optionally) one of its evaluations."""

    run: Artifact | None
    eval: Artifact | None
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    name: str = ""  # the unique label gather() gives it (base_label, plus an id if shared)

    @property
    def config(self) -> dict:
        return (self.run or self.eval).config

    @property
    def base_label(self) -> str:
        cfg = self.config
        return (
            f"{METHOD_NAMES[method(cfg)]} · {cfg.get('preset') or '-'} "
            f"(seed {cfg.get('seed')}, λ={lam(cfg):g})"
        )

    @property
    def label(self) -> str:
        return self.name or self.base_label


def _expand(paths: list[str]) -> list[Artifact]:
    found: dict[str, Artifact] = {}
    for raw in paths:
        path = Path(raw)
        if (path / "manifest.json").is_file():
            arts = [open_artifact(path)]
        elif path.is_dir():
            listed = [a for a in list_artifacts(path) if a.kind in ("run", "eval")]
            arts = [a for a in listed if a.complete]
            for art in (a for a in listed if not a.complete):
                print(f"[report] skipping incomplete {art.path}", file=sys.stderr)
            if not arts:
                raise DaatError(
                    f"{path} is neither a run/eval artifact nor a directory holding complete ones"
                )
        else:
            raise DaatError(f"{path} is not an artifact directory")
        for art in arts:
            if art.kind not in ("run", "eval"):
                raise DaatError(
                    f"{art.path} is a '{art.kind}' artifact; report takes run and eval artifacts"
                )
            found.setdefault(art.id, art)
    return list(found.values())


def read_metrics(run: Artifact) -> list[dict]:
    path = run.path / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DaatError(f"{path}:{n}: not JSON: {e}") from e
    return [r for r in records if r.get("kind") == "epoch"]


def read_summary(ev: Artifact) -> dict:
    if not ev.complete:
        raise DaatError(
            f"{ev.path} is an incomplete evaluation; rerun `daat evaluate` to finish it"
        )
    try:
        return json.loads(ev.file("summary.json").read_text())
    except (ArtifactError, json.JSONDecodeError) as e:
        raise DaatError(f"{ev.path}: cannot read summary.json: {e}") from e


def _sibling_run(ev: Artifact) -> Artifact | None:
    run_id = (ev.manifest.get("lineage") or [None])[0]
    candidate = ev.path.parent / str(run_id)
    try:
        return open_artifact(candidate, kind="run") if run_id else None
    except ArtifactError:
        return None


def gather(paths: list[str]) -> list[Row]:
    arts = _expand(paths)
    runs = {a.id: a for a in arts if a.kind == "run"}
    rows, evaluated = [], set()
    for ev in (a for a in arts if a.kind == "eval"):
        run_id = (ev.manifest.get("lineage") or [None])[0]
        run = runs.get(run_id) or _sibling_run(ev)
        evaluated.add(run_id)
        rows.append(Row(run, ev, read_summary(ev), read_metrics(run) if run else []))
    for run_id, run in runs.items():
        if run_id not in evaluated:
            rows.append(Row(run, None, {}, read_metrics(run)))
    rows.sort(
        key=lambda r: (
            METHOD_ORDER.index(method(r.config)),
            lam(r.config),
            r.config.get("seed", 0),
            (r.run or r.eval).id,
        )
    )
    names = style.unique_labels(
        {i: r.base_label for i, r in enumerate(rows)},
        {i: (r.eval or r.run).id[:12] for i, r in enumerate(rows)},
    )
    for i, r in enumerate(rows):
        r.name = names[i]
    return rows
