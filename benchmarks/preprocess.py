"""Stage 1 benchmark: ``daat preprocess`` end to end vs the depth model alone, shard bytes, and the
error the 8-bit saliency encoding puts into the pooled G.

    python benchmarks/preprocess.py                 # CPU: tiny DPT, small JPEG ImageFolder
    python benchmarks/preprocess.py --device cuda   # GPU: DPT-Hybrid-sized model at 384 px

- end to end: the real ``daat.pipeline.preprocess.run`` on an ImageFolder of JPEGs (decode,
  orient, resize once, JPEG encode, depth model, Sobel, 8-bit PNG saliency, tar, sidecars,
  manifest), after a small untimed warm-up run in the same process (imports, model load,
  autotuning / compilation are paid there);
- model only: the same depth model, loaded with the same settings, on the stored images of that
  run, already decoded and batched exactly as preprocess batches them (same device);
- bytes per sample of each shard member, and the max |G_stored - G_float| over samples and patch
  cells, G_float recomputed from the same model's float depth (``g_err_format`` isolates the
  encoding: the recomputed float E through quantise/dequantise, no model difference possible).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks import common

CPU_DEFAULTS = dict(
    n_images=4096,
    warmup_images=128,
    height=96,
    width=128,
    resize_short=64,
    batch_size=64,
    num_workers=1,
    grid=8,
    depth_image_size=64,
)
GPU_DEFAULTS = dict(
    n_images=8192,
    warmup_images=1024,
    height=375,
    width=500,
    resize_short=256,
    batch_size=128,
    num_workers=14,
    grid=16,
    depth_image_size=384,
)


def _config(card: Path, depth_dir: Path, device: torch.device, p: dict, compile: bool):
    from daat import config

    return config.load(
        [],
        [
            f"data.card={card}",
            "data.splits=[train]",
            f"data.resize_short={p['resize_short']}",
            f"data.shard_size={max(1, p['n_images'] // 4)}",
            f"data.num_workers={p['num_workers']}",
            f"depth.model={depth_dir}",
            f"depth.batch_size={p['batch_size']}",
            f"depth.compile={str(compile).lower()}",
            f"device={device.type}",
        ],
    )


def run_e2e(
    card: Path, out: Path, depth_dir: Path, device: torch.device, p: dict, compile: bool
) -> tuple[object, float, list[float]]:
    """(shard artifact, seconds, [main-process, worker] CPU seconds) of one preprocess run."""
    from daat.pipeline import preprocess
    from daat.pipeline.shards import open_shards

    cfg = _config(card, depth_dir, device, p, compile)
    start, cpu = time.perf_counter(), _cpu_seconds()
    art = preprocess.run(cfg, str(out))
    seconds = time.perf_counter() - start
    spent = [b - a for a, b in zip(cpu, _cpu_seconds())]
    return open_shards(art.path), seconds, spent


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process (all its threads) and of its reaped children (the decode
    workers): a load-independent view of where the work goes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def stored_images(art) -> list[torch.Tensor]:
    """The stored images of a shard artifact as preprocess feeds them to the model: uint8
    [3,H,W] decoded from the shard's JPEGs."""
    from daat.pipeline.shards import iter_samples

    return [
        torch.from_numpy(s.image).permute(2, 0, 1).contiguous() for s in iter_samples(art, "train")
    ]


def _as_model_input(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [im.to(device).float() / 255 for im in images]  # what preprocess's writer passes


def model_only(
    model, images: list[torch.Tensor], batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(img/s, CPU ms per image) of the depth model alone on pre-decoded batches (host -> device
    copy included, as in preprocess); the first batch is an untimed warm-up."""
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    model(_as_model_input(batches[0], device))
    common.sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        model(_as_model_input(batch, device))
    common.sync(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(images) / seconds, cpu / len(images) * 1000


def member_bytes(art) -> dict:
    """Mean bytes per sample of each member, and of the tar files (headers included)."""
    from daat.pipeline.shards import MEMBERS, iter_raw

    totals = dict.fromkeys(MEMBERS, 0)
    samples, tar_bytes = 0, 0
    for path, _ in art.shards("train"):
        tar_bytes += Path(path).stat().st_size
        for raw in iter_raw(path):
            samples += 1
            for member in MEMBERS:
                totals[member] += len(raw[member])
    if samples == 0:
        raise RuntimeError(f"{art.path}: no samples to measure")
    per = {m: totals[m] / samples for m in MEMBERS}
    return {
        "samples": samples,
        "image_bytes_per_sample": per["jpg"],
        "saliency_bytes_per_sample": per["sal.png"],
        "saliency_over_image_bytes": per["sal.png"] / per["jpg"],
        "other_bytes_per_sample": per["cls"] + per["json"],
        "tar_bytes_per_sample": tar_bytes / samples,
    }


def g_errors(
    stored_e: list[np.ndarray], float_e: list[torch.Tensor], grid: tuple[int, int]
) -> dict:
    """max |G| differences: stored 8-bit E vs float E, and float E through the encoder alone."""
    from daat.pipeline.saliency_codec import dequantise_saliency, quantise_saliency
    from daat.saliency import saliency_from_edges

    worst_stored, worst_format = 0.0, 0.0
    for stored, exact in zip(stored_e, float_e, strict=True):
        exact = exact.detach().cpu().float()[None]
        g_float = saliency_from_edges(exact.double(), grid)
        g_stored = saliency_from_edges(torch.from_numpy(stored)[None].double(), grid)
        q, scale = quantise_saliency(exact)
        roundtrip = torch.from_numpy(dequantise_saliency(q[0].numpy(), float(scale[0])))
        g_format = saliency_from_edges(roundtrip[None].double(), grid)
        worst_stored = max(worst_stored, (g_stored - g_float).abs().max().item())
        worst_format = max(worst_format, (g_format - g_float).abs().max().item())
    return {
        "g_err_stored_vs_float": worst_stored,
        "g_err_format": worst_format,
        "g_grid": list(grid),
        "g_uniform_value": 1.0 / (grid[0] * grid[1]),
    }


def model_saliency_errors(
    art, model, grid: tuple[int, int], device: torch.device, batch_size: int
) -> dict:
    """``g_errors`` for a model-depth artifact: float E recomputed by ``model`` on the stored
    images, batched like preprocess."""
    from daat.pipeline.shards import iter_samples
    from daat.saliency import sobel_magnitude

    samples = list(iter_samples(art, "train"))
    float_e: list[torch.Tensor] = []
    for i in range(0, len(samples), batch_size):
        images = [torch.from_numpy(s.image).permute(2, 0, 1) for s in samples[i : i + batch_size]]
        for depth in model(_as_model_input(images, device)):
            float_e.append(sobel_magnitude(depth.float()[None])[0])
    return g_errors([s.saliency for s in samples], float_e, grid)


def png_encode_ms(art, limit: int = 64) -> float:
    """Mean ms to PNG-encode one stored saliency map: preprocess's single writer thread does
    this for every sample, so 1000 / this caps its end-to-end img/s."""
    from daat.pipeline.saliency_codec import png_bytes, quantise_saliency
    from daat.pipeline.shards import iter_samples

    maps = []
    for sample in iter_samples(art, "train"):
        maps.append(quantise_saliency(torch.from_numpy(sample.saliency)[None])[0][0].numpy())
        if len(maps) == limit:
            break
    start = time.perf_counter()
    for q in maps:
        png_bytes(q)
    return (time.perf_counter() - start) / len(maps) * 1000


def measure(
    workdir: Path,
    device: torch.device,
    depth_dir: Path | None = None,
    compile: bool = False,
    **overrides,
) -> dict:
    """All stage-1 figures; ``overrides`` change CPU_DEFAULTS / GPU_DEFAULTS entries."""
    from daat.depth import load_depth_model

    p = {**(GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS), **overrides}
    workdir.mkdir(parents=True, exist_ok=True)
    if depth_dir is None:
        depth_dir = common.save_depth_model(
            workdir / "depth-model", device.type == "cuda", image_size=p["depth_image_size"]
        )
    writers = (os.cpu_count() or 1) if device.type == "cuda" else 1  # CPU: the timed core only
    inputs = common.write_imagefolder(
        workdir / "images", p["n_images"], p["height"], p["width"], processes=writers
    )
    warm = common.write_imagefolder(
        workdir / "warm-images",
        p["warmup_images"],
        p["height"],
        p["width"],
        seed=1,
        processes=writers,
    )
    warm_p = {**p, "n_images": p["warmup_images"]}
    warm_art, warm_s, _ = run_e2e(warm, workdir / "out-warm", depth_dir, device, warm_p, compile)
    cfg = _config(inputs, depth_dir, device, p, compile)
    model = load_depth_model(
        str(depth_dir),
        device,
        amp=cfg.depth.amp,
        channels_last=cfg.depth.channels_last,
        compile=compile,
    )
    # Model-only right before and right after the timed run (on the warm-up run's images, which
    # have the same size), averaged: a load change during the run biases the ratio less.
    before, _ = model_only(model, stored_images(warm_art), p["batch_size"], device)
    art, e2e_s, (main_cpu, worker_cpu) = run_e2e(
        inputs, workdir / "out", depth_dir, device, p, compile
    )
    written = art.split_size("train")
    e2e = written / e2e_s
    images = stored_images(art)
    after, model_cpu_ms = model_only(model, images, p["batch_size"], device)
    alone = (before + after) / 2
    grid = (p["grid"], p["grid"])
    return {
        "preprocess_e2e_img_per_s": e2e,
        "preprocess_model_img_per_s": alone,
        "preprocess_e2e_over_model": e2e / alone,
        "preprocess_images": written,
        "preprocess_model_img_per_s_before_after": [before, after],
        "preprocess_main_cpu_ms_per_image": main_cpu / written * 1000,
        "preprocess_worker_cpu_ms_per_image": worker_cpu / written * 1000,
        "preprocess_model_cpu_ms_per_image": model_cpu_ms,
        # e2e/model if the main process (model + writer thread) had one idle core to itself
        "preprocess_model_cpu_over_main_cpu": model_cpu_ms / (main_cpu / written * 1000),
        "preprocess_e2e_seconds": e2e_s,
        "preprocess_warmup_seconds": warm_s,
        "preprocess_stored_hw": list(images[0].shape[-2:]),
        "preprocess_input_hw": [p["height"], p["width"]],
        "preprocess_depth_model": model.model_id,
        "preprocess_depth_input": p["depth_image_size"],
        "preprocess_num_workers": p["num_workers"],
        "preprocess_batch_size": p["batch_size"],
        "preprocess_png_encode_ms": png_encode_ms(art),
        **{f"preprocess_{k}": v for k, v in member_bytes(art).items()},
        **{
            f"preprocess_{k}": v
            for k, v in model_saliency_errors(art, model, grid, device, p["batch_size"]).items()
        },
    }


def oracle_saliency_errors(
    art, card_path: Path, grid: tuple[int, int], limit: int | None = None
) -> dict:
    """``g_errors`` for a synthetic artifact made from ``card_path`` with the oracle depth: the
    float E is recomputed from the renderer's exact depth on the stored pixel grid."""
    from daat.cards import load_card
    from daat.pipeline.images import decode_array
    from daat.pipeline.oracle import oracle_depth  # the one definition of that transform
    from daat.pipeline.shards import iter_samples
    from daat.saliency import sobel_magnitude
    from daat.synthetic import render_item

    card = load_card(str(card_path))
    items = {f"train-{it.index:09d}": it for it in card.items("train")}
    size, policy = int(card.synthetic["size"]), art.image_policy
    stored, exact = [], []
    for sample in iter_samples(art, "train"):
        rgb, z = render_item(items[sample.key].synthetic, size)
        _, geo = decode_array(
            rgb, resize_short=policy["resize_short"], center_crop=policy["center_crop"]
        )
        exact.append(sobel_magnitude(oracle_depth(z, geo)[None])[0])
        stored.append(sample.saliency)
        if limit is not None and len(stored) >= limit:
            break
    return g_errors(stored, exact, grid)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--images", type=int, help="images in the timed run")
    parser.add_argument("--workers", type=int, help="decode workers (DataLoader)")
    parser.add_argument(
        "--depth-size",
        type=int,
        help="CPU only: input size of the tiny DPT (its processor resizes to it)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the depth model")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: temp)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = common.pick_device(args.device)
    common.configure_threads(device, args.threads)
    overrides = {
        k: v
        for k, v in (
            ("n_images", args.images),
            ("num_workers", args.workers),
            ("depth_image_size", args.depth_size),
        )
        if v is not None
    }
    with tempfile.TemporaryDirectory(prefix="daat-bench-pre-") as tmp:
        result = measure(args.workdir or Path(tmp), device, compile=args.compile, **overrides)
    result["machine"] = common.machine(device)
    for key in (
        "preprocess_e2e_img_per_s",
        "preprocess_model_img_per_s",
        "preprocess_e2e_over_model",
        "preprocess_saliency_over_image_bytes",
        "preprocess_g_err_stored_vs_float",
    ):
        print(f"{key}: {result[key]:.4g}")
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
