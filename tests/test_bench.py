"""Benchmarks: numerical parity of the optimised train step with a plain fp32 step, the
benchmark helpers against hand-computed values, and a smoke run of ``make bench`` at tiny sizes.

Parity: ``train_step`` (PGD with frozen weights, fused attention for the logits, the CLS row
recomputed by the tap, [x_adv; x] in one forward, bf16 autocast on CUDA) against a reference
written here: PGD with weights NOT frozen (weight gradients computed and discarded), timm's
unfused attention path with the full softmax maps captured, A(x) averaged from those maps,
separate adversarial and clean forwards, fp32, then clip + AdamW.
"""

import copy
import importlib.util
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from benchmarks.goals import GOALS
from daat import config as config_mod
from daat.teacher_model import Teacher
from daat.train import step as step_mod
from daat.train.state import build_state
from daat.train.step import StepSchedule
from daat.train.teacher import ResolvedTeacher


def _benchmarks():
    """The repository's ``benchmarks`` package (not installed), loaded from its folder without
    putting the repository root on sys.path (which would expose ``train``/``eval`` top level)."""
    if "benchmarks" not in sys.modules:
        folder = Path(__file__).resolve().parents[1] / "benchmarks"
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    return sys.modules["benchmarks"]


_benchmarks()
from benchmarks import common, integrity, preprocess, run_all, train_step  # noqa: E402

CLASSES = 5
ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 3


def _randomise(vit: torch.nn.Module, seed: int) -> None:
    """Weights away from timm's init (LayerScale 1e-5 would make every block nearly the identity
    and A(x) nearly the same for every model), so the comparison has something to compare."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(1.0)
            else:
                p.add_(0.2 * torch.randn(p.shape, generator=gen).to(p.device))


def _teacher(device) -> Teacher:
    torch.manual_seed(7)
    vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, **ARCH)
    _randomise(vit, 7)
    return Teacher(vit, ARCH["img_size"], (4, 4), "random").to(device)


def _state(device, amp: bool):
    cfg = config_mod.load(
        ["daat"],
        [
            *[f"model.{k}={v}" for k, v in ARCH.items()],
            "train.batch_size=6",
            f"attack.steps={STEPS}",
            f"attack.eps={EPS}",
            f"attack.alpha={ALPHA}",
            "loss.lam=0.5",
            "loss.gamma0=1",
            "depth.target=cached",
            "optim.grad_clip=0.5",
            f"device={device.type}",
            "seed=1",
            f"train.amp={str(amp).lower()}",
            f"attack.amp={str(amp).lower()}",
        ],
    )
    teacher = _teacher(device)
    state = build_state(cfg, CLASSES, ResolvedTeacher(teacher, "random", [], 32), device)
    _randomise(state.model.vit, 3)
    return cfg, state, teacher


def _batch(device):
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(6, 3, 32, 32, generator=gen)
    y = torch.randint(0, CLASSES, (6,), generator=gen)
    g = torch.rand(6, 16, generator=gen) ** 3  # peaked, so alignment is far from trivial
    return x.to(device), y.to(device), (g / g.sum(1, keepdim=True)).to(device)


class ExplicitModel:
    """A deep copy of the student on timm's unfused attention path; every block's full
    [B, H, N, N] softmax map is captured at ``attn_drop`` (its input is the map)."""

    def __init__(self, student):
        self.model = copy.deepcopy(student)
        self.maps: list[torch.Tensor] = []
        for blk in self.model.vit.blocks:
            blk.attn.fused_attn = False
            blk.attn.attn_drop.register_forward_hook(lambda _m, inp, _out: self.maps.append(inp[0]))

    def logits(self, x):
        self.maps.clear()
        return self.model.vit((x - self.model.mean) / self.model.std)

    def attention(self) -> torch.Tensor:
        cls = torch.stack([m.mean(1)[:, 0] for m in self.maps]).mean(0)  # heads, then blocks
        patches = cls[:, self.model.vit.num_prefix_tokens :]
        return patches / patches.sum(-1, keepdim=True)

    def tokens(self, x):
        return self.model.vit.forward_features((x - self.model.mean) / self.model.std)


def reference_pgd(ref: ExplicitModel, x, y, gen) -> torch.Tensor:
    """Textbook PGD: fp32, weights NOT frozen (loss.backward() fills weight grads too)."""
    ref.model.eval()
    delta = (torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32) * 2 - 1) * EPS
    x_k = (x + delta).clamp(0, 1)
    for _ in range(STEPS):
        x_k.requires_grad_(True)
        F.cross_entropy(ref.logits(x_k), y, reduction="sum").backward()
        x_k = torch.min(torch.max(x_k.detach() + ALPHA * x_k.grad.sign(), x - EPS), x + EPS).clamp(
            0, 1
        )
    ref.model.zero_grad(set_to_none=True)
    return x_k


def reference_step(cfg, ref: ExplicitModel, teacher, batch, gen, sched: StepSchedule):
    x, y, g = batch
    x_adv = reference_pgd(ref, x, y, gen)
    ref.model.train()
    logits = ref.logits(x_adv)
    attention = ref.attention()
    tokens = ref.tokens(x)
    ce = F.cross_entropy(logits, y)
    align = (1 - F.cosine_similarity(attention, g, dim=1)).mean()
    feat = (1 - F.cosine_similarity(tokens.flatten(1), teacher(x).flatten(1), dim=1)).mean()
    loss = ce + cfg.loss.lam * sched.s * align + sched.gamma * feat
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(ref.model.parameters()), cfg.optim.grad_clip)
    grads = [p.grad.detach().clone() for p in ref.model.parameters()]
    return {"loss": loss, "ce": ce, "align": align, "feat": feat}, grads


def _capture_grads(optimizer, model) -> list:
    """Wrap ``optimizer.step`` so the clipped gradients it is about to apply are recorded. (The
    AdamW update itself is not compared: its first step is ~lr*sign(g), so for gradients that
    are zero in exact arithmetic -- e.g. the key bias, which softmax ignores -- rounding noise
    of 1e-9 flips whole lr-sized steps.)"""
    captured: list = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        captured.extend(p.grad.detach().clone() for p in model.parameters())
        return step(*args, **kwargs)

    optimizer.step = recording_step
    return captured


def _parity(device, amp: bool):
    cfg, state, teacher = _state(device, amp)
    ref = ExplicitModel(state.model)
    gen = torch.Generator(device=device)
    gen.set_state(state.generator.get_state())
    batch = _batch(device)
    sched = StepSchedule(step=0, epoch=0, lr=2e-3, gamma=0.7, s=0.9)
    applied = _capture_grads(state.optimizer, state.model)
    out = step_mod.train_step(state, batch, sched)
    expected, grads = reference_step(cfg, ref, teacher, batch, gen, sched)
    return out, expected, applied, grads


def test_optimised_step_matches_plain_fp32_reference_on_cpu():
    out, expected, applied, grads = _parity(torch.device("cpu"), amp=False)
    assert expected["align"].item() > 0.05 and expected["feat"].item() > 0.05  # terms are live
    for name in ("ce", "align", "feat", "loss"):
        assert out[name].item() == pytest.approx(expected[name].item(), rel=1e-5, abs=1e-6), name
    assert len(applied) == len(grads)
    scale = max(g.abs().max().item() for g in grads)
    assert scale > 1e-3  # a real update
    for got, want in zip(applied, grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast path)")
def test_bf16_step_matches_fp32_reference_within_bf16_tolerance():
    out, expected, _, _ = _parity(torch.device("cuda"), amp=True)
    for name in ("ce", "align", "feat", "loss"):
        assert out[name].item() == pytest.approx(expected[name].item(), rel=3e-2, abs=3e-3), name


# --- helpers against hand-computed values ---------------------------------------------------


def test_ratio_is_the_median_of_per_round_ratios():
    times = {"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}  # per-round ratios 2, 4, 3
    assert common.ratio(times, "a", "b") == 3.0
    with pytest.raises(ValueError):
        common.ratio({"a": [1.0], "b": [1.0, 2.0]}, "a", "b")


def test_interleaved_runs_warmup_then_rounds_in_order():
    calls = []
    times = common.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        torch.device("cpu"),
        warmup=1,
        rounds=2,
    )
    assert calls == ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [2, 2]


def test_g_errors_hand_computed():
    flat = torch.ones(8, 8)  # pooled on 2x2: uniform G = 1/4 per cell
    stored = torch.ones(8, 8)
    stored[:4, :4] = 3.0  # pooled [3, 1, 1, 1] -> G = [1/2, 1/6, 1/6, 1/6]
    out = preprocess.g_errors([stored.numpy()], [flat], (2, 2))
    assert out["g_err_stored_vs_float"] == pytest.approx(0.25, abs=1e-12)
    assert out["g_err_format"] == pytest.approx(0.0, abs=1e-12)  # a constant map encodes exactly
    assert out["g_uniform_value"] == 0.25


def test_member_bytes_match_the_tar_members(tiny_shards):
    out = preprocess.member_bytes(tiny_shards)
    sizes, keys = {}, set()
    for path, _ in tiny_shards.shards("train"):
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                key, ext = info.name.split(".", 1)
                keys.add(key)
                sizes[ext] = sizes.get(ext, 0) + info.size
    n = len(keys)
    assert out["samples"] == n == tiny_shards.split_size("train")
    assert out["image_bytes_per_sample"] == pytest.approx(sizes["jpg"] / n)
    assert out["saliency_bytes_per_sample"] == pytest.approx(sizes["sal.png"] / n)
    assert out["saliency_over_image_bytes"] == pytest.approx(sizes["sal.png"] / sizes["jpg"])


def test_activation_memory_grows_linearly_with_batch():
    spec = dict(name="vit_base_patch14_dinov2", **ARCH)
    mib = {}
    for b in (4, 8):
        base = train_step.base_config(torch.device("cpu"), spec, b, 1, None, False)
        data = train_step.make_batch(base, torch.device("cpu"))
        fn = train_step.build_variant(base, "pgd-at", None, torch.device("cpu"), data)
        mib[b] = train_step.activation_mib(fn, data)
    for key in ("attack_forward_mib", "train_forward_mib"):
        assert mib[4][key] > 0
        assert mib[8][key] / mib[4][key] == pytest.approx(2.0, rel=0.05), key
    # the attack saves no more than the training forward (its weights need no gradient)
    assert mib[8]["attack_forward_mib"] <= mib[8]["train_forward_mib"] * 1.01


def test_dpt_hybrid_stand_in_has_the_real_architecture():
    from transformers import DPTForDepthEstimation

    with torch.device("meta"):  # sizes only: no memory, no init time
        model = DPTForDepthEstimation(common.dpt_hybrid_config())
    params = sum(p.numel() for p in model.parameters())
    assert 120e6 < params < 125e6  # Intel/dpt-hybrid-midas: ~123M
    assert model.config.is_hybrid and model.config.image_size == 384
    assert list(model.config.backbone_config.depths) == [3, 4, 9]  # BiT-R50 stages used


@pytest.mark.slow
def test_gpu_mode_code_paths_run_on_cpu(tmp_path):
    """The GPU mode's models (ViT-B/14 @224, DPT-Hybrid-sized depth, naive loop) at batch 1 on
    the CPU, so the one-command GPU run cannot rot unnoticed on machines without a GPU."""
    cpu = torch.device("cpu")
    hybrid = common.save_dpt_hybrid(tmp_path / "hybrid")
    out = train_step.measure(
        cpu,
        student=common.GPU_STUDENT,
        batch=1,
        steps=1,
        warmup=0,
        rounds=1,
        depth_dir=hybrid,
        naive=True,
    )
    for key in (
        "daat_cached_over_pgdat",
        "daat_online_over_pgdat",
        "teacher_over_pgdat",
        "pgdat_over_naive_speedup",
    ):
        assert math.isfinite(out[key]) and out[key] > 0, key
    pre = preprocess.measure(
        tmp_path / "pre",
        cpu,
        depth_dir=hybrid,
        n_images=2,
        warmup_images=2,
        height=375,
        width=500,
        resize_short=256,
        batch_size=2,
        num_workers=0,
        grid=16,
        depth_image_size=384,
    )
    assert pre["preprocess_stored_hw"] == [256, 341] and pre["preprocess_images"] == 2
    assert pre["preprocess_g_err_stored_vs_float"] < 1e-3


# --- smoke: make bench at tiny sizes --------------------------------------------------------


def test_run_all_tiny_prints_one_json_object_last(capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    try:
        run_all.main(["--tiny", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in run_all.REQUIRED:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (
            key
        )
    for key in (
        "preprocess_e2e_img_per_s",
        "preprocess_model_img_per_s",
        "pgd-at_img_per_s",
        "standard_img_per_s",
        "loader_cpu_ms_per_image",
    ):
        assert result[key] > 0, key
    assert result["preprocess_images"] == run_all.TINY["preprocess"]["n_images"]
    assert 0 <= result["preprocess_g_err_stored_vs_float"] < 1e-2
    assert set(result["goals"]) == {f"{k} {op} {g:g}" for k, op, g in GOALS}
    assert result["mode"] == "tiny"


def test_integrity_benchmark_times_the_committed_reader_against_this_tree(tmp_path, monkeypatch):
    """Smoke run at tiny sizes, today's reader taken from HEAD: every figure is positive, and the
    streaming candidate really hashes (a flipped byte makes its reader fail)."""
    if (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=common.REPO, capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("not a git checkout: there is no committed reader to compare with")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tiny = {k: v for k, v in run_all.TINY["loader"].items() if k != "batches"}
    result = integrity.measure(tmp_path, "HEAD", rounds=1, batches=2, **tiny)
    for name in ("baseline", "current", "streaming"):
        assert result[f"integrity_{name}_img_per_s"] > 0, name
    assert result["integrity_upfront_seconds"] > 0 and result["integrity_stored_samples"] == 10
    from daat.errors import ShardFormatError
    from daat.pipeline.loaders import TrainReadSpec, train_pipeline
    from daat.pipeline.shards import open_shards

    (art_dir,) = tmp_path.glob("out/shards-*")
    art = open_shards(art_dir)
    tar = art.shards("train")[0][0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 1  # inside the first member's data: the tar still parses
    tar.write_bytes(bytes(data))
    with integrity.streaming_hash(art), pytest.raises(ShardFormatError, match="sha256"):
        for _ in train_pipeline(
            art,
            TrainReadSpec(
                image_size=32,
                grid=4,
                batch_size=4,
                samples_per_epoch=40,
                rank=0,
                world_size=1,
                seed=0,
                num_workers=0,
            ),
            epoch=0,
        ):
            pass
