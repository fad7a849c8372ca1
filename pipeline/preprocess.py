"""Stage 1, ``daat preprocess``: clean images -> shards with the depth saliency E(g(x)).

One pass over the card: DataLoader workers read, decode, orient, resize and JPEG-encode each input
(or render it, for the synthetic card) while the main process batches the stored images through
the frozen depth model, takes the Sobel magnitude at the stored resolution, and a writer thread
encodes the saliency PNGs and appends to the shard. Shards are the unit of resume: one that has
its tar and a matching sidecar is kept, any other is redone. Under torchrun, shard i of a split
belongs to rank i % world; rank 0 alone writes the manifest after every rank is done.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daat import artifacts
from daat import config as config_mod
from daat import depth_ref
from daat.depth_ref import ORACLE, is_oracle
from daat.errors import DataError
from daat.pipeline import shards as fmt
from daat.pipeline.images import (JPEG_SUBSAMPLING, RESAMPLE_NAME, BadImage, Geometry,
                                  decode_array, decode_file, decode_jpeg_bytes, encode_jpeg)

if TYPE_CHECKING:
    import torch

    from daat.dist import DistInfo

# torch (and daat.dist, daat.depth) are imported only once there is work to do: a rerun that
# finds its artifact complete answers from the manifest without paying torch's import.

_CHUNK = 8  # inputs per DataLoader item: fewer inter-process messages, still fine-grained


@dataclass(frozen=True)
class _Settings:
    resize_short: int
    center_crop: bool
    jpeg_quality: int
    max_pixels: int
    min_side: int
    render_size: int | None  # synthetic cards: the size the renderer draws at
    oracle: bool


@dataclass(frozen=True)
class _Job:
    split: str
    shard: int
    key: str
    label: int
    relpath: str
    path: str | None
    synthetic: object | None


def run(cfg: config_mod.Config, out: str) -> artifacts.Artifact:
    """Make (or reuse, or resume) the shard artifact ``cfg`` determines under ``out``."""
    from daat.cards import load_card
    card = load_card(cfg.data.card, cfg.data.root)
    oracle = is_oracle(cfg.depth.model)
    if oracle and card.kind != "synthetic":
        raise DataError(f"depth model 'oracle' is the synthetic data's exact depth; card "
                        f"'{card.name}' is {card.kind} data: pass --depth with a depth network")
    for split in cfg.data.splits:
        fmt.check_split(split)
    determining = _determining(cfg, card, oracle)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        art = artifacts.create_or_open(out, "shards", determining,
                                       config=config_mod.to_dict(cfg))
        if art.complete:
            return art
    import torch

    from daat import dist
    device = dist.pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    joined_here = not torch.distributed.is_initialized()
    info = dist.init(device)
    try:
        return _run(cfg, out, card, determining, oracle, device, info)
    finally:
        if joined_here and info.enabled:
            dist.cleanup()


def _run(cfg, out: str, card, determining: dict, oracle: bool, device: torch.device,
         info: DistInfo) -> artifacts.Artifact:
    from daat import dist
    art = _open(cfg, out, determining, info)
    if art.complete:
        return art
    items = {split: card.items(split) for split in cfg.data.splits}
    model = None
    if not oracle:
        from daat.depth import load_depth_model
        model = load_depth_model(cfg.depth.model, device, amp=cfg.depth.amp,
                                 channels_last=cfg.depth.channels_last, compile=cfg.depth.compile)
    depth_id = ORACLE if oracle else model.model_id
    settings = _Settings(cfg.data.resize_short, cfg.data.center_crop, cfg.data.jpeg_quality,
                         cfg.data.max_image_pixels, cfg.data.min_image_side,
                         _render_size(card), oracle)
    for split, split_items in items.items():
        _process_split(cfg, art, split, split_items, settings, model, depth_id, info, device)
    dist.barrier()
    if info.is_main:
        _finalise(cfg, art, card, items, depth_id)
    dist.barrier()
    return artifacts.open_artifact(art.path, kind="shards", require_complete=True)


def _render_size(card) -> int | None:
    if card.kind != "synthetic":
        return None
    return int(card.synthetic["size"])


def _determining(cfg, card, oracle: bool) -> dict:
    """Everything the shards depend on: the data/depth config, the resolved card, the depth
    model's identity, the inputs' fingerprints, and the format/encoding versions."""
    return {**config_mod.determining(cfg, "shards"), "card": card.to_dict(),
            "depth_identity": ORACLE if oracle else depth_ref.identity(cfg.depth.model),
            "inputs": {s: card.input_fingerprint(s) for s in cfg.data.splits},
            "format": fmt.FORMAT_VERSION, "saliency": fmt.SAL_ENCODING,
            "image_encoding": f"{RESAMPLE_NAME}; JPEG {JPEG_SUBSAMPLING}"}


def _open(cfg, out: str, determining: dict, info: DistInfo) -> artifacts.Artifact:
    """Rank 0 creates (or finds) the artifact; the others open it once it exists."""
    from daat import dist
    art = None
    if info.is_main:
        art = artifacts.create_or_open(out, "shards", determining, config=config_mod.to_dict(cfg))
    path = dist.all_gather_objects(str(art.path) if art is not None else None)[0]
    return art if art is not None else artifacts.open_artifact(path, kind="shards")


def _shard_plan(split: str, items: list, shard_size: int) -> list[list[_Job]]:
    jobs = [_Job(split, i // shard_size, fmt.sample_key(split, it.index), int(it.label),
                 str(it.relpath), None if it.path is None else str(it.path),
                 getattr(it, "synthetic", None)) for i, it in enumerate(items)]
    return [jobs[i:i + shard_size] for i in range(0, len(jobs), shard_size)]


def _process_split(cfg, art, split: str, items: list, settings: _Settings, model, depth_id: str,
                   info: DistInfo, device: torch.device) -> None:
    from tqdm import tqdm
    plan = _shard_plan(split, items, cfg.data.shard_size)
    mine = [s for s in range(len(plan)) if s % info.world_size == info.rank]
    pending = [s for s in mine
               if fmt.finished_sidecar(art.path, split, s, [j.key for j in plan[s]]) is None]
    total = sum(len(plan[s]) for s in mine)
    bar = tqdm(total=total, initial=total - sum(len(plan[s]) for s in pending), unit="img",
               desc=f"{split}" + (f" [rank {info.rank}]" if info.enabled else ""),
               position=info.rank, leave=True, dynamic_ncols=True)
    try:
        if pending:
            jobs = [job for s in pending for job in plan[s]]
            _Writer(art.path, plan, settings, model, depth_id, cfg.depth.batch_size, device,
                    bar).consume(_decoded(jobs, settings, cfg.data.num_workers))
    finally:
        bar.close()


def _decoded(jobs: list[_Job], settings: _Settings, num_workers: int):
    import torch
    chunks = [jobs[i:i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    loader = torch.utils.data.DataLoader(_DecodeChunks(chunks, settings), batch_size=None,
                                         num_workers=min(num_workers, len(chunks)),
                                         collate_fn=_as_is)
    for chunk in loader:
        yield from chunk


def _as_is(x):
    return x


class _DecodeChunks:
    """Item i = chunk i decoded: a list of records, each either stored-image bytes or a reason."""

    def __init__(self, chunks: list[list[_Job]], settings: _Settings):
        self.chunks, self.settings = chunks, settings

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> list[dict]:
        return [_decode_job(job, self.settings) for job in self.chunks[i]]


def _decode_job(job: _Job, s: _Settings) -> dict:
    record = {"job": job, "notes": [], "depth": None}
    try:
        if job.synthetic is not None:
            from daat.synthetic import render_item
            rgb, z = render_item(job.synthetic, s.render_size)
            stored, geo = decode_array(rgb, resize_short=s.resize_short,
                                       center_crop=s.center_crop)
            record["orig_hw"] = list(rgb.shape[:2])
            if s.oracle:
                record["depth"] = _oracle_depth(z, geo)
        else:
            decoded = decode_file(job.path, resize_short=s.resize_short,
                                  center_crop=s.center_crop, max_pixels=s.max_pixels,
                                  min_side=s.min_side)
            stored, record["orig_hw"], record["notes"] = (decoded.image, list(decoded.orig_hw),
                                                          decoded.notes)
    except BadImage as e:
        record["reason"] = e.record
        return record
    record["jpg"] = encode_jpeg(stored, s.jpeg_quality)
    if not s.oracle:
        import torch
        # The depth model sees the JPEG as training will decode it, so G is G of the stored x.
        record["image"] = torch.from_numpy(decode_jpeg_bytes(record["jpg"])).permute(2, 0, 1)
    return record


def _oracle_depth(z: np.ndarray, geo: Geometry) -> torch.Tensor:
    """The renderer's depth as relative inverse depth (what DPT-style models predict), moved onto
    the stored image's pixel grid by the same resize + crop."""
    import torch
    import torch.nn.functional as F
    if not np.isfinite(z).all() or (z <= 0).any():
        raise DataError("synthetic renderer returned non-positive or non-finite depth")
    inv = torch.from_numpy(1.0 / z.astype(np.float32))[None, None]
    if tuple(inv.shape[-2:]) != geo.resized:
        inv = F.interpolate(inv, size=geo.resized, mode="bilinear", align_corners=False,
                            antialias=True)
    return inv[0, 0, geo.top:geo.top + geo.height, geo.left:geo.left + geo.width].contiguous()


class _Writer:
    """Batches decoded records through the depth model; a single writer thread encodes the
    saliency PNGs and appends samples in order, overlapping the next batch's depth pass."""

    def __init__(self, root: Path, plan: list[list[_Job]], settings: _Settings, model,
                 depth_id: str, batch_size: int, device: torch.device, bar):
        self.root, self.plan, self.settings, self.model = root, plan, settings, model
        self.depth_id, self.batch_size, self.device, self.bar = depth_id, batch_size, device, bar
        self.writers: dict[int, fmt.ShardWriter] = {}
        self.left = {s: len(jobs) for s, jobs in enumerate(plan)}

    def consume(self, records) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        inflight = None
        batch: list[dict] = []
        try:
            for record in records:
                batch.append(record)
                if len(batch) >= self.batch_size:
                    inflight = self._submit(pool, inflight, batch)
                    batch = []
            if batch:
                inflight = self._submit(pool, inflight, batch)
            if inflight is not None:
                inflight.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            for writer in self.writers.values():
                writer.abort()
            raise
        pool.shutdown(wait=True)

    def _submit(self, pool, inflight, batch: list[dict]):
        saliency = self._saliency(batch)
        if inflight is not None:
            inflight.result()  # one batch in flight: bounded memory, errors surface here
        return pool.submit(self._write, batch, saliency)

    def _saliency(self, batch: list[dict]) -> list[tuple[np.ndarray, float] | None]:
        """Per record: (uint8 sqrt-companded E at the stored size, scale), or None if skipped."""
        import torch

        from daat.saliency import sobel_magnitude
        good = [i for i, r in enumerate(batch) if "reason" not in r]
        if self.settings.oracle:
            depths = [batch[i]["depth"] for i in good]
        else:
            images = [batch[i]["image"].to(self.device).float() / 255 for i in good]
            depths = self.model(images) if images else []
        out: list[tuple[np.ndarray, float] | None] = [None] * len(batch)
        by_size = collections.defaultdict(list)
        for i, depth in zip(good, depths):
            by_size[tuple(depth.shape)].append((i, depth))
        for group in by_size.values():
            stacked = torch.stack([d.to(self.device).float() for _, d in group])
            q, scale = fmt.quantise_saliency(sobel_magnitude(stacked))
            q, scale = q.cpu().numpy(), scale.cpu().tolist()
            for j, (i, _) in enumerate(group):
                out[i] = (q[j], scale[j])
        return out

    def _write(self, batch: list[dict], saliency: list) -> None:
        for record, sal in zip(batch, saliency):
            job = record["job"]
            writer = self.writers.get(job.shard)
            if writer is None:
                writer = self.writers[job.shard] = fmt.ShardWriter(
                    self.root, job.split, job.shard,
                    [(j.key, j.relpath) for j in self.plan[job.shard]])
            if sal is None:
                writer.skip(job.key, record["reason"])
            else:
                q, scale = sal
                meta = {"relpath": job.relpath, "label": job.label, "orig_hw": record["orig_hw"],
                        "hw": list(q.shape), "depth_model": self.depth_id, "sal_scale": scale,
                        "sal_encoding": fmt.SAL_ENCODING}
                if record["notes"]:
                    meta["notes"] = record["notes"]
                writer.add(job.key, jpg=record["jpg"], label=job.label, meta=meta,
                           sal_png=fmt.png_bytes(q))
            self.bar.update(1)
            self.left[job.shard] -= 1
            if self.left[job.shard] == 0:
                self.writers.pop(job.shard).close()


def _finalise(cfg, art: artifacts.Artifact, card, items: dict, depth_id: str) -> None:
    """Rank 0, after every rank's shards are in place: record files, facts, mark complete."""
    splits = {}
    for split, split_items in items.items():
        plan = _shard_plan(split, split_items, cfg.data.shard_size)
        splits[split] = fmt.record_split(art, split, [[j.key for j in jobs] for jobs in plan])
        _warn_skipped(split, len(split_items), splits[split]["skipped"]["items"], art.path)
    fmt.describe(art, classes=list(card.classes), splits=splits, depth_model=depth_id,
                 card=card.to_dict(),
                 image={"resize_short": cfg.data.resize_short, "center_crop": cfg.data.center_crop,
                        "jpeg_quality": cfg.data.jpeg_quality, "resample": RESAMPLE_NAME})
    art.mark_complete()


def _warn_skipped(split: str, total: int, skipped: list[dict], path: Path) -> None:
    if not skipped:
        return
    reasons = collections.Counter(x["reason"].split(":", 1)[0] for x in skipped)
    summary = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
    print(f"warning: skipped {len(skipped)} of {total} {split} inputs ({summary}); paths and "
          f"reasons in {path / artifacts.MANIFEST} under extra.splits.{split}.skipped",
          file=sys.stderr)
