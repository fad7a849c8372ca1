"""Stage 2 benchmark: ``train_step`` throughput of every training variant, as ratios to PGD-AT.

    python benchmarks/train_step.py                    # CPU: the synthetic preset's student
    python benchmarks/train_step.py --device cuda      # GPU: ViT-B/14 @224, DPT-Hybrid-sized depth
    python benchmarks/train_step.py --scaling          # step time / activation memory vs B, S, k
    python benchmarks/train_step.py --compile-check    # torch.compile: speed-up, recompiles

One run, one model architecture, one batch, PGD-10 (``attack.steps``), the real ``build_state``
+ ``train_step``: standard (no attack), pgd-at, daat with cached G, daat with online G(x_adv)
(the depth model on every step), and the teacher phase (gamma > 0, cached G, a frozen DINOv2 of
the student's size). Variants are timed in interleaved rounds after warm-up rounds; each ratio
is the median of per-round ratios. On CUDA a naive fp32 PGD-AT loop (no autocast, weight
gradients computed during the attack, no compile) is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks import common

NUM_CLASSES = 100
VARIANTS: dict[str, list[str]] = {
    "standard": ["attack.steps=0", "loss.lam=0", "loss.gamma0=0"],
    "pgd-at": ["loss.lam=0", "loss.gamma0=0"],
    "daat-cached": ["loss.lam=0.1", "depth.target=cached", "loss.gamma0=0"],
    "daat-online": ["loss.lam=0.1", "depth.target=online", "loss.gamma0=0"],
    "teacher": ["loss.lam=0.1", "depth.target=cached", "loss.gamma0=1"],
}
CPU_DEFAULTS = dict(batch=32, steps=10, warmup=1, rounds=7)
GPU_DEFAULTS = dict(batch=128, steps=10, warmup=2, rounds=6)


def base_config(
    device: torch.device,
    student: dict,
    batch: int,
    steps: int,
    depth_dir: Path | None,
    compile: bool,
    extra: list[str] = (),
):
    from daat import config

    return config.load(
        ["daat"],
        [
            *common.model_overrides(student),
            f"train.batch_size={batch}",
            f"attack.steps={steps}",
            "attack.eps=4/255",
            "attack.alpha=1/255",
            f"device={device.type}",
            f"depth.model={depth_dir if depth_dir else 'oracle'}",
            "depth.target=cached",
            f"train.compile={str(compile).lower()}",
            f"depth.compile={str(compile).lower()}",
            *extra,
        ],
    )


def variant_config(base, name: str):
    from daat import config

    cfg = copy.deepcopy(base)
    for assignment in VARIANTS[name]:
        config.apply_override(cfg, assignment)
    config.validate(cfg)
    return cfg


def make_teacher(cfg, device: torch.device):
    """A frozen random DINOv2 of the student's own size (the paper's teacher is ViT-B/14 like its
    student), built as ``teacher_model.build_teacher`` builds one, without a weights file."""
    import timm

    from daat.teacher_model import Teacher
    from daat.train.teacher import ResolvedTeacher

    m = cfg.model
    kwargs = {k: getattr(m, k) for k in ("embed_dim", "depth", "num_heads") if getattr(m, k)}
    vit = timm.create_model(
        m.name,
        pretrained=False,
        num_classes=0,
        img_size=m.img_size,
        patch_size=m.patch_size,
        **kwargs,
    )
    grid = (m.img_size // m.patch_size,) * 2
    teacher = Teacher(vit, m.img_size, grid, model_id="random-dinov2").to(device)
    return ResolvedTeacher(teacher, teacher.model_id, [], int(teacher.embed_dim))


def make_batch(cfg, device: torch.device, seed: int = 0):
    """Images in [0,1], labels and a unit-mass G on the student's grid, already on the device
    (the loader's host -> device copy is overlapped in training, so it is not timed here)."""
    gen = torch.Generator().manual_seed(seed)
    b, s = cfg.train.batch_size, cfg.model.img_size
    grid = (s // cfg.model.patch_size) ** 2
    x = torch.rand(b, 3, s, s, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
    g = torch.rand(b, grid, generator=gen)
    return x.to(device), y.to(device), (g / g.sum(1, keepdim=True)).to(device)


class Variant:
    """One real ``train_step`` of one variant per call, on its own model and optimiser
    (identical initial weights: ``build_state`` seeds from the config)."""

    def __init__(
        self, base, name: str, teacher, device: torch.device, batch, compile_attack: bool = False
    ):
        from daat.train.online_depth import check_policy
        from daat.train.state import build_state

        self.cfg = variant_config(base, name)
        check_policy(self.cfg)
        self.state = build_state(
            self.cfg, NUM_CLASSES, teacher if self.cfg.loss.gamma0 > 0 else None, device
        )
        if compile_attack:
            # The proposed change (RESULTS.md): PGD on a compiled student. train/step.py runs
            # the attack eagerly today; only the training forward follows train.compile.
            self.state.model = torch.compile(self.state.model)
        self.gamma = 1.0 if self.cfg.loss.gamma0 > 0 else 0.0
        self.batch = batch
        self.step = 0

    def __call__(self) -> dict:
        from daat.train.step import StepSchedule, train_step

        sched = StepSchedule(step=self.step, epoch=0, lr=1e-4, gamma=self.gamma, s=1.0)
        self.step += 1
        return train_step(self.state, self.batch, sched)


def build_variant(
    base, name: str, teacher, device: torch.device, batch, compile_attack: bool = False
) -> Variant:
    return Variant(base, name, teacher, device, batch, compile_attack)


def naive_pgd_at(cfg, device: torch.device, batch) -> Callable[[], None]:
    """The textbook PGD-AT step: fp32, no autocast, no compile, weights NOT frozen during the
    attack (every attack backward also computes weight gradients), AdamW over all weights."""
    from daat.models import build_student

    model = build_student(cfg.model, NUM_CLASSES).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y, _ = batch
    a = cfg.attack
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        model.train()
        delta = (torch.rand(x.shape, generator=gen, device=device) * 2 - 1) * a.eps
        x_adv = (x + delta).clamp(0, 1)
        for _ in range(a.steps):
            x_adv.requires_grad_(True)
            F.cross_entropy(model(x_adv), y).backward()
            x_adv = torch.min(
                torch.max(x_adv.detach() + a.alpha * x_adv.grad.sign(), x - a.eps), x + a.eps
            ).clamp(0, 1)
        opt.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        opt.step()

    return step


def measure(
    device: torch.device,
    student: dict | None = None,
    batch: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    rounds: int | None = None,
    depth_dir: Path | None = None,
    compile: bool = False,
    compile_attack: bool = False,
    naive: bool | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> dict:
    """Step throughput of ``variants`` (and the naive loop on CUDA) in one interleaved run."""
    gpu = device.type == "cuda"
    d = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    student = student or (common.GPU_STUDENT if gpu else common.CPU_STUDENT)
    batch, steps = batch or d["batch"], d["steps"] if steps is None else steps
    warmup = d["warmup"] + (1 if compile or compile_attack else 0) if warmup is None else warmup
    rounds, naive = rounds or d["rounds"], gpu if naive is None else naive
    with contextlib.ExitStack() as stack:
        if depth_dir is None and "daat-online" in variants:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="daat-bench-ts-")))
            depth_dir = common.save_depth_model(
                tmp / "depth-model", gpu, image_size=student["img_size"]
            )
        base = base_config(device, student, batch, steps, depth_dir, compile)
        data = make_batch(base, device)
        teacher = make_teacher(base, device) if "teacher" in variants else None
        fns = {
            name: build_variant(base, name, teacher, device, data, compile_attack)
            for name in variants
        }
        if naive:
            fns["naive-fp32"] = naive_pgd_at(base, device, data)
        times = common.interleaved(fns, device, warmup=warmup, rounds=rounds)
        memory = _peak_memory_per_variant(fns, device) if gpu else {}
    result = {f"{name}_img_per_s": batch / common.median(t) for name, t in times.items()}
    result.update({f"{name}_step_s": common.median(t) for name, t in times.items()})
    result.update({f"{name}_peak_mib": mib for name, mib in memory.items()})
    for name, key in (
        ("daat-cached", "daat_cached_over_pgdat"),
        ("daat-online", "daat_online_over_pgdat"),
        ("teacher", "teacher_over_pgdat"),
        ("standard", "standard_over_pgdat"),
    ):
        if name in times and "pgd-at" in times:
            result[key] = common.ratio(times, name, "pgd-at")
    result.update(
        {
            "train_batch": batch,
            "train_pgd_steps": steps,
            "train_rounds": rounds,
            "train_warmup_rounds": warmup,
            "train_student": student,
            "train_compile": compile,
            "train_compile_attack": compile_attack,
            "train_amp": base.train.amp and gpu,
            "train_depth_model": str(depth_dir),
        }
    )
    if naive and "pgd-at" in times:
        # time ratio naive/ours = throughput ratio ours/naive
        result["pgdat_over_naive_speedup"] = common.ratio(times, "naive-fp32", "pgd-at")
        result["naive_tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    if gpu and student == common.GPU_STUDENT and "pgd-at" in times:
        result["vit_b14_224_pgdat_img_per_s"] = result["pgd-at_img_per_s"]
    return result


def _peak_memory_per_variant(fns: dict[str, Callable], device: torch.device) -> dict[str, float]:
    """Peak allocated device memory (MiB) of one more step of each variant, measured alone."""
    peaks = {}
    for name, fn in fns.items():
        common.sync(device)
        common.reset_peak_memory(device)
        fn()
        common.sync(device)
        peaks[name] = common.peak_memory_mib(device)
    return peaks


# --- memory and scaling ---------------------------------------------------------------------


def activation_mib(variant: Variant, batch) -> dict:
    """MiB of tensors saved for backward (activations; parameters excluded) by one attack
    forward (weights frozen, input gradient only) and by the training forward: the memory
    that grows with batch, image size and depth. Exact and load-independent on any device."""
    from daat.attacks import frozen_weights

    state = variant.state
    params = {p.untyped_storage().data_ptr() for p in state.model.parameters()}

    def saved_mib(fn: Callable[[], torch.Tensor]) -> float:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn().sum().backward()
        return sum(seen.values()) / 2**20

    x, y, _ = batch
    with frozen_weights(state.model):
        attack = saved_mib(lambda: F.cross_entropy(state.model(x.clone().requires_grad_(True)), y))
    train = saved_mib(lambda: state.forward(x, None, False)[0].logsumexp(1))
    state.optimizer.zero_grad(set_to_none=True)
    return {"attack_forward_mib": attack, "train_forward_mib": train}


def scaling(
    device: torch.device,
    student: dict | None = None,
    base_batch: int = 32,
    batches=(16, 32, 64),
    sizes=(32, 64, 96),
    pgd=(1, 3, 10),
    rounds: int = 3,
) -> list[dict]:
    """PGD-AT step time and activation memory, varying one of batch / image size / PGD steps at
    a time around (base_batch, the student's size, PGD-10)."""
    student = dict(student or common.CPU_STUDENT)
    points = (
        [(b, student["img_size"], 10) for b in batches]
        + [(base_batch, s, 10) for s in sizes]
        + [(base_batch, student["img_size"], k) for k in pgd]
    )
    rows = []
    for b, s, k in dict.fromkeys(points):  # unique, in order
        spec = {**student, "img_size": s}
        base = base_config(device, spec, b, k, None, False)
        data = make_batch(base, device)
        fn = build_variant(base, "pgd-at", None, device, data)
        times = common.interleaved({"pgd-at": fn}, device, warmup=1, rounds=rounds)
        tokens = (s // spec["patch_size"]) ** 2 + 1
        rows.append(
            {
                "batch": b,
                "img_size": s,
                "pgd_steps": k,
                "tokens": tokens,
                "step_s": common.median(times["pgd-at"]),
                "img_per_s": b / common.median(times["pgd-at"]),
                **activation_mib(fn, data),
            }
        )
    return rows


# --- torch.compile ---------------------------------------------------------------------------


def compile_check(
    device: torch.device,
    student: dict | None = None,
    batch: int = 32,
    steps: int = 10,
    rounds: int = 4,
) -> dict:
    """``train.compile=true`` (the real path: the training forward is compiled) plus the
    proposed compiled attack, against eager, in one interleaved run; and Dynamo's graph and
    recompile counts after all timed steps (a recompile per step would show up here)."""
    from torch._dynamo.utils import counters

    student = student or (common.GPU_STUDENT if device.type == "cuda" else common.CPU_STUDENT)
    counters.clear()
    base = base_config(device, student, batch, steps, None, False)
    data = make_batch(base, device)
    compiled_base = base_config(device, student, batch, steps, None, True)
    fns = {
        "eager": build_variant(base, "daat-cached", None, device, data),
        "train_compile": build_variant(compiled_base, "daat-cached", None, device, data),
        "train_compile+attack": build_variant(
            compiled_base, "daat-cached", None, device, data, compile_attack=True
        ),
    }
    for _ in range(2):  # warm-up: every compilation should happen here
        for fn in fns.values():
            fn()
    compiled_graphs = int(counters["stats"].get("unique_graphs", 0))
    times = common.interleaved(fns, device, warmup=0, rounds=rounds)
    # Dynamo counts every graph it captures; any growth after warm-up is a recompile.
    graphs = int(counters["stats"].get("unique_graphs", 0))
    return {
        "train_compile_speedup": common.ratio(times, "eager", "train_compile"),
        "train_and_attack_compile_speedup": common.ratio(times, "eager", "train_compile+attack"),
        **{f"{name}_step_s": common.median(t) for name, t in times.items()},
        "dynamo_graphs_after_warmup": compiled_graphs,
        "dynamo_graphs_during_timed_steps": graphs - compiled_graphs,
        "timed_steps_per_variant": rounds,
        "batch": batch,
        "pgd_steps": steps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int, help="PGD steps (default 10)")
    parser.add_argument("--rounds", type=int, help="timed rounds")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train.compile and depth.compile (what daat train offers)",
    )
    parser.add_argument(
        "--compile-attack",
        action="store_true",
        help="also run PGD on a compiled student (proposed change, see RESULTS.md)",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive fp32 loop on CUDA")
    parser.add_argument("--scaling", action="store_true", help="step time / memory vs B, S, k")
    parser.add_argument(
        "--compile-check",
        action="store_true",
        help="compile speed-up and recompile count (slow on CPU: minutes)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = common.pick_device(args.device)
    common.configure_threads(device, args.threads)
    if args.scaling:
        rows = scaling(device)
        for r in rows:
            print(
                f"B={r['batch']:3d} S={r['img_size']:3d} k={r['pgd_steps']:2d}: "
                f"{r['step_s']:.3f} s/step, {r['img_per_s']:.1f} img/s, activations "
                f"attack {r['attack_forward_mib']:.1f} MiB, train {r['train_forward_mib']:.1f} MiB"
            )
        result = {"scaling": rows}
    elif args.compile_check:
        result = compile_check(device, batch=args.batch or 32, steps=args.steps or 10)
        print(result)
    else:
        result = measure(
            device,
            batch=args.batch,
            steps=args.steps,
            rounds=args.rounds,
            compile=args.compile,
            compile_attack=args.compile_attack,
            naive=False if args.no_naive else None,
        )
        for key in sorted(
            k for k in result if k.endswith(("_img_per_s", "_over_pgdat", "_speedup"))
        ):
            print(f"{key}: {result[key]:.4g}")
    result["machine"] = common.machine(device)
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
