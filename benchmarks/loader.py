"""Shard reader benchmark: training batches per second per core, joint augmentation at 224 px.

    python benchmarks/loader.py [--workers 0 1 2] [--profile]

Builds a shard artifact of 256-px synthetic scenes with the oracle depth (stored short side 256,
as ImageNet's), then reads it with the real ``train_pipeline``: tar -> JPEG + PNG decode ->
joint random resized crop + flip of image and saliency to 224 px -> batch -> pooled G on the
16x16 grid. Cores counted = decode workers + the main process (1 when the main process does the
work itself, ``--workers 0``). CPU seconds per image are reported as well: unlike wall time they
do not depend on how busy the rest of the machine is. ``--profile`` adds a cProfile of the
single-core loop (where the time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common

DEFAULTS = dict(
    per_class=6,
    render_size=256,
    resize_short=256,
    image_size=224,
    grid=16,
    batch_size=32,
    batches=10,
    build_workers=2,
)


def build_shards(workdir: Path, p: dict, device: torch.device):
    """(artifact, card path, seconds): synthetic scenes at ``render_size`` with oracle depth."""
    from daat import config
    from daat.pipeline import preprocess
    from daat.pipeline.shards import open_shards

    card = common.write_synthetic_card(
        workdir / "loader-card.yaml", p["per_class"], p["render_size"]
    )
    n = p["per_class"] * 10
    cfg = config.load(
        [],
        [
            f"data.card={card}",
            "data.splits=[train]",
            "depth.model=oracle",
            f"data.resize_short={p['resize_short']}",
            f"data.shard_size={max(1, n // 2)}",
            f"data.num_workers={p['build_workers']}",
            f"device={device.type}",
        ],
    )
    start = time.perf_counter()
    art = preprocess.run(cfg, str(workdir / "out"))
    return open_shards(art.path), card, time.perf_counter() - start


def _pipeline(art, p: dict, workers: int, batches: int, pin: bool, epoch: int = 0):
    from daat.pipeline.loaders import TrainReadSpec, train_pipeline

    spec = TrainReadSpec(
        image_size=p["image_size"],
        grid=(p["grid"], p["grid"]),
        batch_size=p["batch_size"],
        samples_per_epoch=p["batch_size"] * batches,
        rank=0,
        world_size=1,
        seed=0,
        num_workers=workers,
    )
    return train_pipeline(art, spec, epoch=epoch, pin_memory=pin)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_rate(art, p: dict, workers: int, pin: bool) -> dict:
    """img/s and CPU ms per image of one epoch; the first batch (worker start-up, first shard
    open) is excluded from the wall time, not from the CPU time of the workers."""
    batches = _pipeline(art, p, workers, p["batches"] + 1, pin)
    own_cpu, child_cpu = time.process_time(), _children_cpu()
    it = iter(batches)
    first = next(it)
    start, seen = time.perf_counter(), 0
    for images, _labels, _g in it:
        seen += images.shape[0]
    seconds = time.perf_counter() - start
    del it  # joins the workers, so their CPU time is counted in RUSAGE_CHILDREN
    cpu = (time.process_time() - own_cpu) + (_children_cpu() - child_cpu)
    total = seen + first[0].shape[0]
    cores = workers + 1 if workers else 1
    rate = seen / seconds
    return {
        "workers": workers,
        "cores": cores,
        "img_per_s": rate,
        "img_per_s_per_core": rate / cores,
        "cpu_ms_per_image": cpu / total * 1000,
        "images_timed": seen,
        "shape": list(first[0].shape),
        "g_shape": list(first[2].shape),
    }


def profile_single_core(art, p: dict, top: int = 12) -> list[dict]:
    """cProfile of the in-process (0-worker) reader: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in _pipeline(art, p, 0, max(2, p["batches"] // 2), pin=False, epoch=1):
        pass
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {
            "function": f"{Path(fn[0]).name}:{fn[1]}({fn[2]})",
            "own_s": round(row[2], 4),
            "share": round(row[2] / total, 4),
        }
        for fn, row in rows
    ]


def measure(
    workdir: Path,
    device: torch.device,
    workers: tuple[int, ...] = (0, 1),
    profile: bool = True,
    **overrides,
) -> dict:
    from benchmarks.preprocess import member_bytes, oracle_saliency_errors, png_encode_ms

    p = {**DEFAULTS, **overrides}
    workdir.mkdir(parents=True, exist_ok=True)
    art, card, build_s = build_shards(workdir, p, device)
    from daat.dist import cuda_paths

    pin = cuda_paths(device)  # as training reads (pin_memory on CUDA)
    runs = [read_rate(art, p, w, pin) for w in workers]
    single = next((r for r in runs if r["workers"] == 0), runs[0])
    result = {
        "loader_img_per_s_per_core": single["img_per_s_per_core"],
        "loader_cpu_ms_per_image": single["cpu_ms_per_image"],
        "loader_img_per_cpu_s": 1000 / single["cpu_ms_per_image"],
        "loader_runs": runs,
        "loader_shard_build_seconds": build_s,
        "loader_samples_in_shards": art.split_size("train"),
        "loader_image_size": p["image_size"],
        "loader_stored_short_side": p["resize_short"],
        "oracle_png_encode_ms": png_encode_ms(art),
        **{f"oracle_{k}": v for k, v in member_bytes(art).items()},
        **{
            f"oracle_{k}": v
            for k, v in oracle_saliency_errors(art, card, (p["grid"], p["grid"])).items()
        },
    }
    if profile:
        result["loader_profile_top"] = profile_single_core(art, p)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (pin memory)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (main process)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batches", type=int, help="timed batches per configuration")
    parser.add_argument("--profile", action="store_true", help="cProfile the single-core loop")
    parser.add_argument("--workdir", type=Path, help="keep the shard artifact here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = common.pick_device(args.device)
    common.configure_threads(device, args.threads)
    overrides = {"batches": args.batches} if args.batches else {}
    with tempfile.TemporaryDirectory(prefix="daat-bench-loader-") as tmp:
        result = measure(
            args.workdir or Path(tmp),
            device,
            tuple(args.workers),
            profile=args.profile,
            **overrides,
        )
    result["machine"] = common.machine(device)
    for run in result["loader_runs"]:
        print(
            f"workers={run['workers']} cores={run['cores']}: {run['img_per_s']:.1f} img/s, "
            f"{run['img_per_s_per_core']:.1f} img/s/core, {run['cpu_ms_per_image']:.2f} CPU ms/img"
        )
    for row in result.get("loader_profile_top", []):
        print(f"  {row['share']:6.1%}  {row['function']}")
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
