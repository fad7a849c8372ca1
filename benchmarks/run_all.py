"""``make bench``: every benchmark in one run; the LAST stdout line is one JSON object.

    python benchmarks/run_all.py             # CUDA if available (GPU mode), else quick CPU mode
    python benchmarks/run_all.py --device cpu
    python benchmarks/run_all.py --tiny      # smallest sizes (the test suite's smoke run)

Quick CPU mode (a 2-core CPU, well under 10 minutes): stage 1 with the tiny DPT, the shard
reader at 224 px, and the train-step variants on the synthetic preset's student at PGD-10.
GPU mode adds ViT-B/14 @224 img/s, the naive fp32 loop ratio, DPT-Hybrid-sized online depth and
preprocess img/s; it compiles (``train.compile``, ``depth.compile``) unless ``--no-compile``, and
also times the proposed compiled attack for PGD-AT (``*_compiled_attack_proposal``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common, loader, preprocess, train_step
from benchmarks.goals import check_goals

REQUIRED = (
    "preprocess_e2e_over_model",
    "loader_img_per_s_per_core",
    "daat_cached_over_pgdat",
    "daat_online_over_pgdat",
    "teacher_over_pgdat",
)
TINY = {
    "preprocess": dict(
        n_images=24,
        warmup_images=8,
        height=40,
        width=48,
        resize_short=32,
        batch_size=8,
        num_workers=0,
        grid=4,
        depth_image_size=32,
    ),
    "loader": dict(
        per_class=1,
        render_size=48,
        resize_short=48,
        image_size=32,
        grid=4,
        batch_size=4,
        batches=2,
        build_workers=0,
    ),
    "train": dict(
        student=dict(
            name="vit_base_patch14_dinov2",
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
        ),
        batch=4,
        steps=2,
        warmup=1,
        rounds=2,
    ),
}


def run(
    device: torch.device,
    workdir: Path,
    tiny: bool = False,
    compile: bool = True,
    preprocess_images: int | None = None,
) -> dict:
    gpu = device.type == "cuda"
    compile = compile and gpu  # compiling costs minutes on a CPU; the GPU mode is where it pays
    seconds: dict[str, float] = {}
    result: dict = {}

    start = time.perf_counter()
    # One depth model for stage 1 and online G(x_adv): DPT-Hybrid-sized on a GPU, else the tiny
    # DPT at the student's input size.
    depth_dir = common.save_depth_model(workdir / "depth-model", gpu, image_size=32 if tiny else 64)
    sizes = dict(TINY["preprocess"]) if tiny else {}
    if preprocess_images:
        sizes.update(n_images=preprocess_images, warmup_images=max(8, preprocess_images // 8))
    result.update(
        preprocess.measure(
            workdir / "preprocess", device, depth_dir=depth_dir, compile=compile, **sizes
        )
    )
    seconds["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    workers = (0,) if tiny else ((0, 4) if gpu and (os.cpu_count() or 1) >= 8 else (0, 1))
    result.update(
        loader.measure(
            workdir / "loader",
            device,
            workers,
            profile=not tiny,
            **(TINY["loader"] if tiny else {}),
        )
    )
    seconds["loader"] = time.perf_counter() - start

    start = time.perf_counter()
    # The naive fp32 loop runs on CPU too: there it isolates the frozen-weights saving.
    result.update(
        train_step.measure(
            device,
            depth_dir=depth_dir,
            compile=compile,
            naive=True,
            **(TINY["train"] if tiny else {}),
        )
    )
    if compile:  # only on a GPU (see above): the proposed compiled attack for PGD-AT
        proposal = train_step.measure(
            device, compile=True, compile_attack=True, naive=False, variants=("pgd-at",)
        )
        result["vit_b14_224_pgdat_img_per_s_compiled_attack_proposal"] = proposal[
            "pgd-at_img_per_s"
        ]
    seconds["train_step"] = time.perf_counter() - start

    if gpu:
        result["dpt_hybrid_preprocess_e2e_img_per_s"] = result["preprocess_e2e_img_per_s"]
    result["bench_seconds"] = seconds
    result["mode"] = "tiny" if tiny else ("gpu" if gpu else "quick-cpu")
    result["goals"] = check_goals(result, gpu)
    result["machine"] = common.machine(device)
    return result


def _check_required(result: dict) -> None:
    bad = [
        k for k in REQUIRED if not isinstance(result.get(k), float) or not math.isfinite(result[k])
    ]
    if bad:
        raise SystemExit(f"benchmark result lacks finite values for: {', '.join(bad)}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (smoke test)")
    parser.add_argument("--no-compile", action="store_true", help="GPU mode: stay eager")
    parser.add_argument("--workdir", type=Path, help="keep inputs and artifacts here")
    parser.add_argument(
        "--preprocess-images",
        type=int,
        help="images in the timed preprocess run (warm-up: 1/8 of them)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the figures
    device = common.pick_device(args.device)
    common.configure_threads(device, args.threads)
    with tempfile.TemporaryDirectory(prefix="daat-bench-") as tmp:
        result = run(
            device,
            args.workdir or Path(tmp),
            tiny=args.tiny,
            compile=not args.no_compile,
            preprocess_images=args.preprocess_images,
        )
    _check_required(result)
    print(f"# mode {result['mode']}, {sum(result['bench_seconds'].values()):.0f} s; goals:")
    for goal, met in result["goals"].items():
        print(f"#   {'met ' if met else 'MISS'} {goal}")
    for key in REQUIRED:
        print(f"# {key} = {result[key]:.4g}")
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
