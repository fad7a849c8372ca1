"""``daat experiment``: spec, plan (run:standard dependencies), the job runner (kill -9 then
rerun), --print-commands (same results.csv), collect."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_synthetic_card

from daat import config as config_mod
from daat.artifacts import open_artifact, verify
from daat.errors import DaatError
from daat.eval import experiment as exp
from daat.eval import jobs
from daat.eval.experiment_spec import SpecError, load_spec
from daat.keys import determining

TOY_SET = {
    "data.shard_size": 8,
    "data.num_workers": 0,
    "depth.target": "cached",
    "model.img_size": 32,
    "model.patch_size": 8,
    "model.embed_dim": 32,
    "model.depth": 2,
    "model.num_heads": 2,
    "train.epochs": 1,
    "train.batch_size": 8,
    "train.val_samples": 20,
    "train.val_pgd_steps": 2,
    "train.finetune_epochs": 1,
}
TOY_EVAL = {
    "eval.pgd_steps": 2,
    "eval.pgd_long_steps": 3,
    "eval.eps_grid": [2 / 255, 4 / 255],
    "eval.autoattack": False,
    "eval.n_autoattack": 0,
    "eval.n_figures": 0,
    "eval.chunk_size": 10,
}


def write_spec(root: Path, **changes) -> Path:
    card = write_synthetic_card(root, "toy-card")
    spec = {
        "name": "toy",
        "cards": [card.name],
        "depth": "oracle",
        "scale": ["synthetic"],
        "methods": ["standard", "daat"],
        "seeds": [0, 1],
        "baseline": "standard",
        "set": TOY_SET,
        "evaluate": TOY_EVAL,
        "bootstrap": {"replicates": 200, "seed": 0},
        **changes,
    }
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def daat(*args: str) -> list[str]:
    return [sys.executable, "-m", "daat.cli", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# -- spec and plan (no training) ---------------------------------------------------------------
def test_spec_errors_name_the_key(tmp_path):
    path = write_spec(tmp_path, colour="blue")
    with pytest.raises(SpecError, match="unknown key 'colour'"):
        load_spec(path)
    with pytest.raises(SpecError, match="'baseline' names 'pgd-at'"):
        load_spec(write_spec(tmp_path, baseline="pgd-at"))
    with pytest.raises(SpecError, match="grid axis 'loss.lam'"):
        load_spec(write_spec(tmp_path, grid={"loss.lam": 0.1}))
    bare = tmp_path / "bare.yaml"  # only the required keys: no scale preset, no grid
    bare.write_text("cards: [synthetic]\nmethods: [standard]\nseeds: [0]\nbaseline: standard\n")
    assert load_spec(bare).scale == () and len(exp.plan(load_spec(bare))) == 3
    with pytest.raises(config_mod.ConfigError, match="train.epochz"):
        exp.plan(load_spec(write_spec(tmp_path, set={"train.epochz": 1})))


def test_plan_trains_the_standard_run_first_and_shares_it(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            methods=["pgd-at", "daat"],
            baseline="pgd-at",
            grid={"loss.lam": [0.05, 0.1]},
            grid_methods=["daat"],
        )
    )
    assert spec.cards == (str(tmp_path / "toy-card.yaml"),)  # relative to the spec file
    steps = {s.name: s for s in exp.plan(spec)}
    trains = sorted(n for n in steps if n.startswith("train:"))
    assert trains == sorted(
        [
            "train:toy-card/pgd-at/seed0",
            "train:toy-card/pgd-at/seed1",
            "train:toy-card/standard/seed0",
            "train:toy-card/standard/seed1",
            *(f"train:toy-card/daat/seed{s}/loss.lam={lam}" for s in (0, 1) for lam in (0.05, 0.1)),
        ]
    )
    # pgd-at fine-tunes the standard run (train.init_from); it names run:standard in
    # loss.teacher too, but at gamma0 = 0 that does not act
    pgd = steps["train:toy-card/pgd-at/seed1"]
    assert pgd.deps == ["preprocess:toy-card", "train:toy-card/standard/seed1"]
    assert pgd.refs == {"train.init_from": "train:toy-card/standard/seed1"}
    daat = steps["train:toy-card/daat/seed1/loss.lam=0.1"]
    assert daat.deps == ["preprocess:toy-card", "train:toy-card/standard/seed1"]
    assert daat.refs == {
        "loss.teacher": "train:toy-card/standard/seed1",
        "train.init_from": "train:toy-card/standard/seed1",
    }
    assert "eval:toy-card/standard/seed1" not in steps  # a dependency, not a table cell
    std = exp.cell_config(spec, steps["train:toy-card/standard/seed1"].cell)
    assert (std.attack.steps, std.loss.lam, std.loss.gamma0, std.seed) == (0, 0.0, 0.0, 1)


def test_a_run_teacher_is_keyed_by_its_lineage_not_its_name():
    cfg = config_mod.load(["daat", "synthetic"], ["depth.target=cached"])
    other = config_mod.load(
        ["daat", "synthetic"], ["depth.target=cached", "loss.teacher=run:/some/where/run-1"]
    )
    assert determining("run", cfg) == determining("run", other)
    assert exp.standard_refs(cfg) == ["loss.teacher", "train.init_from"]
    assert exp.standard_refs(config_mod.load(["pgd-at", "synthetic"])) == ["train.init_from"]
    assert exp.standard_refs(config_mod.load(["pgd-at", "synthetic"], ["train.init_from="])) == []
    assert exp.standard_refs(config_mod.load(["standard", "synthetic"])) == []  # it IS that run


def test_print_commands_come_in_dependency_blocks(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    lines = exp.commands(spec, exp.plan(spec), str(tmp_path / "out"))
    cells = [line.split()[4] for line in lines if line.startswith("daat experiment cell")]
    assert cells == [
        "preprocess:toy-card",
        "toy-card/standard/seed0",
        "toy-card/standard/seed1",
        "toy-card/daat/seed0",
        "toy-card/daat/seed1",
    ]
    assert lines[-1].startswith("daat experiment collect")


def test_a_cell_that_shares_another_cells_run_is_printed_after_it(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            methods=["daat-no-align", "daat"],
            baseline="daat-no-align",
            grid={"loss.lam": [0, 0.1]},
            grid_methods=["daat"],
        )
    )
    steps = exp.plan(spec)
    shared = next(s for s in steps if s.name == "eval:toy-card/daat/seed0/loss.lam=0")
    assert shared.deps == ["train:toy-card/daat-no-align/seed0"]  # λ = 0 is DAAT w/o L_align
    lines = exp.commands(spec, steps, str(tmp_path / "out"))
    blocks = [i for i, line in enumerate(lines) if line.startswith("# block")]
    last = lines[blocks[-1] :]
    assert "# block 4: cells whose run another cell trained (evaluate only)" == last[0]
    assert [line.split()[4] for line in last[1:] if line.startswith("daat experiment cell")] == [
        "toy-card/daat/seed0/loss.lam=0",
        "toy-card/daat/seed1/loss.lam=0",
    ]


def test_threads_split_the_cores_and_respect_a_preset_cap(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert jobs.threads_per_job(2, available=2) == 1
    assert jobs.threads_per_job(1, available=8) == 8
    assert jobs.threads_per_job(3, available=8) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert jobs.threads_per_job(1, available=8) == 3


def test_a_failed_step_is_named_with_its_log_and_blocks_what_needs_it(tmp_path, capsys):
    spec = load_spec(write_spec(tmp_path, cards=["no-such-card.yaml"], seeds=[0]))
    steps = exp.plan(spec)
    with pytest.raises(
        DaatError,
        match=r"1 step\(s\) failed \(preprocess:no-such-card.*"
        r"and 4 could not start",
    ):
        jobs.run_steps(spec, steps, str(tmp_path / "out"), 2, 1)
    err = capsys.readouterr().err
    assert "FAILED preprocess:no-such-card (exit 2)" in err
    assert "data card 'no-such-card.yaml' not found" in err  # the end of the step's log


# -- end to end at toy size --------------------------------------------------------------------
def _session_alive(sid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """The toy spec run with --jobs 2, its runner killed with SIGKILL once the standard runs are
    being trained, then run again to the end."""
    root = tmp_path_factory.mktemp("experiment")
    spec, out = write_spec(root), root / "out"
    command = daat("experiment", str(spec), "--out", str(out), "--jobs", "2")
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        steps = None
        while proc.poll() is None and time.perf_counter() - start < 300:
            steps = list(out.glob("experiment-*/steps/*.json"))
            if len(steps) >= 2:  # preprocess and one run done, the rest not
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the experiment finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        # the steps die with the runner; multiprocessing's fork server and resource tracker
        # (which write nothing) notice it and exit within seconds
        # (an empty command line is a process already exiting: its /proc entry is going away)
        steps_alive = [
            c
            for c in map(_cmdline, _session_alive(proc.pid))
            if c
            and "multiprocessing.forkserver" not in c
            and "multiprocessing.resource_tracker" not in c
        ]
        deadline = time.perf_counter() + 15
        while _session_alive(proc.pid) and time.perf_counter() < deadline:
            time.sleep(0.05)
        orphans = steps_alive + [_cmdline(pid) for pid in _session_alive(proc.pid)]
    finally:
        if _session_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    art_dir = next(out.glob("experiment-*"))
    before = {p.name: p.read_text() for p in (art_dir / "steps").glob("*.json")}
    finals = {p: p.stat().st_mtime_ns for p in out.glob("run-*/checkpoints/final.pt")}
    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(f"toy experiment: killed after {len(before)} finished steps, total wall {wall:.1f} s")
    return {
        "spec": spec,
        "out": out,
        "art": art_dir,
        "orphans": orphans,
        "before": before,
        "finals": finals,
        "rerun": rerun,
    }


def test_kill_minus_nine_then_rerun_reuses_finished_cells_and_completes(killed_then_rerun):
    k = killed_then_rerun
    assert k["orphans"] == [], "children outlived the killed runner"
    assert k["rerun"].returncode == 0, k["rerun"].stderr[-3000:]
    assert Path(k["rerun"].stdout.strip().splitlines()[-1]) == k["art"]
    reused = len(k["before"])
    assert f"{reused} already finished (reused)" in k["rerun"].stderr
    for name, text in k["before"].items():  # finished steps were not run again
        assert (k["art"] / "steps" / name).read_text() == text
        step = yaml.safe_load(text)["step"]
        assert f"start {step}\n" not in k["rerun"].stderr
    for path, mtime in k["finals"].items():
        assert path.stat().st_mtime_ns == mtime  # a finished run was not retrained
    art = open_artifact(k["art"], kind="experiment")
    assert art.complete and verify(art.path) == []
    rows = list(csv.DictReader((art.path / "results.csv").open()))
    assert sorted(r["cell"] for r in rows) == [
        "toy-card/daat/seed0",
        "toy-card/daat/seed1",
        "toy-card/standard/seed0",
        "toy-card/standard/seed1",
    ]
    for row in rows:
        summary = open_artifact(k["out"] / row["eval"]).file("summary.json").read_text()
        clean = yaml.safe_load(summary)["accuracy"]["clean"]
        assert float(row["accuracy.clean"]) == clean
        assert row["attention.cos_attention_saliency_clean"]
    report = (art.path / "report.md").read_text()
    assert "| DAAT | clean | s0: " in report and "McNemar" in report
    assert "paper's numbers are not shown" in report and "78.30" not in report
    assert (art.path / "figures" / "fig3c_bands.png").is_file()


def test_printed_commands_run_one_by_one_give_the_same_results(killed_then_rerun, tmp_path):
    """Each printed line is run as the `daat` command it is, through the CLI (in this process,
    with the one torch thread the runner's children had: same floats, same bytes)."""
    import shlex

    import torch
    from click.testing import CliRunner

    from daat.cli import main

    k = killed_then_rerun
    out = tmp_path / "again"
    printed = CliRunner().invoke(
        main, ["experiment", str(k["spec"]), "--print-commands", "--out", str(out)]
    )
    assert printed.exit_code == 0, printed.output
    lines = [line for line in printed.stdout.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 6  # preprocess, 4 cells, collect
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for line in lines:
            words = shlex.split(line)
            assert words[0] == "daat"
            result = CliRunner().invoke(main, words[1:])
            assert result.exit_code == 0, (line, result.output)
    finally:
        torch.set_num_threads(threads)
    art = next(out.glob("experiment-*"))
    assert art.name == k["art"].name
    assert (art / "results.csv").read_text() == (k["art"] / "results.csv").read_text()
    assert open_artifact(art).complete


def test_collect_reports_what_has_finished(killed_then_rerun, tmp_path):
    k = killed_then_rerun
    partial = tmp_path / "partial"
    partial.mkdir()
    spec = load_spec(k["spec"])
    steps = exp.plan(spec)
    art = exp.experiment_artifact(spec, str(partial))
    for name in (
        "preprocess:toy-card",
        "train:toy-card/standard/seed0",
        "eval:toy-card/standard/seed0",
    ):
        made = exp.finished(exp.experiment_artifact(spec, str(k["out"])), name, str(k["out"]))
        os.symlink(made.path, partial / made.id)
        exp.write_record(art, name, made)
    from daat.eval import experiment_report

    got = experiment_report.collect(spec, steps, str(partial))
    assert not got.complete and got.extra["missing"] == [
        "toy-card/standard/seed1",
        "toy-card/daat/seed0",
        "toy-card/daat/seed1",
    ]
    assert len((got.path / "results.csv").read_text().splitlines()) == 2
    assert "1 of 4 cells evaluated" in (got.path / "report.md").read_text()
