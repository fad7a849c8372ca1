"""The CUDA-only branches, run on CPU with ``DAAT_CUDA_PATHS_ON_CPU=1`` (``dist.cuda_paths``).

torch runs bf16 autocast, fused AdamW, channels_last and torch.compile on CPU too, so the logic of
every branch a GPU takes is exercised here without one: PGD and ``train_step`` under bf16 (fp32
delta, zero-gradient flags, a loss within bf16 tolerance of the fp32 reference), the depth model
with bf16 + channels_last + compile, preprocess with E computed next to the model and two writer
processes, the pinned-memory loader and a whole ``daat train`` run. What needs the CUDA runtime
itself is listed with its reason in docs/GPU.md and runs in ``make gpu-check``.
"""

import functools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from daat import dist
from daat.attacks import pgd
from daat.depth import load_depth_model
from daat.pipeline import depth_batches, preprocess
from daat.pipeline import shards as fmt
from daat.pipeline.loaders import TrainReadSpec, batches_per_epoch, train_pipeline
from tests.conftest import tiny_config, write_synthetic_card

EPS, ALPHA = 4 / 255, 1 / 255


@pytest.fixture
def cuda_paths(monkeypatch):
    monkeypatch.setenv(dist.CUDA_PATHS_ON_CPU, "1")
    assert dist.cuda_paths(torch.device("cpu"))


def test_the_switch_applies_to_cpu_only_when_asked(monkeypatch):
    monkeypatch.delenv(dist.CUDA_PATHS_ON_CPU, raising=False)
    assert not dist.cuda_paths("cpu") and dist.cuda_paths(torch.device("cuda", 0))
    monkeypatch.setenv(dist.CUDA_PATHS_ON_CPU, "0")
    assert not dist.cuda_paths("cpu")
    monkeypatch.setenv(dist.CUDA_PATHS_ON_CPU, "1")
    assert dist.cuda_paths("cpu") and not dist.cuda_paths("meta")


class _GatedLinear(torch.nn.Module):
    """logits = W relu(mean(x) - 0.5): the input gradient is exactly zero for an image whose mean
    stays below 0.5 (ReLU closed), non-zero otherwise. Records the autocast state it ran under."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.autocast_seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        self.autocast_seen.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        )
        return self.fc(F.relu(x.mean(dim=(2, 3)) - 0.5))


def test_bf16_pgd_keeps_fp32_delta_and_zero_gradient_flags(cuda_paths):
    from daat.train.step import amp_dtype

    dtype = amp_dtype(torch.device("cpu"), enabled=True)
    assert dtype == torch.bfloat16
    model = _GatedLinear()
    x = torch.cat([torch.full((2, 3, 8, 8), 0.2), torch.full((2, 3, 8, 8), 0.8)])
    y = torch.tensor([0, 1, 2, 3])
    result = pgd(
        model, x, y, EPS, ALPHA, 3, generator=torch.Generator().manual_seed(0), amp_dtype=dtype
    )
    assert all(seen == (True, torch.bfloat16) for seen in model.autocast_seen)
    assert result.x_adv.dtype == torch.float32
    delta = result.x_adv - x
    assert delta.abs().max() <= EPS + 1e-7 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    # the dark images (ReLU closed for the whole ball) have zero gradient, the bright ones do not
    assert result.zero_grad.tolist() == [True, True, False, False]
    assert delta[2:].abs().amax(dim=(1, 2, 3)).min() > EPS / 2  # the live ones moved
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_bf16_train_step_matches_the_fp32_reference(cuda_paths):
    """The real ``train_step`` on the CUDA paths (bf16 attack and update, fused AdamW) against the
    plain fp32 reference of tests/test_bench.py; tolerance rel 3e-2 / abs 3e-3 on every loss term
    (bf16 keeps 8 bits of mantissa) and cosine > 0.98 between the clipped gradients it applies
    and the reference's."""
    from tests.test_bench import _parity

    seen: list[bool] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        out, expected, applied, grads = _parity(torch.device("cpu"), amp=True)
    finally:
        hook.remove()
    assert any(seen) and not all(seen)  # bf16 in the step, fp32 in the reference
    for name in ("ce", "align", "feat", "loss"):
        assert torch.isfinite(out[name]), name
        assert out[name].item() == pytest.approx(expected[name].item(), rel=3e-2, abs=3e-3), name
    got = torch.cat([g.flatten() for g in applied])
    want = torch.cat([g.flatten() for g in grads])
    assert F.cosine_similarity(got, want, dim=0) > 0.98


def test_fused_adamw_on_the_cuda_paths(cuda_paths):
    from daat import config
    from daat.train.state import build_optimizer

    cfg = config.load(
        ["pgd-at"],
        ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.img_size=28"],
    )
    from daat.models import build_student

    model = build_student(cfg.model, 3)
    optimizer = build_optimizer(cfg, model)
    assert optimizer.defaults["fused"] is True
    model(torch.rand(2, 3, 28, 28)).sum().backward()
    optimizer.step()  # the fused CPU kernel runs


def test_depth_model_bf16_channels_last_and_compiled(cuda_paths, tiny_dpt_dir, monkeypatch):
    """Inductor would spend ~50 s generating C++ for the tiny DPT on this CPU; the aot_eager
    backend traces the same graph through Dynamo and AOTAutograd (graph breaks, guards and the
    channels_last input all show up there); inductor itself runs in ``make gpu-check``."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters.clear()
    fast = load_depth_model(str(tiny_dpt_dir), "cpu", amp=True, channels_last=True, compile=True)
    monkeypatch.delenv(dist.CUDA_PATHS_ON_CPU)
    plain = load_depth_model(str(tiny_dpt_dir), "cpu", amp=True, channels_last=True)
    assert fast.amp and fast.channels_last and not plain.amp and not plain.channels_last
    weight = next(p for p in fast.model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    got, want = fast(images), plain(images)
    assert counters["stats"]["unique_graphs"] >= 1  # Dynamo really compiled the network
    assert got.dtype == torch.float32 and got.shape == want.shape == (3, 48, 40)
    assert torch.isfinite(got).all()
    scale = want.abs().max()
    assert (got - want).abs().max() <= 0.05 * scale  # bf16 over a few layers


def test_preprocess_on_the_cuda_paths_with_two_writers(
    cuda_paths, tiny_dpt_dir, tmp_path, monkeypatch
):
    """E and its 8-bit code computed next to the model (the GPU branch), two writer processes
    (a 16-core rank), and byte-identical samples to the CPU branch (depth in fp32 both times)."""
    card = write_synthetic_card(
        tmp_path / "cards", "paths-card", n_train_per_class=2, n_val_per_class=1
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert preprocess._writer_processes(torch.device("cpu")) == 2
    in_parent: list[int] = []
    real_codes = depth_batches.saliency_codes
    monkeypatch.setattr(
        depth_batches,
        "saliency_codes",
        lambda depths, device: in_parent.append(len(depths)) or real_codes(depths, device),
    )
    overrides = ("depth.amp=false", "data.shard_size=4")
    fast = preprocess.run(
        tiny_config(card, *overrides, depth=str(tiny_dpt_dir)), str(tmp_path / "fast")
    )
    assert sum(in_parent) == 30
    monkeypatch.delenv(dist.CUDA_PATHS_ON_CPU)
    plain = preprocess.run(
        tiny_config(card, *overrides, depth=str(tiny_dpt_dir)), str(tmp_path / "plain")
    )
    assert sum(in_parent) == 30  # the CPU branch leaves E to the writer process
    for split in ("train", "val"):
        pairs = list(
            zip(fmt.iter_samples(fast, split), fmt.iter_samples(plain, split), strict=True)
        )
        assert len(pairs) == {"train": 20, "val": 10}[split]
        for a, b in pairs:
            assert a.key == b.key and a.label == b.label
            assert np.array_equal(a.image, b.image) and np.array_equal(a.saliency, b.saliency)


def test_pinned_loader_gives_the_same_batches(cuda_paths, tiny_shards):
    spec = TrainReadSpec(
        image_size=32,
        grid=4,
        batch_size=8,
        samples_per_epoch=16,
        rank=0,
        world_size=1,
        seed=1,
        num_workers=1,
    )
    pinned = train_pipeline(tiny_shards, spec, epoch=0, pin_memory=True)
    assert pinned.pin_memory
    if torch.cuda.is_available():
        got = list(pinned)
        assert all(t.is_pinned() for batch in got for t in batch)
    else:
        with pytest.warns(UserWarning, match="pin_memory"):  # no accelerator: pinning skipped
            got = list(pinned)
    want = list(train_pipeline(tiny_shards, spec, epoch=0, pin_memory=False))
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def test_a_whole_training_run_on_the_cuda_paths(
    cuda_paths, tiny_shards, tiny_dpt_dir, tmp_path, monkeypatch
):
    """``daat train`` end to end (PGD, L_align on G(x_adv) from a real tiny DPT online,
    validation, checkpoints, final) with bf16 autocast everywhere, fused AdamW, a bf16
    channels_last depth model and the pinned loader."""
    import json

    from daat import config
    from daat.train import loop

    pins: list[bool] = []
    real = loop.train_pipeline
    monkeypatch.setattr(
        loop, "train_pipeline", lambda *a, **k: pins.append(k["pin_memory"]) or real(*a, **k)
    )
    depth_models = []
    real_load = load_depth_model
    monkeypatch.setattr(
        "daat.depth.load_depth_model",
        lambda *a, **k: depth_models.append(real_load(*a, **k)) or depth_models[-1],
    )
    cfg = config.load(
        ["daat", "synthetic"],
        [
            "model.img_size=32",
            "model.patch_size=8",
            "model.embed_dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "train.batch_size=8",
            "train.epochs=1",
            "attack.steps=2",
            "train.val_samples=8",
            "train.val_pgd_steps=2",
            "loss.gamma0=0",
            "depth.target=online",
            f"depth.model={tiny_dpt_dir}",
            "depth.allow_other_model=true",  # oracle shards
            "data.num_workers=0",
            "device=cpu",
            "train.init_from=",
        ],
    )
    art = loop.run(cfg, str(tiny_shards.path), str(tmp_path / "out"))
    assert art.complete and pins == [True]
    (depth,) = depth_models
    assert depth.amp and depth.channels_last
    steps = batches_per_epoch(tiny_shards.split_size("train"), 8, 1)
    assert art.manifest["extra"]["online_depth_steps"] == steps > 0  # G(x_adv) every step
    rows = [json.loads(line) for line in (art.path / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r["kind"] == "epoch"][-1]
    assert all(np.isfinite(epoch[k]) for k in ("loss", "ce", "align", "val_clean_acc"))
    assert epoch["align"] > 0


def test_train_compile_builds_and_steps(cuda_paths, monkeypatch):
    """``train.compile``: the DDP-able training forward and the attack's student are compiled
    (aot_eager here, for the reason given above) and one real step runs through both."""
    from daat import config
    from daat.train.state import build_state
    from daat.train.step import StepSchedule, train_step

    compiled = []
    real = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda model, **kw: compiled.append(model) or real(model, backend="aot_eager"),
    )
    cfg = config.load(
        ["pgd-at", "synthetic"],
        [
            "model.img_size=32",
            "model.patch_size=8",
            "model.embed_dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "train.batch_size=4",
            "attack.steps=2",
            "train.compile=true",
            "device=cpu",
        ],
    )
    state = build_state(cfg, 10, None, torch.device("cpu"))
    assert len(compiled) == 2 and state.attack_model is not None
    gen = torch.Generator().manual_seed(0)
    batch = (
        torch.rand(4, 3, 32, 32, generator=gen),
        torch.tensor([0, 1, 2, 3]),
        torch.full((4, 16), 1 / 16),
    )
    out = train_step(state, batch, StepSchedule(step=0, epoch=0, lr=1e-3))
    assert torch.isfinite(out["loss"]) and out["zero_grad"].item() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_crash_and_resume(tiny_shards, tmp_path, monkeypatch):
    """On a real GPU: bf16 PGD-AT + L_align, a crash after the mid-epoch checkpoint, and a
    resume that restores the CUDA RNG streams and finishes the same run. Final weights within
    1e-3 of the uninterrupted run (GPU kernels need not be bit-deterministic)."""
    from tests import test_train_resume as tr

    overrides = ["device=cuda", "loss.gamma0=0", "loss.lam=0.5"]
    whole = tr.train(tiny_shards, tmp_path / "whole", "daat", "synthetic", overrides=overrides)
    with monkeypatch.context() as patch:
        tr.stop_after(patch, "step-00000003.pt")
        with pytest.raises(tr.Stop):
            tr.train(tiny_shards, tmp_path / "split", "daat", "synthetic", overrides=overrides)
    resumed = tr.train(tiny_shards, tmp_path / "split", "daat", "synthetic", overrides=overrides)
    assert resumed.complete and resumed.path.name == whole.path.name
    a, b = tr.final_weights(whole.path), tr.final_weights(resumed.path)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-3, msg=name)
