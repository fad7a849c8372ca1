"""``daat experiment SPEC.yaml``: a grid of runs (cards x methods x seeds x grid values), trained
and evaluated with every existing artifact reused, then aggregated with statistics.

The spec (its keys and checks) is ``experiment_spec.py``.

Steps (``Plan``): ``preprocess:CARD`` once per card, ``train:CELL`` and ``eval:CELL`` per cell
(``CARD/METHOD/seedS[/key=value...]``). A config value ``run:standard`` that changes what a run
learns (``loss.teacher`` when γ0 > 0, say) makes its cell depend on the ``standard`` run of the
same card, seed and settings (``train.teacher.standard_config``): that run is trained first as
an ordinary cell and the value becomes ``run:run-…`` (its artifact id, looked up under the same
``--out``; see ``train.teacher.run_dir``), so teacher resolution never trains anything. Each
finished step leaves a record (the artifact id it made) in the experiment artifact's
``steps/``; ``collect`` aggregates whatever has finished. Running a step reuses or resumes the
artifact its config determines, so a rerun after kill -9 continues where it stopped.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daat import config as config_mod
from daat.artifacts import (
    Artifact,
    ArtifactError,
    atomic_write_json,
    content_key,
    create_or_open,
    open_artifact,
)
from daat.errors import DaatError
from daat.eval.experiment_spec import Spec, SpecError, override

STEPS_DIR = "steps"


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    name: str
    card: str
    method: str
    seed: int
    grid: tuple[tuple[str, Any], ...]  # this cell's grid values ((), for methods off the grid)
    standardised: bool = False  # a dependency: the standard run of its method's config
    evaluated: bool = True  # a table cell (dependency-only runs are not evaluated)


@dataclass
class Step:
    name: str  # preprocess:CARD | train:CELL | eval:CELL
    kind: str
    card: str
    cell: Cell | None = None
    deps: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # config key -> train step it names


def card_label(card: str) -> str:
    return Path(card).stem if card.endswith((".yaml", ".yml")) or "/" in card else card


def prep_config(spec: Spec, card: str) -> config_mod.Config:
    return config_mod.load(
        list(spec.scale),
        [
            f"data.card={card}",
            f"depth.model={spec.depth}",
            *(override(k, v) for k, v in spec.settings),
        ],
    )


def cell_config(
    spec: Spec, cell: Cell, resolved: dict[str, str] | None = None
) -> config_mod.Config:
    """The cell's config; ``resolved`` maps keys that said ``run:standard`` to ``run:run-…``."""
    from daat.train.teacher import standard_config

    overrides = [
        f"data.card={cell.card}",
        f"depth.model={spec.depth}",
        f"seed={cell.seed}",
        *(override(k, v) for k, v in spec.settings + cell.grid),
    ]
    cfg = config_mod.load([cell.method, *spec.scale], overrides)
    if cell.standardised:
        cfg = standard_config(cfg)
    for key, ref in (resolved or {}).items():
        config_mod.apply_override(cfg, override(key, ref))
    return cfg


def standard_refs(cfg: config_mod.Config) -> list[str]:
    """Config keys whose value is ``run:standard`` AND changes what the run learns (a key the
    run's content key ignores, like loss.teacher at γ0 = 0, or train.init_from on the standard
    run itself, is no dependency): ``train.standard_first.acting_refs``, the rule ``daat train``
    resolves with."""
    from daat.train.standard_first import acting_refs

    return acting_refs(cfg)


def _run_key(card: str, cfg: config_mod.Config) -> str:
    from daat.keys import determining

    return content_key({"card": card, "run": determining("run", cfg)})


def plan(spec: Spec) -> list[Step]:
    """Every step in a fixed order (preprocess, train, eval); loads every config, so a bad key
    fails here, before anything runs."""
    steps = [Step(f"preprocess:{card_label(c)}", "preprocess", c) for c in spec.cards]
    labels = [card_label(c) for c in spec.cards]
    if len(set(labels)) != len(labels):
        raise SpecError(f"{spec.path}: two cards share the name {labels}; rename one")
    for card in spec.cards:
        prep_config(spec, card)
    cells = []
    for card, method, seed in itertools.product(spec.cards, spec.methods, spec.seeds):
        axes = spec.grid if method in spec.grid_methods else ()
        for values in itertools.product(*(v for _, v in axes)):
            grid = tuple(zip((k for k, _ in axes), values))
            name = "/".join(
                [card_label(card), Path(method).stem, f"seed{seed}", *(f"{k}={v}" for k, v in grid)]
            )
            cells.append(Cell(name, card, method, seed, grid))
    trains: dict[str, Step] = {}  # run key -> the train step that makes it
    pending = []
    for cell in cells:
        cfg = cell_config(spec, cell)
        key = _run_key(cell.card, cfg)
        train = trains.get(key)
        if train is None:
            train = trains[key] = Step(
                f"train:{cell.name}",
                "train",
                cell.card,
                cell,
                [f"preprocess:{card_label(cell.card)}"],
            )
        steps.append(Step(f"eval:{cell.name}", "eval", cell.card, cell, [train.name]))
        pending.append((cell, cfg, key))
    for cell, cfg, key in pending:
        refs = standard_refs(cfg)
        if not refs:
            continue
        std = Cell(
            f"{card_label(cell.card)}/standard/seed{cell.seed}",
            cell.card,
            cell.method,
            cell.seed,
            cell.grid,
            standardised=True,
            evaluated=False,
        )
        std_key = _run_key(cell.card, cell_config(spec, std))
        if std_key == key:
            continue  # the run is its own standard run: nothing to depend on
        dep = trains.get(std_key)
        if dep is None:
            taken = {s.name for s in trains.values()}
            name = std.name if f"train:{std.name}" not in taken else f"{std.name}/{std_key[:8]}"
            dep = trains[std_key] = Step(
                f"train:{name}",
                "train",
                cell.card,
                Cell(name, std.card, std.method, std.seed, std.grid, True, False),
                [f"preprocess:{card_label(std.card)}"],
            )
        train = trains[key]
        train.refs.update({k: dep.name for k in refs})
        if dep.name not in train.deps:
            train.deps.append(dep.name)
    steps[len(spec.cards) : len(spec.cards)] = list(trains.values())
    return steps


# -- the experiment artifact and its step records ---------------------------------------------
def experiment_artifact(spec: Spec, out: str | os.PathLike, lock: bool = False) -> Artifact:
    """The experiment's artifact. Steps write only their own record file in it (no lock: many run
    at once); ``collect``, the one writer of its manifest, opens it with ``lock=True``."""
    return create_or_open(
        out,
        "experiment",
        spec.determining(),
        config={**spec.determining(), "spec": str(spec.path)},
        lock=lock,
    )


def record_relpath(step: str) -> str:
    """Where a step's record lives inside the experiment artifact."""
    return f"{STEPS_DIR}/" + step.replace(":", "-").replace("/", "+") + ".json"


def _record_path(art: Artifact, step: str) -> Path:
    return art.path / record_relpath(step)


def write_record(art: Artifact, step: str, made: Artifact) -> None:
    atomic_write_json(
        _record_path(art, step), {"step": step, "artifact": made.id, "kind": made.kind}
    )


def finished(art: Artifact, step: str, out: str | os.PathLike) -> Artifact | None:
    """The complete artifact a step recorded, or None (no record, or it is gone/incomplete)."""
    path = _record_path(art, step)
    if not path.is_file():
        return None
    try:
        made = open_artifact(Path(out) / json.loads(path.read_text())["artifact"])
    except (ArtifactError, json.JSONDecodeError, KeyError):
        return None
    return made if made.complete else None


def _needed(art: Artifact, step: str, out: str, by: str) -> Artifact:
    made = finished(art, step, out)
    if made is None:
        raise DaatError(
            f"step '{by}' needs '{step}' to have finished first; run "
            f"`daat experiment cell SPEC {step}` (or the whole experiment)"
        )
    return made


# -- running one step (in this process) --------------------------------------------------------
def run_step(spec: Spec, steps: list[Step], name: str, out: str) -> Artifact:
    """Run (or reuse, or resume) one step and record what it made. A bare cell name runs that
    cell's train and eval steps in turn (what --print-commands prints)."""
    by_name = {s.name: s for s in steps}
    if name not in by_name:
        wanted = [f"train:{name}", f"eval:{name}"]
        if not any(w in by_name for w in wanted):
            raise DaatError(f"'{name}' is not a step of {spec.path} (see --print-commands)")
        made = None
        for step in (w for w in wanted if w in by_name):
            made = run_step(spec, steps, step, out)
        return made
    step = by_name[name]
    art = experiment_artifact(spec, out)
    if step.kind == "preprocess":
        from daat.pipeline import preprocess

        made = preprocess.run(prep_config(spec, step.card), out)
    elif step.kind == "train":
        from daat.train import loop

        shards = _needed(art, step.deps[0], out, name)
        resolved = {key: f"run:{_needed(art, dep, out, name).id}" for key, dep in step.refs.items()}
        made = loop.run(cell_config(spec, step.cell, resolved), str(shards.path), out)
    else:
        from daat.eval import evaluate

        run = _needed(art, step.deps[0], out, name)
        made = evaluate.run(
            str(run.path), None, [], [override(k, v) for k, v in spec.evaluate], out
        )
    if os.environ.get("RANK", "0") == "0":
        write_record(art, name, made)
    return made


def commands(spec: Spec, steps: list[Step], out: str) -> list[str]:
    """Shell lines, in blocks that must run in order; lines inside a block are independent."""
    import shlex

    base = f"{spec.launcher} experiment cell {shlex.quote(str(spec.path))}"
    outs = f"--out {shlex.quote(str(Path(out).resolve()))}"
    needed = {d for s in steps if s.kind == "train" for d in s.deps if d.startswith("train:")}
    trains = [s.name.split(":", 1)[1] for s in steps if s.kind == "train"]
    shared = [
        s.name.split(":", 1)[1]
        for s in steps  # cells evaluating another cell's run
        if s.kind == "eval" and s.name.split(":", 1)[1] not in trains
    ]
    blocks = [
        ("preprocess each card once", [s.name for s in steps if s.kind == "preprocess"]),
        (
            "runs that other runs name with run:standard",
            [n for n in trains if f"train:{n}" in needed],
        ),
        (
            "every other cell (train, then evaluate)",
            [n for n in trains if f"train:{n}" not in needed],
        ),
        ("cells whose run another cell trained (evaluate only)", shared),
    ]
    lines = [
        f"# {spec.name}: {len(trains) + len(shared)} cells. Run the blocks in order; the "
        f"lines of a block are independent (one Slurm array each)."
    ]
    for number, (what, names) in enumerate([b for b in blocks if b[1]], 1):
        lines.append(f"# block {number}: {what}")
        lines += [f"{base} {shlex.quote(n)} {outs}" for n in names]
    lines += [
        "# afterwards (also fine while cells are still missing): aggregate",
        f"daat experiment collect {shlex.quote(str(spec.path))} {outs}",
    ]
    return lines
