"""The synthetic cue-conflict split (shape of class i, texture tied to class j != i) and the
shape / texture / shape-bias numbers evaluation reports on it."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_synthetic_card
from test_evaluate import FAST_EVAL, TINY_MODEL, fabricate_run

from daat import config as config_mod
from daat import synthetic as S
from daat.cards import load_card
from daat.errors import DataError
from daat.eval import cue_conflict, evaluate
from daat.models import build_student
from daat.pipeline import preprocess
from daat.pipeline.loaders import EvalReadSpec, eval_pipeline
from daat.pipeline.shards import TEXTURE_LABEL, iter_samples, open_shards

SPEC = {
    "n_train_per_class": 2,
    "n_val_per_class": 1,
    "size": 32,
    "spurious": True,
    "seed": 0,
    "n_cue_conflict_per_pair": 2,
}


def test_every_ordered_pair_appears_equally_often_with_the_trained_texture():
    items = S.items(SPEC, S.CUE_CONFLICT)
    n = len(S.CLASSES)
    assert len(items) == 2 * n * (n - 1) == S.split_size(SPEC, S.CUE_CONFLICT)
    pairs = collections.Counter((it.label, it.texture_class) for it in items)
    assert set(pairs) == {(i, j) for i in range(n) for j in range(n) if i != j}
    assert set(pairs.values()) == {2}
    # every run of C items shows each shape once
    assert all(
        sorted(it.label for it in items[k : k + n]) == list(range(n))
        for k in range(0, len(items), n)
    )
    # the texture family is the one the spurious TRAIN split forces on class j
    train = [
        it for it in S.items({**SPEC, "n_train_per_class": 30}, "train") if it.texture is not None
    ]
    tied = {it.label: it.texture for it in train}
    assert len(tied) == n
    assert all(it.texture == tied[it.texture_class] for it in items)
    assert all(
        S.sample_scene(it.seed, it.label, it.texture).texture.family == tied[it.texture_class]
        for it in items[:n]
    )
    val_seeds = {it.seed for it in S.items(SPEC, "val")}
    assert not val_seeds & {it.seed for it in items}


@pytest.mark.parametrize(
    "spec, split, message",
    [
        ({**SPEC, "spurious": False}, "train", "needs 'spurious: true'"),
        ({**SPEC, "n_cue_conflict_per_pair": 0}, S.CUE_CONFLICT, "n_cue_conflict_per_pair > 0"),
        ({**SPEC, "n_cue_conflict_per_pair": -1}, "train", "integer >= 0"),
    ],
)
def test_bad_cue_conflict_specs_are_named(spec, split, message):
    with pytest.raises(DataError, match=message):
        S.items(spec, split)


def test_the_packaged_spurious_card_has_the_split():
    card = load_card("synthetic-spurious")
    assert S.CUE_CONFLICT in card.splits
    assert card.expected_counts[S.CUE_CONFLICT] == 90 * card.synthetic["n_cue_conflict_per_pair"]
    assert card.splits_to_write(["train", "val"]) == ["train", "val", S.CUE_CONFLICT]
    assert load_card("synthetic").splits_to_write(["train", "val"]) == ["train", "val"]


@pytest.fixture(scope="module")
def spurious_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("spurious")
    card = write_synthetic_card(
        root, "tiny-spurious", **{**SPEC, "size": 64, "n_cue_conflict_per_pair": 1}
    )
    import yaml

    raw = yaml.safe_load(card.read_text())
    raw["splits"] = {"train": "train", "val": "val", S.CUE_CONFLICT: S.CUE_CONFLICT}
    card.write_text(yaml.safe_dump(raw))
    return open_shards(preprocess.run(tiny_config(card), str(root / "artifacts")).path)


def test_preprocess_writes_the_split_with_each_samples_texture_label(spurious_shards):
    assert spurious_shards.splits == ["train", "val", S.CUE_CONFLICT]
    samples = list(iter_samples(spurious_shards, S.CUE_CONFLICT))
    planned = {
        (it.index, it.label, it.texture_class)
        for it in S.items({**SPEC, "n_cue_conflict_per_pair": 1}, S.CUE_CONFLICT)
    }
    stored = {(int(s.key.rsplit("-", 1)[1]), s.label, s.meta[TEXTURE_LABEL]) for s in samples}
    assert stored == planned and len(stored) == 90
    assert all(TEXTURE_LABEL not in s.meta for s in iter_samples(spurious_shards, "val"))


def test_decisions_by_hand():
    pred, shape, texture = np.array([0, 1, 2, 3]), np.array([0, 0, 2, 1]), np.array([1, 1, 3, 2])
    # sample 0: shape; 1: texture; 2: shape; 3: neither
    got = cue_conflict.decisions(pred, shape, texture)
    assert (got["shape"], got["texture"], got["shape_bias"]) == (0.5, 0.25, 2 / 3)
    assert cue_conflict.decisions(np.array([5]), np.array([0]), np.array([1]))["shape_bias"] is None


def test_evaluation_reports_shape_and_texture_decisions(spurious_shards, tmp_path):
    cfg = config_mod.load(["synthetic"], TINY_MODEL + ["seed=0", "data.card=synthetic-spurious"])
    torch.manual_seed(1)
    model = build_student(cfg.model, spurious_shards.num_classes).eval()
    run_dir = fabricate_run(tmp_path, spurious_shards, model, cfg)
    art = evaluate.run(str(run_dir), None, [], FAST_EVAL + ["eval.pgd_steps=2"], str(tmp_path))
    summary = json.loads((art.path / "summary.json").read_text())["cue_conflict"]
    record = json.loads((art.path / "cue_conflict.json").read_text())
    assert summary["n"] == 90 and summary["pairs"] == 90
    parts = list(
        eval_pipeline(
            spurious_shards,
            EvalReadSpec(split=S.CUE_CONFLICT, image_size=32, grid=(4, 4), batch_size=64),
        )
    )
    x, y = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    texture = np.array(record["texture"])
    assert record["shape"] == y.tolist() and record["pred_clean"] == pred.tolist()
    assert summary["clean"]["shape"] == pytest.approx(np.mean(pred == y.numpy()))
    assert summary["clean"]["texture"] == pytest.approx(np.mean(pred == texture))
    assert set(summary) >= {"clean", "pgd-2"} and summary["pgd-2"]["n"] == 90
    assert "cue_conflict.json" in art.manifest["files"]
