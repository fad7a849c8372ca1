"""``daat evaluate``: exact PGD-10 against an independent PGD, PGD-100 against pyautoattack's
APGD-CE, resume after a kill (counting the chunks computed), the gradient-masking flag, figures."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daat import config as config_mod
from daat.artifacts import create_or_open, open_artifact, verify
from daat.attacks import pgd
from daat.eval import attacks_eval, evaluate, results
from daat.models import DaatViT, build_student
from daat.pipeline.loaders import EvalReadSpec, eval_pipeline
from daat.train import checkpoint as ckpt

TINY_MODEL = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
]
FAST_EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.n_figures=0",
    "eval.pgd_long_steps=3",
    "eval.eps_grid=[4/255]",
    "eval.autoattack=false",
    "eval.n_autoattack=0",
]


# -- helpers ---------------------------------------------------------------------------------
def val_batch(shards, image_size=32, grid=(4, 4)):
    spec = EvalReadSpec(image_size=image_size, grid=grid, batch_size=64)
    parts = list(eval_pipeline(shards, spec))
    return (
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        torch.cat([p[3] for p in parts]),
    )


def fabricate_run(root: Path, shards, model, cfg, name="r") -> Path:
    """A complete run artifact around ``model`` (what `daat train` leaves), without training."""
    art = create_or_open(
        root, "run", {"test": name}, config=config_mod.to_dict(cfg), lineage=[shards.id]
    )
    ckpt.save(
        art.path / "checkpoints" / "final.pt",
        {
            "model": model.state_dict(),
            "config": config_mod.to_dict(cfg),
            "num_classes": shards.num_classes,
            "step": 0,
            "epoch": 0,
        },
    )
    art.record_file("checkpoints/final.pt")
    art.extra.update(
        shards_dir=str(shards.path), shards_content=shards.content_digest, classes=shards.classes
    )
    art.mark_complete()
    art.unlock()
    return art.path


@pytest.fixture(scope="module")
def memorised(tiny_shards, tmp_path_factory):
    """A tiny ViT that has memorised the 20 val images (clean accuracy 1, not robust), as a run."""
    cfg = config_mod.load(["synthetic"], TINY_MODEL + ["seed=0"])
    torch.manual_seed(0)
    model = build_student(cfg.model, tiny_shards.num_classes)
    x, y, _ = val_batch(tiny_shards)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all(), "the fixture model should memorise val"
    return fabricate_run(tmp_path_factory.mktemp("runs"), tiny_shards, model, cfg), model, cfg


def summary_of(art) -> dict:
    return json.loads((art.path / "summary.json").read_text())


# -- Table 1 PGD: exactly the documented attack ----------------------------------------------
def independent_pgd10(model, x, y, eps, alpha, steps, seed):
    """Minimal PGD: uniform random start, sign steps, L-inf + box projection; a sample is robust
    if clean-correct and correct at every iterate including the last."""
    gen = torch.Generator().manual_seed(seed)
    x_k = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    for _ in range(steps):
        x_k.requires_grad_(True)
        logits = model(x_k)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_k)
        ok &= logits.argmax(1) == y
        x_k = torch.min(torch.max(x_k.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        ok &= model(x_k).argmax(1) == y
    return ok


def test_pgd10_accuracy_equals_an_independent_minimal_pgd(memorised, tiny_shards, tmp_path):
    run_dir, model, _ = memorised
    # eps 3/255 leaves part of the memorised model's val set correct, so the comparison bites
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL
        + ["eval.eps=3/255", "eval.alpha=0.75/255", "eval.chunk_size=20", "eval.batch_size=20"],
        str(tmp_path),
    )
    x, y, _ = val_batch(tiny_shards)
    seed = attacks_eval.task_seed(0, "pgd-10_eps3", 0)  # the documented per-chunk seed
    expected = independent_pgd10(model, x, y, 3 / 255, 0.75 / 255, 10, seed)
    store = results.Store.open(
        art.path / "results.zarr", results.plan_tasks(config_mod.from_dict(art.config).eval)
    )
    got = store.read("pgd-10_eps3/correct")
    np.testing.assert_array_equal(got, expected.numpy())
    acc = summary_of(art)["accuracy"]
    assert acc["pgd-10"] == expected.double().mean().item()
    assert 0 < acc["pgd-10"] < acc["clean"] == 1.0
    assert verify(art.path) == []


def test_until_fooled_pgd_matches_daat_attacks_pgd(memorised, tiny_shards):
    _, model, _ = memorised
    x, y, _ = val_batch(tiny_shards)
    ok = torch.ones_like(y, dtype=torch.bool)
    ours = attacks_eval.pgd_until_fooled(
        model,
        x,
        y,
        ok,
        eps=3 / 255,
        alpha=0.75 / 255,
        steps=20,
        generator=torch.Generator().manual_seed(3),
    )
    ref = pgd(
        model,
        x,
        y,
        3 / 255,
        0.75 / 255,
        20,
        generator=torch.Generator().manual_seed(3),
        check_final=True,
    )
    np.testing.assert_array_equal(ours.correct.numpy(), (~ref.fooled_any).numpy())
    survivors = ours.correct
    assert 0 < survivors.sum() < len(y)
    torch.testing.assert_close(ours.x_adv[survivors], ref.x_adv[survivors], atol=0, rtol=0)
    assert (ours.pred[~survivors] != y[~survivors]).all()  # stopped at a fooling iterate


def test_long_pgd_may_take_the_table_pgd_steps(memorised, tmp_path):
    run_dir, _, _ = memorised
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL
        + ["eval.chunk_size=20", "eval.pgd_long_steps=10", "eval.eps_grid=[2/255, 4/255]"],
        str(tmp_path),
    )
    assert art.complete
    acc = summary_of(art)["accuracy"]
    assert isinstance(acc["pgd-10"], float) and set(acc["pgd-10-long"]) == {"2/255", "4/255"}
    store = results.Store.open(
        art.path / "results.zarr", results.plan_tasks(config_mod.from_dict(art.config).eval)
    )
    assert {t.name for t in store.tasks} == {
        "clean",
        "pgd-10_eps4",
        "pgd-10_eps2_long",
        "pgd-10_eps4_long",
    }


# -- PGD-100 is not much weaker than APGD-CE on an adversarially trained model -----------------
def quadrant_data(n, seed, size=32):
    """Class = the quadrant holding a brighter square (contrast varies per sample)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.35 + 0.2 * torch.rand(n, 3, size, size, generator=gen)
    half = size // 2
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, :, r * half + 3 : (r + 1) * half - 3, c * half + 3 : (c + 1) * half - 3] += (
            0.1 + 0.3 * torch.rand(1, generator=gen).item()
        )
    return x.clamp(0, 1), y


def test_long_pgd_is_within_a_few_samples_of_apgd_ce():
    from pyautoattack import AutoAttack

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 4),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = quadrant_data(1024, 0)
    for step in range(120):  # PGD-3 adversarial training at 8/255
        idx = torch.randint(0, 1024, (64,), generator=torch.Generator().manual_seed(step))
        x_adv = pgd(
            model,
            x[idx],
            y[idx],
            8 / 255,
            4 / 255,
            3,
            generator=torch.Generator().manual_seed(step),
        ).x_adv
        loss = F.cross_entropy(model(x_adv), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = quadrant_data(64, 1)
    eps = 20 / 255  # beyond the training radius: partly robust, so the attacks are compared
    ok = torch.ones_like(yt, dtype=torch.bool)
    ours = attacks_eval.pgd_until_fooled(
        model,
        xt,
        yt,
        ok,
        eps=eps,
        alpha=eps / 4,
        steps=100,
        generator=torch.Generator().manual_seed(0),
    )
    adversary = AutoAttack(
        model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce"], seed=0
    )
    x_apgd, _ = adversary.run_standard_evaluation(xt, yt, batch_size=64)
    with torch.no_grad():
        apgd_correct = int((model(x_apgd).argmax(1) == yt).sum())
        clean_correct = int((model(xt).argmax(1) == yt).sum())
    ours_correct = int(ours.correct.sum())
    assert clean_correct >= 56 and 8 <= apgd_correct <= 56, "the model must be partly robust"
    assert ours_correct <= apgd_correct + 3
    weak = attacks_eval.pgd_until_fooled(
        model,
        xt,
        yt,
        ok,
        eps=eps,
        alpha=eps / 40,
        steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert int(weak.correct.sum()) > apgd_correct + 3  # the bound above can fail


def test_table_pgd_is_within_a_few_samples_of_apgd_ce_on_a_vit_student():
    """The same comparison on the student architecture (a tiny timm ViT through build_student,
    attention tap hooks in place) at Table 1's own settings: PGD-10, ε = 4/255, α = 1/255.
    pyautoattack's APGD-CE runs as in its standard version (100 iterations, 1 restart)."""
    from pyautoattack import AutoAttack

    from daat.config import ModelConfig

    torch.manual_seed(0)
    model = build_student(
        ModelConfig(
            name="vit_small_patch16_224",
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        ),
        4,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = quadrant_data(1024, 0)
    for step in range(150):  # clean training: accurate, and partly robust at 4/255
        idx = torch.randint(0, 1024, (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = quadrant_data(64, 1)
    eps, alpha = 4 / 255, 1 / 255
    with torch.no_grad():
        clean_ok = model(xt).argmax(1) == yt

    def ours(steps, step_size, fn=attacks_eval.pgd_eval):
        out = fn(
            model,
            xt,
            yt,
            clean_ok,
            eps=eps,
            alpha=step_size,
            steps=steps,
            generator=torch.Generator().manual_seed(0),
        )
        return int(out.correct.sum())

    adversary = AutoAttack(
        model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce"], seed=0
    )
    adversary.apgd.n_restarts = 1  # the standard version's APGD-CE ('custom' defaults to 5)
    x_apgd, _ = adversary.run_standard_evaluation(xt, yt, batch_size=64)
    with torch.no_grad():
        apgd_correct = int((model(x_apgd).argmax(1) == yt).sum())
    pgd10, pgd100 = ours(10, alpha), ours(100, eps / 4, attacks_eval.pgd_until_fooled)
    # measured when written: clean 64, PGD-10 42, PGD-100 41, APGD-CE 40, weak 64
    assert int(clean_ok.sum()) >= 60 and 16 <= apgd_correct <= 56, "must be partly robust"
    assert pgd10 <= apgd_correct + 4 and pgd100 <= apgd_correct + 3, (pgd10, pgd100, apgd_correct)
    assert ours(2, eps / 40) > apgd_correct + 4  # a weak attack breaks the bound: it can fail


@pytest.mark.slow
def test_evaluate_autoattack_equals_pyautoattack_called_directly(memorised, tiny_shards, tmp_path):
    """Per sample, the AutoAttack column is what pyautoattack's standard version gives on the
    same subset with the documented seed (eval seed, task, chunk): nothing lost or added between
    the package and the zarr store. Slow: every sample that survives APGD goes through FAB-T and
    5,000 Square queries, twice (about a minute on the 2-core CPU)."""
    from pyautoattack import AutoAttack

    run_dir, model, _ = memorised
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL
        + [
            "eval.autoattack=true",
            "eval.n_autoattack=4",
            "eval.eps=2/255",
            "eval.alpha=0.5/255",
            "eval.chunk_size=20",
            "eval.batch_size=20",
        ],
        str(tmp_path),
    )
    tasks = results.plan_tasks(config_mod.from_dict(art.config).eval)
    store = results.Store.open(art.path / "results.zarr", tasks)
    subset = store.positions["autoattack"]
    got = store.read("autoattack_eps2/correct")
    x, y, _ = val_batch(tiny_shards)
    xs, ys = x[subset], y[subset]
    seed = attacks_eval.task_seed(0, "autoattack_eps2", 0) % (2**31)
    adversary = AutoAttack(model, norm="Linf", eps=2 / 255, version="standard", seed=seed)
    adversary.verbose = False
    x_adv, _ = adversary.run_standard_evaluation(xs, ys, batch_size=20)
    with torch.no_grad():
        expected = (model(xs).argmax(1) == ys) & (model(x_adv).argmax(1) == ys)
    np.testing.assert_array_equal(got, expected.numpy())
    assert 0 < got.sum() < len(got), "partly robust, so the comparison bites"
    assert summary_of(art)["accuracy"]["autoattack"] == got.mean()


# -- resume ----------------------------------------------------------------------------------
RESUME_EVAL = [
    "data.num_workers=0",
    "device=cpu",
    "eval.chunk_size=5",
    "eval.batch_size=20",
    "eval.eps=16/255",
    "eval.alpha=4/255",
    "eval.eps_grid=[4/255,16/255]",
    "eval.pgd_long_steps=3",
    "eval.n_autoattack=0",
    "eval.n_pgd_long=10",
    "eval.n_figures=2",
    "eval.figure_eps=[4/255]",
]


def test_killed_evaluation_recomputes_only_unfinished_chunks(
    memorised, tmp_path, monkeypatch, capsys
):
    run_dir, _, _ = memorised
    real = attacks_eval.autoattack_eval
    calls = {"n": 0}

    def dies_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise RuntimeError("simulated kill in the middle of AutoAttack")
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attacks_eval, "autoattack_eval", dies_after_two)
    with pytest.raises(RuntimeError, match="simulated kill"):
        evaluate.run(str(run_dir), None, [], RESUME_EVAL, str(tmp_path))
    (eval_dir,) = tmp_path.glob("eval-*")
    cfg = config_mod.from_dict(open_artifact(eval_dir).config)
    tasks = results.plan_tasks(cfg.eval)
    store = results.Store.open(eval_dir / "results.zarr", tasks)
    before = store.done_counts()
    total = {t.name: store.n_chunks(t.group) for t in tasks}
    assert before["autoattack_eps16"] == 2 and total["autoattack_eps16"] == 4
    assert not open_artifact(eval_dir).complete

    monkeypatch.setattr(attacks_eval, "autoattack_eval", real)
    capsys.readouterr()
    art = evaluate.run(str(run_dir), None, [], RESUME_EVAL, str(tmp_path))
    assert art.path == eval_dir and art.complete
    assert (
        f"[evaluate] resuming from {eval_dir} ({sum(before.values())} of "
        f"{sum(total.values())} chunk-tasks already done)" in capsys.readouterr().err
    )
    resume = summary_of(art)["resume"]
    assert resume["chunks_computed"] == {t: total[t] - before[t] for t in total}
    assert resume["chunks_computed"]["autoattack_eps16"] == 2
    assert resume["chunk_tasks_reused"] == sum(before.values())
    # the resumed result equals what an uninterrupted evaluation gives
    fresh = evaluate.run(str(run_dir), None, [], RESUME_EVAL, str(tmp_path / "fresh"))
    assert summary_of(fresh)["accuracy"] == summary_of(art)["accuracy"]
    for rel in ("figures/attention_eps4.png",):
        assert (art.path / rel).is_file() and rel in art.manifest["files"]
    assert verify(art.path) == []
    # a complete evaluation is reused as is
    capsys.readouterr()
    again = evaluate.run(str(run_dir), None, [], RESUME_EVAL, str(tmp_path))
    assert again.path == art.path and summary_of(again) == summary_of(art)
    assert f"[evaluate] reusing {art.path} (finished 20" in capsys.readouterr().err


def test_a_progress_bar_per_attack_on_stderr_unless_tqdm_disable(
    memorised, tmp_path, monkeypatch, capsys
):
    run_dir, _, _ = memorised
    evaluate.run(str(run_dir), None, [], FAST_EVAL + ["eval.chunk_size=10"], str(tmp_path / "a"))
    err = capsys.readouterr().err
    for title in ("clean", "PGD-10 ε=4/255", "PGD-3 ε=4/255"):  # FAST_EVAL: PGD-100 is PGD-3
        bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(title)]
        assert bar and "20/20" in bar[-1] and "img" in bar[-1], (title, err[-2000:])
    monkeypatch.setenv("TQDM_DISABLE", "1")
    evaluate.run(str(run_dir), None, [], FAST_EVAL + ["eval.chunk_size=10"], str(tmp_path / "b"))
    err = capsys.readouterr().err
    assert "20/20" not in err and "PGD-10 ε=4/255" not in err


# -- gradient masking is flagged -------------------------------------------------------------
class RoundingViT(DaatViT):
    """Gradient masking planted: the input is rounded to 1/8 steps, so every input gradient is 0."""

    def normalize(self, x):
        return super().normalize(torch.round(x * 8) / 8)


def test_gradient_masking_model_raises_a_loud_sanity_flag(memorised, tmp_path, monkeypatch, capsys):
    run_dir, model, cfg = memorised
    from daat.train import checkpoint as ckpt_mod

    def load_masked(run, checkpoint=None, device="cpu"):
        masked = build_student(cfg.model, 10)
        masked.load_state_dict(model.state_dict())
        masked.__class__ = RoundingViT
        return masked.eval(), cfg, Path(open_artifact(run).extra["shards_dir"])

    monkeypatch.setattr(ckpt_mod, "load_model_for_eval", load_masked)
    art = evaluate.run(str(run_dir), None, [], FAST_EVAL + ["eval.chunk_size=20"], str(tmp_path))
    flags = {f["name"]: f for f in summary_of(art)["sanity"]["flags"]}
    assert "zero_input_gradients" in flags
    assert flags["zero_input_gradients"]["numbers"]["samples"] > 0
    err = capsys.readouterr().err
    assert "SANITY FLAG" in err and "zero_input_gradients" in err


def test_clean_model_raises_no_zero_gradient_flag(memorised, tmp_path):
    run_dir, _, _ = memorised
    art = evaluate.run(str(run_dir), None, [], FAST_EVAL + ["eval.chunk_size=20"], str(tmp_path))
    names = {c["name"]: c["passed"] for c in summary_of(art)["sanity"]["checks"]}
    assert names["zero_input_gradients"] is True


def test_figures_with_a_depth_model(memorised, tiny_dpt_dir, tmp_path):
    run_dir, _, _ = memorised
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL
        + [
            "eval.chunk_size=20",
            "eval.n_figures=3",
            "eval.figure_eps=[2/255,8/255]",
            f"eval.depth_model={tiny_dpt_dir}",
        ],
        str(tmp_path),
    )
    files = summary_of(art)["figures"]
    stems = [
        "figures/attention_eps2",
        "figures/attention_eps8",
        "figures/depth_eps2",
        "figures/depth_eps8",
    ]
    assert files == [f"{s}.{ext}" for s in stems for ext in ("png", "pdf")]
    from PIL import Image

    for rel in (f for f in files if f.endswith(".png")):
        with Image.open(art.path / rel) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert verify(art.path) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluation_on_cuda(memorised, tmp_path):
    run_dir, model, _ = memorised
    art = evaluate.run(
        str(run_dir),
        None,
        [],
        FAST_EVAL
        + [
            "device=cuda",
            "eval.chunk_size=20",
            "eval.autoattack=true",
            "eval.n_autoattack=5",
            "eval.eps=8/255",
            "eval.alpha=2/255",
            "eval.n_figures=2",
            "eval.figure_eps=[8/255]",
        ],
        str(tmp_path),
    )
    summary = summary_of(art)
    assert summary["accuracy"]["clean"] == 1.0 and summary["accuracy"]["autoattack"] is not None
    x, y = (
        t.cuda() for t in val_batch(open_artifact(open_artifact(run_dir).extra["shards_dir"]))[:2]
    )
    cuda_model = copy.deepcopy(model).cuda()
    ok = torch.ones_like(y, dtype=torch.bool)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ours = attacks_eval.pgd_until_fooled(
        cuda_model, x, y, ok, eps=3 / 255, alpha=0.75 / 255, steps=10, generator=gen
    )
    ref = pgd(
        cuda_model,
        x,
        y,
        3 / 255,
        0.75 / 255,
        10,
        generator=torch.Generator(device="cuda").manual_seed(0),
        check_final=True,
    )
    assert torch.equal(ours.correct, (~ref.fooled_any).cpu())


# -- small pieces ----------------------------------------------------------------------------
def test_subsets_are_nested_fixed_draws_that_do_not_alias_with_class_order():
    big, small = results.subset_positions(400, 200, seed=0), results.subset_positions(400, 100, 0)
    assert len(small) == 100 and set(small) <= set(big) and list(big) == sorted(set(big))
    np.testing.assert_array_equal(small, results.subset_positions(400, 100, 0))  # fixed
    assert len(set(small % 10)) == 10  # interleaved classes (synthetic val): all 10 present
    np.testing.assert_array_equal(results.subset_positions(5, 0), np.arange(5))
    np.testing.assert_array_equal(results.subset_positions(5, 9), np.arange(5))


def test_model_section_cannot_change_and_oracle_depth_is_refused(memorised):
    run_dir, _, _ = memorised
    run_art = open_artifact(run_dir)
    with pytest.raises(config_mod.ConfigError, match="model.depth"):
        evaluate.eval_config(run_art, [], ["model.depth=3"])
    with pytest.raises(config_mod.ConfigError, match="loss.lam"):
        evaluate.eval_config(run_art, [], ["loss.lam=0.5"])
    with pytest.raises(config_mod.ConfigError, match="oracle"):
        evaluate.eval_config(run_art, [], ["eval.depth_model=oracle"])
    cfg = evaluate.eval_config(
        run_art, [], ["eval.n_autoattack=7", "device=cpu", "data.num_workers=1"]
    )
    assert cfg.eval.n_autoattack == 7 and cfg.model.embed_dim == 32
    assert cfg.preset == run_art.config["preset"]


# -- slow: a real kill -9 and torchrun -------------------------------------------------------
def _cli(*args):
    return [sys.executable, "-m", "daat.cli", *args]


@pytest.mark.slow
def test_kill_minus_nine_mid_autoattack_then_resume(memorised, tmp_path):
    run_dir, _, _ = memorised
    sets = [a for s in RESUME_EVAL + ["eval.eps=4/255", "eval.alpha=1/255"] for a in ("--set", s)]
    proc = subprocess.Popen(
        _cli("evaluate", "--run", str(run_dir), "--out", str(tmp_path), *sets),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600
    done_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("eval-*/results.zarr/autoattack_eps4/done/c/*"))
        if found:
            done_dir = found[0].parents[4]
            break
        time.sleep(0.2)
    assert done_dir is not None and proc.poll() is None, "AutoAttack finished before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tasks = results.plan_tasks(config_mod.from_dict(open_artifact(done_dir).config).eval)
    before = results.Store.open(done_dir / "results.zarr", tasks).done_counts()
    out = subprocess.run(
        _cli("evaluate", "--run", str(run_dir), "--out", str(tmp_path), *sets),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == str(done_dir)
    resume = json.loads((done_dir / "summary.json").read_text())["resume"]
    store = results.Store.open(done_dir / "results.zarr", tasks)
    assert resume["chunks_computed"] == {
        t.name: store.n_chunks(t.group) - before[t.name] for t in tasks
    }
    assert resume["chunks_computed"]["autoattack_eps4"] < 4


LAUNCH = """import sys
from daat.eval.evaluate import run
print(run(sys.argv[1], None, [], sys.argv[3:], sys.argv[2]).path)
"""


@pytest.mark.slow
def test_torchrun_two_ranks_gives_the_single_process_result(memorised, tmp_path):
    # A launcher script, not `-m daat.cli evaluate --run ...`: torchrun's own argparse takes
    # `--run` for an ambiguous abbreviation of its --run-path and exits.
    run_dir, _, _ = memorised
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    single = evaluate.run(str(run_dir), None, [], RESUME_EVAL, str(tmp_path / "one"))
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            str(script),
            str(run_dir),
            str(tmp_path / "two"),
            *RESUME_EVAL,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    (two,) = (tmp_path / "two").glob("eval-*")
    a, b = summary_of(single), json.loads((two / "summary.json").read_text())
    assert a["accuracy"] == b["accuracy"] and a["attention"] == b["attention"]
    assert b["resume"]["chunk_tasks_computed"] == a["resume"]["chunk_tasks_computed"]
    assert open_artifact(two).complete and verify(two) == []
    store = results.Store.open(
        two / "results.zarr",
        results.plan_tasks(config_mod.from_dict(open_artifact(two).config).eval),
    )
    np.testing.assert_array_equal(store.read("index"), np.arange(20))
