"""The evaluation's sanity checks on models that are broken in the quiet ways: a 100-class model
at chance and a constant predictor that no attack moves. Neither may read "all passed"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_evaluate import FAST_EVAL, TINY_MODEL, fabricate_run

from daat import config as config_mod
from daat.eval import evaluate, sanity
from daat.eval.sanity import Evidence
from daat.models import build_student

GRID = [k / 255 for k in (1, 2, 4, 6, 8, 10)]


def evidence(labels, clean_pred, robust_by_eps, num_classes, table_pred=None) -> Evidence:
    """Evidence for an evaluation where the Table 1 PGD and every PGD-100 radius see all samples;
    ``robust_by_eps`` maps eps -> bool[n] (the first radius also stands for the Table 1 PGD)."""
    n = len(labels)
    clean = clean_pred == labels
    first = next(iter(robust_by_eps.values()))
    table_pred = clean_pred if table_pred is None else table_pred
    return Evidence(
        labels=labels,
        clean=clean,
        clean_pred=clean_pred,
        table=first,
        table_pred=table_pred,
        aa=np.zeros(n, bool),
        aa_pred=np.full(n, -1),
        aa_mask=np.zeros(n, bool),
        longs={config_mod.fraction_text(e): r for e, r in robust_by_eps.items()},
        long_preds={config_mod.fraction_text(e): clean_pred for e in robust_by_eps},
        long_mask=np.ones(n, bool),
        zero_grad=np.zeros(n, bool),
        num_classes=num_classes,
    )


def config(grid=GRID):
    return config_mod.load([], [f"eval.eps_grid=[{', '.join(map(str, grid))}]"])


def flag_names(cfg, ev) -> set[str]:
    flags, checks = sanity.sanity(cfg, ev)
    assert {f["name"] for f in flags} <= {c["name"] for c in checks}
    return {f["name"] for f in flags}


def test_a_hundred_class_model_at_one_percent_is_flagged(capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 10)
    pred = (labels + 1 + rng.integers(0, 99, labels.size)) % 100  # wrong everywhere...
    pred[::100] = labels[::100]  # ...but on 1% of the samples
    assert (pred == labels).mean() == pytest.approx(0.01)
    robust = {e: np.zeros(labels.size, bool) for e in GRID}
    flags = flag_names(config(), evidence(labels, pred, robust, num_classes=100))
    assert flags == {"near_chance"}
    sanity.shout(sanity.sanity(config(), evidence(labels, pred, robust, 100))[0])
    err = capsys.readouterr().err
    assert "all passed" not in err and "[near_chance]" in err


def test_a_constant_predictor_that_no_attack_moves_is_flagged(capsys):
    labels = np.repeat(np.arange(10), [20, 10, 10, 10, 10, 10, 10, 10, 5, 5])  # class 0: 20%
    pred = np.zeros(labels.size, dtype=np.int64)  # always class 0: 20% accuracy, 2x chance
    robust = {e: pred == labels for e in GRID}  # 20% at every radius up to 10/255
    flags, _ = sanity.sanity(config(), evidence(labels, pred, robust, num_classes=10))
    names = {f["name"] for f in flags}
    assert {"one_class_dominates", "robust_flat_in_eps"} <= names and "near_chance" not in names
    sanity.shout(flags)
    err = capsys.readouterr().err
    assert "all passed" not in err and "SANITY FLAG" in err


def test_a_model_that_learned_something_passes_the_model_checks():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 40)
    pred = np.where(rng.random(labels.size) < 0.8, labels, (labels + 3) % 10)
    clean = pred == labels
    robust = {e: clean & (rng.random(labels.size) > 0.12 * k) for k, e in enumerate(GRID)}
    robust = {
        e: np.logical_and.reduce([robust[g] for g in GRID[: i + 1]]) for i, e in enumerate(GRID)
    }  # nested: a sample broken at ε stays broken beyond
    assert flag_names(config(), evidence(labels, pred, robust, num_classes=10)) == set()


def test_attacks_that_raise_accuracy_are_flagged():
    labels = np.repeat(np.arange(10), 10)
    pred = np.where(np.arange(100) % 2 == 0, labels, (labels + 1) % 10)  # clean 50%
    robust = {e: np.zeros(100, bool) for e in GRID}
    ev = evidence(labels, pred, robust, 10, table_pred=labels.copy())  # 100% at the PGD points
    assert "clean_below_robust" in flag_names(config(), ev)


def constant_model(tiny_shards, cfg, favourite: int):
    """A tiny ViT whose head always picks ``favourite`` (a large bias) although its logits still
    depend on the input (small random weights): gradients are not zero, predictions never move."""
    torch.manual_seed(0)
    model = build_student(cfg.model, tiny_shards.num_classes)
    with torch.no_grad():
        model.vit.head.weight.mul_(1e-3)
        model.vit.head.bias.zero_()
        model.vit.head.bias[favourite] = 50.0
    return model.eval()


def test_evaluate_flags_a_constant_predictor_end_to_end(tiny_shards, tmp_path, capsys):
    cfg = config_mod.load(["synthetic"], TINY_MODEL)
    model = constant_model(tiny_shards, cfg, favourite=3)
    run_dir = fabricate_run(tmp_path / "runs", tiny_shards, model, cfg, name="constant")
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL + ["eval.chunk_size=20", "eval.eps_grid=[1/255, 10/255]"],
        str(tmp_path),
    )
    data = json.loads((art.path / "summary.json").read_text())
    names = {f["name"] for f in data["sanity"]["flags"]}
    assert {"near_chance", "one_class_dominates", "robust_flat_in_eps"} <= names
    assert "zero_input_gradients" not in names  # the gradients are real; only the output is not
    err = capsys.readouterr().err
    assert "all passed" not in err and "[one_class_dominates]" in err
