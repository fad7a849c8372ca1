"""What a person sees and does with an artifact root: one line per artifact
(``daat artifacts list``), the "reusing …" / "resuming from …" lines every stage prints, and
removal (``daat artifacts rm`` / ``daat artifacts gc``). Manifests are read through
``daat.artifacts`` only.

Removal contract:
- only an artifact directory directly under its root (directory name = manifest id, not a
  symlink) is ever removed; any other path is refused, so nothing outside the root goes;
- an artifact named, directly or through other artifacts, in the lineage of an artifact that
  stays is never removed;
- a busy artifact (``in_use``: another process holds its writer lock; or an incomplete one
  written to recently) is never removed;
- planning never deletes anything (the CLI's dry run); ``remove`` first renames the directory to a
  hidden ``.removing-<id>`` and drops its manifest, so an interrupted removal never leaves
  something that looks like an artifact (``gc`` finishes such leftovers).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daat.artifacts import MANIFEST, Artifact, ArtifactError, list_artifacts, open_artifact
from daat.errors import DaatError

REMOVING_PREFIX = ".removing-"
ACTIVE_S = 30 * 60  # an incomplete artifact written to this recently may still be being made
_METRICS = "metrics.jsonl"  # the run's per-step / per-epoch log (train/loop.py)


# -- messages --------------------------------------------------------------------------------
def format_time(iso: str | None) -> str:
    """'2025-11-30T15:05:09+00:00' -> '2025-11-30 15:05 UTC' (unknown -> 'unknown time')."""
    if not iso:
        return "unknown time"
    try:
        when = _dt.datetime.fromisoformat(iso).astimezone(_dt.UTC)
    except ValueError:
        return iso
    return when.strftime("%Y-%m-%d %H:%M UTC")


def reuse_line(art: Artifact) -> str:
    """What a stage prints when it finds its artifact complete and returns it as is."""
    return f"reusing {art.path} (finished {format_time(art.finished)}; delete it to redo)"


def resume_line(where: str | os.PathLike, detail: str) -> str:
    """What a stage prints when it continues an unfinished artifact instead of starting over."""
    return f"resuming from {where} ({detail})"


# -- list ------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "—" if x is None else f"{100 * float(x):.1f}%"


def _shards_facts(art: Artifact) -> str:
    splits = art.extra.get("splits", {})
    depth = art.extra.get("depth_model") or art.config.get("depth", {}).get("model", "?")
    card = art.extra.get("card", {}).get("name") or art.config.get("data", {}).get("card", "?")
    if art.complete:
        total = sum(int(s.get("samples", 0)) for s in splits.values())
        per = ", ".join(f"{k} {int(s.get('samples', 0)):,}" for k, s in splits.items())
        samples = f"{total:,} samples ({per})"
    else:
        samples = f"{len(list(art.path.glob('*/*.tar')))} shard files written so far"
    return f"{samples} · depth {depth} · card {Path(str(card)).stem}"


def read_epochs(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's metrics log (empty before its first epoch)."""
    path = run_dir / _METRICS
    if not path.is_file():
        return []
    epochs = []
    for line in path.read_text().splitlines():
        if '"epoch"' in line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; training rewrites it on resume
            if record.get("kind") == "epoch":
                epochs.append(record)
    return epochs


def _run_facts(art: Artifact) -> str:
    epochs = read_epochs(art.path)
    total = art.config.get("train", {}).get("epochs", "?")
    done = len({int(r["epoch"]) for r in epochs})
    last = art.extra.get("final_metrics") or (epochs[-1] if epochs else {})
    steps = last.get("val_pgd_steps", art.config.get("train", {}).get("val_pgd_steps", 10))
    return (
        f"preset {art.config.get('preset') or '-'} · seed {art.config.get('seed', '?')} · "
        f"epochs {done}/{total} · clean {_pct(last.get('val_clean_acc'))} · "
        f"PGD-{steps} {_pct(last.get('val_pgd_acc'))} (training-time val)"
    )


def _eval_facts(art: Artifact) -> str:
    from daat.eval.results import progress  # the zarr layout's one home (lazy: zarr)

    done = progress(art.path / "results.zarr")
    finished = [name for name, (d, n) in done.items() if d >= n]
    text = f"attacks done {len(finished)}/{len(done)}" if done else "no attack started"
    unfinished = [f"{name} {d}/{n} chunks" for name, (d, n) in done.items() if d < n]
    if unfinished:
        text += " (unfinished: " + ", ".join(unfinished) + ")"
    acc = art.extra.get("accuracy", {})
    scalars = [f"{k} {_pct(v)}" for k, v in acc.items() if not isinstance(v, dict)]
    return text + (" · " + " · ".join(scalars) if scalars else "")


_FACTS = {"shards": _shards_facts, "run": _run_facts, "eval": _eval_facts}


def describe(art: Artifact) -> str:
    """One line: id, status, when, what a person wants to know of this kind, lineage."""
    when = art.finished or art.manifest.get("updated")
    facts = _FACTS.get(art.kind, lambda a: f"{len(a.manifest['files'])} files")(art)
    lineage = ", ".join(art.manifest.get("lineage", [])) or "-"
    return (
        f"{art.id:<24} {art.manifest['status']:<10} {format_time(when):<20} {facts} "
        f"· lineage: {lineage}"
    )


# -- busy ------------------------------------------------------------------------------------
def in_use(path: str | os.PathLike) -> str | None:
    """Who holds the artifact's writer lock (``daat.locks``), or None: the one lock check of rm
    and gc."""
    from daat.locks import holder

    return holder(path)


def _last_write(path: Path) -> float:
    newest = path.lstat().st_mtime
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
    return newest


def busy_reason(art: Artifact) -> str | None:
    """Why ``art`` must not be removed now, or None."""
    holder = in_use(art.path)
    if holder:
        return f"in use by {holder} (it holds the writer lock)"
    if not art.complete:
        age = time.time() - _last_write(art.path)
        if age < ACTIVE_S:
            return (
                f"incomplete and written to {age / 60:.0f} min ago: a stage may still be "
                f"making it (retry after {ACTIVE_S // 60} min without writes)"
            )
    return None


# -- removal plans ---------------------------------------------------------------------------
@dataclass
class Removal:
    path: Path
    reason: str
    art: Artifact | None = None  # None for a leftover of an interrupted removal
    bytes: int = 0


@dataclass
class Plan:
    """What a removal would do: ``remove`` goes, ``refused`` stays (path, why)."""

    root: Path
    remove: list[Removal] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.remove)


def _tree_bytes(path: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(parent, f)).st_size for f in files)
    return total


def lineage_closure(arts: dict[str, Artifact], ids: Iterable[str]) -> set[str]:
    """``ids`` plus every id their lineages name, transitively (ids not under the root included)."""
    seen, todo = set(), list(ids)
    while todo:
        art_id = todo.pop()
        if art_id in seen:
            continue
        seen.add(art_id)
        if art_id in arts:
            todo += arts[art_id].manifest.get("lineage", [])
    return seen


def resolve(target: str | os.PathLike, root: Path | None = None) -> Artifact:
    """The artifact a user named (a directory, or an id under ``root``), checked to be a real
    artifact directory directly under its root; anything else raises ``ArtifactError``."""
    path = Path(target)
    if root is not None and not path.exists() and (root / path).exists():
        path = root / path
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link, not an artifact directory; refusing")
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory")
    art = open_artifact(path)
    if path.resolve().name != art.id:
        raise ArtifactError(
            f"{path}: directory name differs from its manifest id {art.id}; refusing"
        )
    if root is not None and path.resolve().parent != root.resolve():
        raise ArtifactError(f"{path} is not directly under {root}; refusing")
    return art


def _artifacts(root: Path) -> tuple[dict[str, Artifact], list[Artifact]]:
    """Every artifact under ``root``, by id (for lineage) and as a list. Only those whose directory
    is named by their id may be removed; a copy under another name still protects its lineage."""
    arts = list_artifacts(root)
    return {a.id: a for a in arts}, arts


def _add(plan: Plan, art: Artifact, reason: str) -> None:
    busy = busy_reason(art)
    if busy:
        plan.refused.append((art.path, busy))
    else:
        plan.remove.append(Removal(art.path, reason, art, _tree_bytes(art.path)))


def plan_rm(targets: list[str]) -> list[Plan]:
    """One plan per root for removing the named artifacts; a target another artifact that stays
    names in its lineage (directly or not) is refused, with the name of that artifact."""
    if not targets:
        raise DaatError("name at least one artifact directory to remove")
    by_root: dict[Path, list[Artifact]] = {}
    for target in targets:
        art = resolve(target)
        by_root.setdefault(art.path.resolve().parent, []).append(art)
    plans = []
    for root, chosen in by_root.items():
        by_id, arts = _artifacts(root)
        gone = {a.id for a in chosen}
        plan = Plan(root)
        for art in chosen:
            users = sorted(
                {
                    a.id
                    for a in arts
                    if a.id not in gone
                    and art.id in lineage_closure(by_id, a.manifest.get("lineage", []))
                }
            )
            if users:
                plan.refused.append(
                    (
                        art.path,
                        f"named in the lineage of {', '.join(users)} "
                        f"(which stays); remove those too, or keep it",
                    )
                )
            else:
                _add(plan, art, "named on the command line")
        plans.append(plan)
    return plans


def plan_gc(root: str | os.PathLike, keep: list[str] = ()) -> Plan:
    """Without ``keep``: every incomplete artifact no complete one names (directly or not).
    With ``keep``: every artifact neither kept nor named by a kept one. Leftovers of interrupted
    removals are always collected."""
    root = Path(root)
    if not root.is_dir():
        raise DaatError(f"{root} is not a directory")
    by_id, arts = _artifacts(root)
    kept = [resolve(k, root).id for k in keep] if keep else [a.id for a in arts if a.complete]
    protected = lineage_closure(by_id, kept)
    plan = Plan(root)
    for art in arts:
        if art.id not in protected and art.path.name == art.id:
            _add(
                plan,
                art,
                "not kept and no kept artifact names it"
                if keep
                else "incomplete, and no complete artifact names it",
            )
    for leftover in sorted(root.glob(f"{REMOVING_PREFIX}*")):
        if leftover.is_dir() and not leftover.is_symlink():
            plan.remove.append(
                Removal(leftover, "left by an interrupted removal", bytes=_tree_bytes(leftover))
            )
    return plan


def remove(plan: Plan) -> list[Path]:
    """Carry out ``plan`` (busy artifacts are checked again first); returns what was removed."""
    removed = []
    for item in plan.remove:
        path = item.path
        if path.resolve().parent != plan.root.resolve() or path.is_symlink():
            raise ArtifactError(f"{path} is not directly under {plan.root}; refusing")
        if item.art is not None:
            now = open_artifact(path)
            busy = busy_reason(now) or (
                "its manifest changed since the plan was made; plan again"
                if now.manifest != item.art.manifest
                else None
            )
            if busy:
                plan.refused.append((path, busy))
                continue
            staging = plan.root / f"{REMOVING_PREFIX}{item.art.id}"
            if staging.exists():
                shutil.rmtree(staging)
            os.rename(path, staging)
            (staging / MANIFEST).unlink()
            path = staging
        shutil.rmtree(path)
        removed.append(item.path)
    return removed


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
