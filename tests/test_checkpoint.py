"""Checkpoint files: atomic one-dict save, weights_only load, RNG round trip, latest pointer,
retention, and the evaluation entry point load_model_for_eval."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from daat import config as config_mod
from daat.artifacts import create_or_open
from daat.errors import TrainingError
from daat.models import build_student
from daat.train import checkpoint as ckpt

TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
]


def _draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    ckpt.save(tmp_path / "a.pt", {"rng": ckpt.rng_state()})
    expected = _draws()
    _draws()  # move every stream on
    ckpt.set_rng_state(ckpt.load(tmp_path / "a.pt")["rng"])
    assert _draws() == expected


def test_save_is_atomic_and_load_uses_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    ckpt.save(path, {"step": 5, "t": torch.arange(4), "nested": {"a": [1, 2.5, "x", None]}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temp file left behind
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = ckpt.load(path)
    assert calls == [True]
    assert state["step"] == 5 and state["nested"] == {"a": [1, 2.5, "x", None]}
    assert torch.equal(state["t"], torch.arange(4))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickled_object_is_refused_with_the_path(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "x": _Evil()}, path)
    with pytest.raises(TrainingError, match="evil.pt"):
        ckpt.load(path)
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2])[:5])
    with pytest.raises(TrainingError, match="junk.pt"):
        ckpt.load(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="not a daat checkpoint"):
        ckpt.load(tmp_path / "other.pt")


def test_latest_pointer_and_pruning(tmp_path):
    assert ckpt.latest(tmp_path) is None
    for step in (10, 20, 30, 40):
        ckpt.save(tmp_path / ckpt.step_name(step), {"step": step})
        ckpt.write_latest(tmp_path, ckpt.step_name(step))
    for epoch in (1, 2, 3):
        ckpt.save(tmp_path / ckpt.epoch_name(epoch), {"epoch": epoch})
    ckpt.write_latest(tmp_path, ckpt.epoch_name(3))
    deleted = ckpt.prune(tmp_path, keep_steps=2, keep_epochs=1)
    assert sorted(p.name for p in deleted) == [
        "epoch-0001.pt",
        "epoch-0002.pt",
        "step-00000010.pt",
        "step-00000020.pt",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "epoch-0003.pt",
        "step-00000030.pt",
        "step-00000040.pt",
    ]
    assert ckpt.latest(tmp_path).name == "epoch-0003.pt"
    ckpt.prune(tmp_path, keep_steps=0, keep_epochs=0)  # the latest one survives regardless
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch-0003.pt"]
    (tmp_path / "epoch-0003.pt").unlink()
    with pytest.raises(TrainingError, match="epoch-0003.pt, which is missing"):
        ckpt.latest(tmp_path)


def test_load_model_for_eval_rebuilds_the_trained_student(tmp_path):
    cfg = config_mod.load(["pgd-at", "synthetic"], TINY)
    torch.manual_seed(0)
    model = build_student(cfg.model, 7)
    with torch.no_grad():
        model.vit.head.weight.add_(1.0)  # not a fresh init: the weights must come from the file
    art = create_or_open(tmp_path, "run", {"k": 1}, config=config_mod.to_dict(cfg))
    art.extra["shards_dir"] = str(tmp_path / "shards-x")
    art.save()
    state = {
        "model": model.state_dict(),
        "config": config_mod.to_dict(cfg),
        "num_classes": 7,
        "projection": {"proj.weight": torch.ones(2, 2)},
    }
    ckpt.save(art.path / "checkpoints" / ckpt.step_name(3), state)
    art.record_file("checkpoints/" + ckpt.step_name(3))
    art.save()
    ckpt.write_latest(art.path / "checkpoints", ckpt.step_name(3))

    loaded, loaded_cfg, shards_dir = ckpt.load_model_for_eval(art.path)  # latest: no final yet
    x = torch.rand(2, 3, 32, 32)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert loaded_cfg == cfg and shards_dir == tmp_path / "shards-x"
    assert set(loaded.state_dict()) == set(model.state_dict())  # no projection in the model

    with torch.no_grad():
        model.vit.head.bias.add_(3.0)
    ckpt.save(art.path / "checkpoints" / ckpt.FINAL, {**state, "model": model.state_dict()})
    art.record_file("checkpoints/" + ckpt.FINAL)
    art.save()
    final, _, _ = ckpt.load_model_for_eval(art.path)  # final.pt wins over latest
    torch.testing.assert_close(final(x), model(x))
    explicit, _, _ = ckpt.load_model_for_eval(
        art.path, art.path / "checkpoints" / "step-00000003.pt"
    )
    assert not torch.allclose(explicit(x), model(x))


def test_load_model_for_eval_errors_name_the_problem(tmp_path):
    with pytest.raises(TrainingError, match="not an artifact"):
        ckpt.load_model_for_eval(tmp_path)
    art = create_or_open(tmp_path, "run", {"k": 2}, config={})
    with pytest.raises(TrainingError, match="no checkpoint yet"):
        ckpt.load_model_for_eval(art.path)
