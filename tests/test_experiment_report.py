"""The experiment report's tables and figures on hand-made summaries (no training): Table 1 over
seeds, the λ sweep, attention and shape-vs-texture sections, the paper column rule."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from daat import config as config_mod
from daat.eval import experiment_figures, experiment_report
from daat.eval.experiment import Cell, Spec

LAM = "loss.lam"


def summary(clean: float, pgd: float, shape_bias: float) -> dict:
    decisions = {"shape": 0.4, "texture": 0.2, "shape_bias": shape_bias, "n": 90}
    return {
        "accuracy": {
            "clean": clean,
            "pgd-10": pgd,
            "autoattack": pgd - 0.01,
            "pgd-100": {"2/255": pgd + 0.05, "4/255": pgd},
        },
        "table_attack": "pgd-10",
        "counts": {"evaluated": 400, "autoattack": 100},
        "attention": {
            "attack": "pgd-10 at eps 4/255",
            "cos_clean_adv": 0.9,
            "js_clean_adv": 0.01,
            "top20_mass_clean": 0.3,
            "top20_mass_adv": 0.28,
            "cos_attention_saliency_clean": 0.5,
            "top20_uniform_baseline": 0.25,
        },
        "cue_conflict": {"n": 90, "clean": decisions, "pgd-10": decisions},
        "sanity": {"flags": []},
    }


def result(
    method: str,
    seed: int,
    grid: tuple,
    clean: float,
    pgd: float,
    card="synthetic",
    presets=("synthetic",),
):
    cfg = config_mod.to_dict(config_mod.load([method, *presets], [f"data.card={card}"]))
    cell = Cell(f"c/{method}/seed{seed}", card, method, seed, grid)
    return SimpleNamespace(
        cell=cell,
        run=SimpleNamespace(config=cfg, id=f"run-{method}{seed}"),
        eval=SimpleNamespace(id=f"eval-{method}{seed}{grid}"),
        summary=summary(clean, pgd, 0.5 + 0.1 * seed),
        key=(card, method, grid),
    )


def spec(**changes) -> Spec:
    base = dict(
        path=Path("/x/spec.yaml"),
        name="t",
        cards=("synthetic",),
        depth="oracle",
        scale=("synthetic",),
        methods=("pgd-at", "daat"),
        seeds=(0, 1),
        grid=((LAM, (0.05, 0.1)),),
        grid_methods=("daat",),
        settings=(),
        evaluate=(),
        baseline="pgd-at",
    )
    return Spec(**{**base, **changes})


def rows():
    out = [result("pgd-at", s, (), 0.60 + 0.02 * s, 0.40) for s in (0, 1)]
    for lam in (0.05, 0.1):
        out += [result("daat", s, ((LAM, lam),), 0.62 + lam, 0.42 + 0.01 * s) for s in (0, 1)]
    return out


def test_table1_is_mean_std_and_t_interval_over_seeds():
    lines = experiment_report.table1(experiment_report.grouped(rows()))
    assert lines[0] == "| method | seeds | clean | PGD-10 | AutoAttack |"
    pgd_at = next(line for line in lines if line.startswith("| PGD-AT |"))
    half = 12.7062047362 * math.sqrt(2) / math.sqrt(2)  # t_{.975,1} * std(60, 62) / sqrt(2)
    assert f"61.00 ± 1.41 [{61 - half:.2f}, {61 + half:.2f}]" in pgd_at
    assert "| DAAT, loss.lam=0.1 | 2 |" in "\n".join(lines)
    assert "paper" not in lines[0]


def test_paper_column_only_for_the_papers_configuration():
    paper_rows = [
        result("pgd-at", s, (), 0.7, 0.4, card="imagenet100", presets=("imagenet100",))
        for s in (0, 1)
    ]
    lines = experiment_report.table1(experiment_report.grouped(paper_rows + rows()[:2]))
    assert lines[0].endswith("paper clean / PGD-10 / AA |")
    assert sum("78.30 / 52.32 / 46.74" in line for line in lines) == 1  # not beside synthetic
    assert any(
        line.startswith("| PGD-AT [synthetic] |") and line.endswith("| — |") for line in lines
    )


def test_attention_and_cue_sections():
    groups = experiment_report.grouped(rows())
    attention = "\n".join(experiment_report.attention_section(groups))
    assert "cos(A(x), G)" in attention and "0.500 ± 0.000" in attention
    assert "Uniform attention puts 0.250" in attention
    cue = experiment_report.cue_section(groups)
    pgd_at = [line for line in cue if line.startswith("| PGD-AT | clean")][0]
    assert "0.550 ± 0.071" in pgd_at  # shape bias 0.5 and 0.6 over the two seeds


def test_figures_are_drawn_for_the_lambda_grid_and_the_cue_split(tmp_path):
    groups = experiment_report.grouped(rows())
    figures = experiment_figures.draw(
        tmp_path, spec(), groups, experiment_report.eps_curves(groups), "pgd-100"
    )
    assert set(figures) == {"3c", "3d", "cue"}
    for rel, caption in figures.values():
        assert (tmp_path / rel).stat().st_size > 1000 and caption
    curves = experiment_report.eps_curves(groups)
    label, method, eps, means, _ = curves[0]
    assert (label, method) == ("PGD-AT", "pgd-at")
    assert eps == [2 / 255, 4 / 255] and means == [45.0, 40.0]
    assert "3d" not in experiment_figures.draw(
        tmp_path / "b", spec(grid=()), groups, curves, "pgd-100"
    )
