"""``daat artifacts list / rm / gc``: per-kind descriptions, dry runs that delete nothing, and
removal that never breaks a kept artifact's lineage nor leaves the artifact root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from daat import artifact_admin as admin
from daat import config as config_mod
from daat.artifacts import ArtifactError, create_or_open, list_artifacts
from daat.cli import main

HOLD_LOCK = (
    "import sys, time\nfrom daat.locks import WriterLock\n"
    "WriterLock.acquire(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(600)"
)


def make(root: Path, kind: str, name: str, lineage=(), complete=True, config=None):
    art = create_or_open(root, kind, {"name": name}, config=config or {}, lineage=list(lineage))
    art.write_bytes("payload.bin", name.encode() * 100)
    if complete:
        art.mark_complete()
    art.unlock()  # the stage that made it has finished (or died)
    return art


def age(path: Path, seconds: float = 2 * admin.ACTIVE_S) -> None:
    """Make every file of ``path`` look last written ``seconds`` ago (no stage is making it)."""
    when = time.time() - seconds
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(parent, name), (when, when))
    os.utime(path, (when, when))


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def root(tmp_path):
    """shards S ← run R ← eval E (all complete); an incomplete run R2 on S; an incomplete,
    unreferenced shards S2; an incomplete run R3 that a complete eval E3 names (evaluating an
    unfinished run is allowed); all idle for an hour."""
    root = tmp_path / "artifacts"
    s = make(root, "shards", "s")
    r = make(root, "run", "r", [s.id])
    e = make(root, "eval", "e", [r.id, s.id])
    r2 = make(root, "run", "r2", [s.id], complete=False)
    s2 = make(root, "shards", "s2", complete=False)
    r3 = make(root, "run", "r3", [s.id], complete=False)
    e3 = make(root, "eval", "e3", [r3.id, s.id])
    age(root)
    ids = dict(s=s.id, r=r.id, e=e.id, r2=r2.id, s2=s2.id, r3=r3.id, e3=e3.id)
    return root, ids


def ids_of(plan) -> set[str]:
    return {item.path.name for item in plan.remove}


def test_gc_removes_only_unreferenced_incomplete_artifacts_and_dry_run_deletes_nothing(root):
    root, ids = root
    before = tree(root)
    plan = admin.plan_gc(root)
    assert ids_of(plan) == {ids["r2"], ids["s2"]}  # R3 is incomplete but the complete E3 names it
    assert tree(root) == before  # planning is the dry run: nothing touched
    removed = admin.remove(plan)
    assert {p.name for p in removed} == {ids["r2"], ids["s2"]}
    left = {a.id for a in list_artifacts(root)}
    assert left == {ids[k] for k in ("s", "r", "e", "r3", "e3")}
    assert not list(root.glob(f"{admin.REMOVING_PREFIX}*"))


def test_gc_with_keep_never_removes_what_a_kept_lineage_names(root):
    root, ids = root
    plan = admin.plan_gc(root, keep=[ids["e"]])
    going = ids_of(plan)
    assert going == {ids[k] for k in ("r2", "s2", "r3", "e3")}
    assert not going & {ids["e"], ids["r"], ids["s"]}  # E and everything its lineage names stay
    admin.remove(plan)
    assert {a.id for a in list_artifacts(root)} == {ids["e"], ids["r"], ids["s"]}


def test_rm_refuses_an_artifact_that_a_staying_one_names(root):
    root, ids = root
    (plan,) = admin.plan_rm([str(root / ids["s"])])
    assert not plan.remove and plan.refused
    assert ids["r"] in plan.refused[0][1] and ids["e"] in plan.refused[0][1]
    (plan,) = admin.plan_rm([str(root / ids["e"]), str(root / ids["r"])])  # E names R: together
    assert ids_of(plan) == {ids["e"], ids["r"]} and not plan.refused


def test_rm_refuses_paths_that_are_not_artifacts(root, tmp_path):
    root, ids = root
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="not an artifact"):
        admin.plan_rm([str(tmp_path / "plain")])
    with pytest.raises(ArtifactError, match="not an artifact"):
        admin.plan_rm([str(tmp_path / "missing")])
    link = tmp_path / "link"
    link.symlink_to(root / ids["r2"], target_is_directory=True)
    with pytest.raises(ArtifactError, match="symbolic link"):
        admin.plan_rm([str(link)])
    renamed = tmp_path / "renamed"
    (root / ids["s2"]).rename(renamed)
    with pytest.raises(ArtifactError, match="differs from its manifest id"):
        admin.plan_rm([str(renamed)])
    elsewhere = tmp_path / ids["s2"]
    renamed.rename(elsewhere)
    with pytest.raises(ArtifactError, match="not directly under"):
        admin.plan_gc(root, keep=[str(elsewhere)])


def test_busy_artifacts_are_never_removed(root):
    root, ids = root
    held = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root / ids["r2"])], stdout=subprocess.PIPE, text=True
    )
    assert held.stdout.readline().strip() == "locked"  # another process holds r2's writer lock
    assert "pid" in admin.in_use(root / ids["r2"]) and admin.in_use(root / ids["s2"]) is None
    (root / ids["s2"] / "payload.bin").write_bytes(b"just written")  # a stage is making it
    plan = admin.plan_gc(root)
    assert not plan.remove
    reasons = dict((p.name, why) for p, why in plan.refused)
    assert "lock" in reasons[ids["r2"]] and "written to" in reasons[ids["s2"]]
    assert admin.remove(plan) == [] and len(list_artifacts(root)) == 7
    held.kill()
    held.wait()
    assert admin.in_use(root / ids["r2"]) is None  # a killed holder's lock is gone


def test_an_artifact_that_changed_after_planning_is_kept(root):
    root, ids = root
    plan = admin.plan_gc(root)
    art = admin.resolve(root / ids["s2"])
    art.mark_complete()  # a stage finished it between the dry run and the removal
    age(root)
    removed = admin.remove(plan)
    assert [p.name for p in removed] == [ids["r2"]] and (root / ids["s2"]).is_dir()
    assert any("changed since the plan" in why for _, why in plan.refused)


def test_an_interrupted_removal_never_looks_like_an_artifact_and_gc_finishes_it(root):
    root, ids = root
    leftover = root / f"{admin.REMOVING_PREFIX}{ids['s2']}"
    (root / ids["s2"]).rename(leftover)
    (leftover / "manifest.json").unlink()  # the state remove() leaves if killed before rmtree
    assert ids["s2"] not in {a.id for a in list_artifacts(root)}
    plan = admin.plan_gc(root)
    assert leftover in [item.path for item in plan.remove]
    admin.remove(plan)
    assert not leftover.exists()


def test_cli_rm_and_gc_are_dry_runs_unless_yes(root):
    root, ids = root
    before = tree(root)
    out = CliRunner().invoke(main, ["artifacts", "gc", str(root)])
    assert out.exit_code == 0, out.output
    assert "would remove" in out.output and "dry run: nothing removed" in out.output
    assert tree(root) == before
    refused = CliRunner().invoke(
        main, ["artifacts", "rm", str(root / ids["s"]), str(root / ids["r2"]), "--yes"]
    )
    assert refused.exit_code == 1 and "lineage" in refused.output
    assert tree(root) == before  # rm is all or nothing
    done = CliRunner().invoke(main, ["artifacts", "rm", str(root / ids["r2"]), "--yes"])
    assert done.exit_code == 0 and "removed" in done.output
    assert not (root / ids["r2"]).exists()
    gone = CliRunner().invoke(main, ["artifacts", "gc", str(root), "--keep", ids["e"], "--yes"])
    assert gone.exit_code == 0, gone.output
    assert {a.id for a in list_artifacts(root)} == {ids["e"], ids["r"], ids["s"]}
    bad = CliRunner().invoke(main, ["artifacts", "rm", str(root)])
    assert bad.exit_code == 2 and "not an artifact" in bad.output


# -- list -------------------------------------------------------------------------------------
def test_list_says_what_each_kind_holds(tiny_shards, tmp_path):
    from daat.eval import results

    shards_line = admin.describe(tiny_shards)
    assert "50 samples (train 30, val 20)" in shards_line and "depth oracle" in shards_line
    cfg = config_mod.load(["daat", "synthetic"], ["train.epochs=4", "seed=3"])
    run = create_or_open(
        tmp_path, "run", {"r": 1}, config=config_mod.to_dict(cfg), lineage=[tiny_shards.id]
    )
    lines = [
        {
            "kind": "epoch",
            "epoch": e,
            "val_clean_acc": 0.5 + e / 10,
            "val_pgd_acc": 0.25,
            "val_pgd_steps": 10,
        }
        for e in range(2)
    ]
    (run.path / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "epoch", "epo'
    )  # cut short by a kill
    run_line = admin.describe(run)
    assert "preset daat+synthetic" in run_line and "seed 3" in run_line
    assert "epochs 2/4" in run_line and "clean 60.0%" in run_line and "PGD-10 25.0%" in run_line
    ev_cfg = config_mod.load([], ["eval.eps_grid=[2/255,4/255]", "eval.chunk_size=5"]).eval
    ev = create_or_open(tmp_path, "eval", {"e": 1}, config={}, lineage=[run.id, tiny_shards.id])
    tasks = results.plan_tasks(ev_cfg)
    store = results.Store.create_or_open(
        ev.path / "results.zarr",
        tasks,
        n=10,
        n_val=20,
        chunk_size=5,
        subsets={"long": np.arange(10), "autoattack": np.arange(5)},
    )
    for task in tasks[:2]:
        store.mark_done(task, 0)
        store.mark_done(task, 1)
    store.mark_done(tasks[2], 0)
    eval_line = admin.describe(ev)
    assert (
        f"attacks done 2/{len(tasks)}" in eval_line and "pgd-100_eps2_long 1/2 chunks" in eval_line
    )
    listed = CliRunner().invoke(main, ["artifacts", "list", str(tmp_path)])
    assert (
        listed.exit_code == 0 and "epochs 2/4" in listed.output and "attacks done" in listed.output
    )


def test_reuse_and_resume_lines():
    assert admin.format_time("2025-11-30T15:05:09+00:00") == "2025-11-30 15:05 UTC"
    assert (
        admin.resume_line("run-x/checkpoints/step-1.pt", "step 1 of 4")
        == "resuming from run-x/checkpoints/step-1.pt (step 1 of 4)"
    )
