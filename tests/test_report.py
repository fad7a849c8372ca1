"""``daat report``: Table 1 numbers equal the evaluations' summaries; Fig. 3; the paper column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_evaluate import TINY_MODEL, fabricate_run, memorised  # noqa: F401 (fixture)

from daat import config as config_mod
from daat.artifacts import create_or_open
from daat.cli import main
from daat.errors import DaatError
from daat.eval import evaluate, report

EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.chunk_size=20",
    "eval.batch_size=20",
    "eval.eps=8/255",
    "eval.alpha=2/255",
    "eval.eps_grid=[2/255,8/255]",
    "eval.pgd_long_steps=5",
    "eval.n_autoattack=4",
    "eval.n_figures=1",
    "eval.figure_eps=[8/255]",
]


def metrics_lines(seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for epoch in range(3):
        clean, pgd = torch.rand(2, generator=gen).tolist()
        lines.append(
            json.dumps(
                {
                    "kind": "epoch",
                    "epoch": epoch,
                    "step": 10 * (epoch + 1),
                    "val_clean_acc": clean,
                    "val_pgd_acc": pgd * clean,
                    "val_pgd_steps": 3,
                    "val_eps": 4 / 255,
                }
            )
        )
        lines.append(json.dumps({"kind": "step", "epoch": epoch, "step": 5}))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def two_evaluated_runs(memorised, tiny_shards, tmp_path_factory):
    """Two runs of the same (memorised, non-robust: AutoAttack is quick) weights whose configs
    differ only in loss.lam, each evaluated for real."""
    _, model, _ = memorised
    root = tmp_path_factory.mktemp("report_runs")
    pairs = []
    for i, lam in enumerate((0.05, 0.2)):
        cfg = config_mod.load(["daat", "synthetic"], TINY_MODEL + [f"loss.lam={lam}"])
        run_dir = fabricate_run(root, tiny_shards, model, cfg, name=f"lam{lam}")
        (run_dir / "metrics.jsonl").write_text(metrics_lines(i))
        ev = evaluate.run(str(run_dir), None, [], EVAL, str(root))
        pairs.append((run_dir, ev.path))
    return root, pairs


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Table 1 rows keyed by the eval id cell."""
    section = markdown.split("## Table 1", 1)[1].split("\n\n")[1]  # the first table only
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "method":
            rows[cells[9].strip("`")] = cells
    return rows


def test_report_on_two_runs_renders_their_summaries(two_evaluated_runs, tmp_path):
    root, pairs = two_evaluated_runs
    args = [str(p) for pair in pairs for p in pair]
    result = CliRunner().invoke(main, ["report", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path == tmp_path / "report.md"
    markdown = path.read_text()
    rows = table_rows(markdown)
    assert len(rows) == 2
    for run_dir, eval_dir in pairs:
        summary = json.loads((eval_dir / "summary.json").read_text())
        cells = rows[eval_dir.name]
        acc = summary["accuracy"]
        assert cells[4:7] == [f"{100 * acc[k]:.2f}" for k in ("clean", "pgd-10", "autoattack")]
        assert cells[7] == f"{summary['counts']['evaluated']} / {summary['counts']['autoattack']}"
        assert cells[8] == f"`{run_dir.name}`" and cells[0] == "DAAT"
        assert cells[3] == f"{summary['lam']:g}"
    for png in ("fig3a.png", "fig3b.png", "fig3c.png", "fig3d.png"):
        assert (tmp_path / png).is_file() and f"]({png})" in markdown
    for link in re.findall(r"\]\(([^)]+\.png)\)", markdown):
        assert (tmp_path / link).is_file(), link
    assert "attention_eps8.png" in markdown  # the evals' Grad-CAM figures are copied in
    assert "L∞, ε = 8/255" in markdown and "4/255" not in markdown  # the radius actually used
    assert "paper" not in table_rows(markdown)[pairs[0][1].name][-1]


def test_an_eval_alone_is_paired_with_its_run_beside_it(two_evaluated_runs, tmp_path):
    _, pairs = two_evaluated_runs
    rows = report.gather([str(pairs[0][1])])
    assert len(rows) == 1 and rows[0].run is not None and rows[0].run.path == pairs[0][0]
    assert rows[0].metrics and rows[0].metrics[0]["kind"] == "epoch"


def test_bad_inputs_are_named(tiny_shards, tmp_path):
    with pytest.raises(DaatError, match="report takes run and eval"):
        report.run([str(tiny_shards.path)], str(tmp_path))
    with pytest.raises(DaatError, match="not an artifact"):
        report.run([str(tmp_path / "nope.txt")], str(tmp_path))


def handmade(
    root: Path, card: str, preset: list[str], seed: int, acc: dict, overrides: list[str] = ()
) -> list[str]:
    cfg = config_mod.to_dict(
        config_mod.load(preset, [f"data.card={card}", f"seed={seed}", *overrides])
    )
    run = create_or_open(root, "run", {"p": preset, "s": seed}, config=cfg, lineage=["shards-x"])
    run.write_bytes("metrics.jsonl", metrics_lines(seed).encode())
    run.mark_complete()
    ev = create_or_open(root, "eval", {"r": run.id}, config=cfg, lineage=[run.id, "shards-x"])
    ev.write_json(
        "summary.json",
        {
            "accuracy": {**acc, "pgd-100": {"4/255": acc["pgd-10"]}},
            "lam": cfg["loss"]["lam"],
            "table_attack": "pgd-10",
            "counts": {"val": 5000, "evaluated": 5000, "autoattack": 1000},
            "sanity": {"flags": [], "checks": [{"name": "zero_input_gradients", "passed": True}]},
            "attention": None,
            "figures": [],
        },
    )
    ev.mark_complete()
    return [str(run.path), str(ev.path)]


def test_imagenet100_rows_carry_the_papers_numbers(tmp_path):
    paths = handmade(
        tmp_path,
        "imagenet100",
        ["imagenet100", "pgd-at"],
        1,
        {"clean": 0.7, "pgd-10": 0.4, "autoattack": 0.35},
    )
    paths += handmade(
        tmp_path,
        "imagenet100",
        ["imagenet100", "daat"],
        2,
        {"clean": 0.72, "pgd-10": 0.45, "autoattack": 0.41},
    )
    markdown = report.run(paths, str(tmp_path / "out")).read_text()
    rows = list(table_rows(markdown).values())
    by_method = {r[0]: r for r in rows}
    assert "paper's Table 1 numbers (ImageNet-100, ViT-B/14 at 224 px" in markdown
    assert by_method["PGD-AT"][-1] == "78.30 / 52.32 / 46.74"
    assert by_method["DAAT"][-1] == "80.74 / 56.02 / 53.70"
    assert by_method["PGD-AT"][4:7] == ["70.00", "40.00", "35.00"]
    assert by_method["DAAT"][2] == "2"
    assert [r[0] for r in rows] == ["PGD-AT", "DAAT"]  # paper order
    assert "fig3d.png" not in markdown and "not drawn" in markdown  # the two differ in more than λ


@pytest.mark.parametrize(
    "override",
    [
        "model.img_size=112",
        "train.epochs=30",
        "model.name=vit_small_patch16_224",
        "model.embed_dim=192",
        "data.card=synthetic",
    ],
)
def test_no_paper_numbers_beside_a_run_that_is_not_the_papers_configuration(tmp_path, override):
    acc = {"clean": 0.7, "pgd-10": 0.4, "autoattack": 0.35}
    cfg = config_mod.to_dict(config_mod.load(["imagenet100", "pgd-at"], [override]))
    assert not report.paper.matches_paper(cfg)
    paths = handmade(tmp_path, "imagenet100", ["imagenet100", "pgd-at"], 1, acc, [override])
    markdown = report.run(paths, str(tmp_path / "out")).read_text()
    for number in ("78.30", "52.32", "46.74"):
        assert number not in markdown
    assert "paper clean" not in markdown and "paper's numbers are not shown" in markdown
    assert "What was run: card `" in markdown and "seeds 1" in markdown


def test_method_is_read_from_what_the_config_does():
    load = lambda *p: config_mod.to_dict(config_mod.load(list(p)))  # noqa: E731
    assert report.method(load("standard")) == "standard"
    assert report.method(load("pgd-at")) == "pgd-at"
    assert report.method(load("daat-no-align")) == "daat-no-align"
    assert report.method(load("daat", "synthetic")) == "daat"


def test_summaries_written_before_radii_were_fractions_still_read():
    from daat.eval.report_figures import radius_of_key

    assert radius_of_key("4/255", {"table_attack": "pgd-10"}) == pytest.approx(4 / 255)
    assert radius_of_key("4", {"accuracy": {}}) == pytest.approx(4 / 255)  # 1/255 units then
