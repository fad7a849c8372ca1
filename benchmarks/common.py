"""Shared pieces of the benchmarks: timing, machine facts, inputs and model stand-ins.

Timing rules (every benchmark): warm-up calls are excluded; variants that are compared are timed
in interleaved rounds (A, B, C, A, B, C, ...) so a change in machine load hits all of them alike;
a ratio is the median over rounds of the per-round ratio; CUDA is synchronised only around a
timed call, never inside it.

On CPU the benchmarks default to ONE intra-op thread: on a shared, oversubscribed machine
OpenMP's spinning threads made a tiny ViT forward ~20x slower with 2 threads than with 1
(measured: 1.1 s vs 0.05 s for 32 images), which would swamp every ratio with scheduler noise.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GPU_STUDENT = dict(name="vit_base_patch14_dinov2", img_size=224, patch_size=14)  # ViT-B/14 @224
CPU_STUDENT = dict(
    name="vit_base_patch14_dinov2", img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4
)  # the synthetic preset's student


def pick_device(name: str) -> torch.device:
    """The ``--device`` flag through ``dist.pick_device`` (the one device rule); a bad flag or a
    missing GPU ends the benchmark with a one-line message."""
    from daat import dist

    if name not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda, got {name!r}")
    try:
        return dist.pick_device(name)
    except RuntimeError as e:
        raise SystemExit("--device cuda: no CUDA device is available") from e


def configure_threads(device: torch.device, threads: int) -> int:
    """Intra-op threads for CPU work (see module doc); returns the number in use."""
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {threads}")
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Per variant, the seconds of each timed round; ``warmup`` untimed rounds first."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of time[num] / time[den] (same round, so the same machine load)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass  # no load average on this platform
    return info


def emit(result: dict) -> None:
    """The one JSON object a benchmark prints as its last stdout line."""
    print(json.dumps(result, sort_keys=True), flush=True)


def peak_memory_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --- inputs -----------------------------------------------------------------------------------


def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with a few hard-edged shapes and sensor-like noise: close
    enough to a photo for JPEG sizes and decode times (uint8 HxWx3)."""
    from PIL import Image, ImageDraw

    coarse = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = min(width, x0 + int(rng.integers(width // 8, width // 2 + 2)))
        y1 = min(height, y0 + int(rng.integers(height // 8, height // 2 + 2)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_imagefolder(
    root: Path,
    n_images: int,
    height: int,
    width: int,
    classes: int = 4,
    seed: int = 0,
    quality: int = 90,
    processes: int = 1,
) -> Path:
    """``root/train/c{k}/{i}.jpg``: an ImageFolder (train split only) of natural-ish JPEGs, image
    i in class i % classes."""
    names = [f"c{k}" for k in range(classes)]
    jobs = [
        (root / "train" / names[i % classes] / f"{i:06d}.jpg", (seed, i)) for i in range(n_images)
    ]
    _write_jpegs(jobs, height, width, quality, processes)
    return root


def write_imagefolder_classes(
    root: Path,
    classes: list[str],
    per_class: int,
    height: int,
    width: int,
    seed: int = 0,
    quality: int = 90,
    suffix: str = ".jpg",
    processes: int = 1,
) -> Path:
    """``root/<class>/{i}{suffix}``, ``per_class`` natural-ish JPEGs in each named class folder."""
    jobs = [
        (root / name / f"{i:06d}{suffix}", (seed, k, i))
        for k, name in enumerate(classes)
        for i in range(per_class)
    ]
    _write_jpegs(jobs, height, width, quality, processes)
    return root


def _write_jpegs(
    jobs: list[tuple[Path, tuple[int, ...]]], height: int, width: int, quality: int, processes: int
) -> None:
    """Each (path, seed) becomes one JPEG drawn from ``default_rng(seed)``: the same files
    whatever ``processes`` is (a GPU machine's many cores write thousands in seconds)."""
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    work = [(path, seed, height, width, quality) for path, seed in jobs]
    if processes > 1 and len(work) > 64:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_write_one_jpeg, work, chunksize=32)
    else:
        for item in work:
            _write_one_jpeg(item)


def _write_one_jpeg(item: tuple[Path, tuple[int, ...], int, int, int]) -> None:
    from PIL import Image

    path, seed, height, width, quality = item
    Image.fromarray(natural_image(np.random.default_rng(seed), height, width)).save(
        path, quality=quality
    )


def write_synthetic_card(path: Path, n_train_per_class: int, size: int, seed: int = 0) -> Path:
    """A synthetic data card (train split only is what the benchmarks preprocess)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "name": path.stem,
                "kind": "synthetic",
                "synthetic": {
                    "n_train_per_class": n_train_per_class,
                    "n_val_per_class": 1,
                    "size": size,
                    "spurious": False,
                    "seed": seed,
                },
            }
        )
    )
    return path


# --- model stand-ins --------------------------------------------------------------------------


def dpt_hybrid_config():
    """Intel/dpt-hybrid-midas's architecture (BiT-R50 stem + ViT-B/16 at 384 px, ~123M
    parameters) as transformers' conversion script sets it up; weights are random."""
    from transformers import DPTConfig

    return DPTConfig(
        is_hybrid=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=384,
        patch_size=16,
        backbone_out_indices=[2, 5, 8, 11],
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[256, 512, 768, 768],
        fusion_hidden_size=256,
        readout_type="project",
        use_batch_norm_in_fusion_residual=False,
        backbone_featmap_shape=[1, 1024, 24, 24],
    )


def save_dpt_hybrid(path: Path) -> Path:
    """A DPT-Hybrid-sized random depth model plus the hub checkpoint's image-processor settings
    (384x384, no aspect keeping, bicubic, mean/std 0.5), loadable by ``load_depth_model``."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    model = DPTForDepthEstimation(dpt_hybrid_config()).eval()
    processor = DPTImageProcessor(
        do_resize=True,
        size={"height": 384, "width": 384},
        keep_aspect_ratio=False,
        ensure_multiple_of=1,
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_pad=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def save_depth_model(path: Path, gpu: bool, image_size: int = 64) -> Path:
    """The benchmark's depth model: DPT-Hybrid-sized on a GPU, daat's tiny DPT on a CPU."""
    if gpu:
        return save_dpt_hybrid(path)
    from daat.tiny_models import save_tiny_dpt

    return Path(save_tiny_dpt(path, image_size=image_size))


def model_overrides(student: dict) -> list[str]:
    """``--set`` style overrides for the student architecture."""
    return [f"model.{k}={v}" for k, v in student.items()]
