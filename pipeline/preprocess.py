"""Stage 1, ``daat preprocess``: clean images -> shards with the depth saliency E(g(x)).

One pass over the card, in three kinds of process: DataLoader workers read, decode, orient, resize
and JPEG-encode each input (or render it, for the synthetic card); the main process batches the
stored images through the frozen depth model; a writer process (``pipeline/sink.py``) takes the
Sobel magnitude at the stored resolution (on a GPU the main process does that next to the model),
encodes the saliency PNGs and appends to the shards. Shards are the unit of resume: one that has
its tar and a matching sidecar is kept, any other is redone. Under torchrun, shard i of a split
belongs to rank i % world; rank 0 alone writes the manifest after every rank is done. The
artifact's writer lock (``daat/locks.py``, held by rank 0) keeps a second preprocess of the same
artifact out: it fails at once naming the holder instead of deleting the first one's temp files.
"""

from __future__ import annotations

import collections
import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daat import artifacts, depth_ref, keys
from daat import config as config_mod
from daat.artifact_admin import resume_line, reuse_line
from daat.depth_ref import ORACLE, is_oracle
from daat.errors import DataError
from daat.pipeline import shards as fmt
from daat.pipeline.images import (
    JPEG_SUBSAMPLING,
    RESAMPLE_NAME,
    BadImage,
    Geometry,
    decode_array,
    decode_file,
    decode_jpeg_bytes,
    encode_jpeg,
)
from daat.pipeline.sink import ShardSink, saliency_codes

if TYPE_CHECKING:
    import torch

    from daat.dist import DistInfo

# torch (and daat.dist, daat.depth) are imported only once there is work to do: a rerun that
# finds its artifact complete answers from the manifest without paying torch's import.

_CHUNK = 32  # inputs per DataLoader item: one message and one shared-memory buffer per chunk


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
    cfg = _with_depth_model(cfg, card)
    if os.environ.get("RANK", "0") == "0":
        config_mod.print_resolved(cfg, f"preprocess {card.name}")
    oracle = is_oracle(cfg.depth.model)
    if oracle and card.kind != "synthetic":
        raise DataError(
            f"depth model 'oracle' is the synthetic data's exact depth; card "
            f"'{card.name}' is {card.kind} data: pass --depth with a depth network"
        )
    for split in card.splits_to_write(cfg.data.splits):
        fmt.check_split(split)
    determining = _determining(cfg, card, oracle)
    art = None  # single process: opened (and locked) before torch is imported
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        art = artifacts.create_or_open(out, "shards", determining, config=config_mod.to_dict(cfg))
        if art.complete:
            _say(reuse_line(art))
            return art
    try:
        from daat import dist

        with dist.session(cfg.device) as (device, info):
            return _run(cfg, out, card, determining, oracle, device, info, art)
    finally:
        if art is not None:
            art.unlock()


def _with_depth_model(cfg: config_mod.Config, card) -> config_mod.Config:
    """``depth.model`` unset: the exact ``oracle`` depth for synthetic cards; real images need a
    depth network named."""
    if cfg.depth.model is not None:
        return cfg
    if card.kind != "synthetic":
        raise DataError(
            f"card '{card.name}' holds real images: name the depth model with --depth "
            f"(e.g. Intel/dpt-hybrid-midas) or depth.model"
        )
    cfg = copy.deepcopy(cfg)
    cfg.depth.model = ORACLE
    return cfg


def _run(
    cfg,
    out: str,
    card,
    determining: dict,
    oracle: bool,
    device: torch.device,
    info: DistInfo,
    art: artifacts.Artifact | None,
) -> artifacts.Artifact:
    from daat import dist

    art = art or _open(cfg, out, determining, info)
    try:
        if art.complete:
            if info.is_main:
                _say(reuse_line(art))
            return art
        items = {split: card.items(split) for split in card.splits_to_write(cfg.data.splits)}
        model = None if oracle else _LazyDepthModel(cfg.depth, device)
        settings = _Settings(
            cfg.data.resize_short,
            cfg.data.center_crop,
            cfg.data.jpeg_quality,
            cfg.data.max_image_pixels,
            cfg.data.min_image_side,
            _render_size(card),
            oracle,
        )
        with ShardSink(art.path, _writer_processes(device)) as sink:
            for split, split_items in items.items():
                _process_split(cfg, art, split, split_items, settings, model, info, device, sink)
            sink.finish()
        dist.barrier()
        if info.is_main:
            _finalise(cfg, art, card, items, ORACLE if oracle else model.model_id)
        dist.barrier()
        return artifacts.open_artifact(art.path, kind="shards", require_complete=True)
    finally:
        art.unlock()


def _writer_processes(device: torch.device) -> int:
    """One writer process does ~1,200 256-px samples/s (0.6 ms PNG + 0.2 ms tar each, measured on
    the 2-core CPU), too close to a GPU's >= 1000 img/s: on a GPU use one per 8 cores this rank
    can count on, 1 to 4. On CPU the depth model is far slower than one writer."""
    from daat.dist import cuda_paths

    if not cuda_paths(device):
        return 1
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, max(1, cores // 8))


class _LazyDepthModel:
    """The depth model, loaded on first use: the decode workers and the shard writer are forked
    before it exists (no weights or CUDA context in their address space) and fill their queues
    while it loads."""

    def __init__(self, depth_cfg, device: torch.device):
        self.cfg, self.device, self._model = depth_cfg, device, None

    def load(self):
        if self._model is None:
            from daat.depth import load_depth_model

            self._model = load_depth_model(
                self.cfg.model,
                self.device,
                amp=self.cfg.amp,
                channels_last=self.cfg.channels_last,
                compile=self.cfg.compile,
            )
        return self._model

    @property
    def model_id(self) -> str:
        return self.load().model_id

    def __call__(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.load()(images)


def _render_size(card) -> int | None:
    if card.kind != "synthetic":
        return None
    return int(card.synthetic["size"])


def _determining(cfg, card, oracle: bool) -> dict:
    """Everything the shards depend on: the data/depth config, the resolved card, the depth
    model's identity, the inputs' fingerprints, and the format/encoding versions."""
    ignore = keys.RULES["shards"].card_ignore
    card_facts = {k: v for k, v in card.to_dict().items() if k not in ignore}
    return {
        **keys.determining("shards", cfg),
        "card": card_facts,
        "depth_identity": ORACLE if oracle else depth_ref.identity(cfg.depth.model),
        "inputs": {s: card.input_fingerprint(s) for s in card.splits_to_write(cfg.data.splits)},
        "format": fmt.FORMAT_VERSION,
        "saliency": fmt.SAL_ENCODING,
        "image_encoding": f"{RESAMPLE_NAME}; JPEG {JPEG_SUBSAMPLING}",
    }


def _open(cfg, out: str, determining: dict, info: DistInfo) -> artifacts.Artifact:
    """Rank 0 creates (or finds) the artifact and holds its writer lock; the others open it once
    it exists (every rank raises if rank 0 could not, e.g. another job holds the lock)."""
    from daat import dist

    art = dist.main_first(
        lambda: artifacts.create_or_open(out, "shards", determining, config=config_mod.to_dict(cfg))
    )
    path = dist.all_gather_objects(str(art.path) if art is not None else None)[0]
    return art if art is not None else artifacts.open_artifact(path, kind="shards")


def _shard_plan(split: str, items: list, shard_size: int) -> list[list[_Job]]:
    jobs = [
        _Job(
            split,
            i // shard_size,
            fmt.sample_key(split, it.index),
            int(it.label),
            str(it.relpath),
            None if it.path is None else str(it.path),
            getattr(it, "synthetic", None),
        )
        for i, it in enumerate(items)
    ]
    return [jobs[i : i + shard_size] for i in range(0, len(jobs), shard_size)]


def _process_split(
    cfg,
    art,
    split: str,
    items: list,
    settings: _Settings,
    model,
    info: DistInfo,
    device: torch.device,
    sink: ShardSink,
) -> None:
    from tqdm import tqdm

    plan = _shard_plan(split, items, cfg.data.shard_size)
    mine = [s for s in range(len(plan)) if s % info.world_size == info.rank]
    pending = [
        s
        for s in mine
        if fmt.finished_sidecar(art.path, split, s, [j.key for j in plan[s]]) is None
    ]
    total = sum(len(plan[s]) for s in mine)
    if info.is_main and 0 < len(mine) - len(pending) < len(mine):
        _say(
            resume_line(
                art.path,
                f"{split}: {len(mine) - len(pending)} of {len(mine)} shards "
                f"already written{' by this rank' if info.enabled else ''}",
            )
        )
    bar = tqdm(
        total=total,
        initial=total - sum(len(plan[s]) for s in pending),
        unit="img",
        desc=f"{split}" + (f" [rank {info.rank}]" if info.enabled else ""),
        position=info.rank,
        leave=True,
        dynamic_ncols=True,
    )
    try:
        if pending:
            sink.plan({(split, s): [(j.key, j.relpath) for j in plan[s]] for s in pending})
            jobs = [job for s in pending for job in plan[s]]
            records = _decoded(jobs, settings, cfg.data.num_workers, cfg.depth.batch_size)
            _DepthBatches(model, cfg.depth.batch_size, device, sink, bar).consume(records)
    finally:
        bar.close()


def _decoded(jobs: list[_Job], settings: _Settings, num_workers: int, batch_size: int):
    import torch

    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    workers = min(num_workers, len(chunks))
    # Workers must be able to run two depth batches ahead: with torch's default (2 chunks per
    # worker) they stall while the model runs and the model then waits for them (measured: 45%
    # of the 2-core CPU idle at depth batch 64).
    ahead = {"prefetch_factor": max(2, -(-2 * batch_size // (_CHUNK * workers)))} if workers else {}
    loader = torch.utils.data.DataLoader(
        _DecodeChunks(chunks, settings),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_yield_to_model,
        **ahead,
    )
    for chunk in loader:
        yield from _unpack(chunk)


def _yield_to_model(_worker_id: int | None = None) -> None:
    """Decode workers run at a lower priority: the depth model's process is the pipeline's
    bottleneck, and on a machine with few cores a helper preempting it costs more than it gains.
    Their chunks travel as named shared memory ("file_system"): with the default fd passing, the
    model's process waited 1-5 ms per chunk for the busy worker to hand over the descriptor
    (measured), although the chunk had been decoded long before."""
    os.nice(5)
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy("file_system")


def _as_is(x):
    return x


class _DecodeChunks:
    """Item i = chunk i decoded: a list of records, each either stored-image bytes or a reason."""

    def __init__(self, chunks: list[list[_Job]], settings: _Settings):
        self.chunks, self.settings = chunks, settings

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[list[dict], torch.Tensor]:
        return _pack([_decode_job(job, self.settings) for job in self.chunks[i]])


_PACKED = ("jpg", "image", "depth")  # the bulky fields of a record


def _pack(records: list[dict]) -> tuple[list[dict], torch.Tensor]:
    """Move the bulky fields of a chunk's records into one uint8 tensor, which the DataLoader
    hands over in shared memory. Sent through its pipe instead, a chunk (~170 KB of 85x64
    images) crossed in 64 KB pieces, each waiting for the worker to be scheduled again: the
    model's process waited 3-8 ms per chunk (measured) for data decoded long before."""
    import torch

    parts, offset = [], 0
    for record in records:
        for field in _PACKED:
            value = record.get(field)
            if value is None:
                continue
            array = np.frombuffer(value, np.uint8) if isinstance(value, bytes) else value
            offset = -(-offset // 16) * 16  # aligned, so a float32 view of the buffer is legal
            parts.append((offset, array))
            record[field] = (type(value).__name__, offset, array.dtype.str, array.shape)
            offset += array.nbytes
    buffer = np.zeros(offset, np.uint8)
    for start, array in parts:
        buffer[start : start + array.nbytes] = (
            np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        )
    return records, torch.from_numpy(buffer)


def _unpack(chunk: tuple[list[dict], torch.Tensor]) -> list[dict]:
    records, buffer = chunk
    flat = buffer.numpy()
    for record in records:
        for field in _PACKED:
            if record.get(field) is None:
                continue
            kind, start, dtype, shape = record[field]
            dtype = np.dtype(dtype)
            view = flat[start : start + dtype.itemsize * int(np.prod(shape))].view(dtype)
            record[field] = view.tobytes() if kind == "bytes" else view.reshape(shape)
    return records


def _decode_job(job: _Job, s: _Settings) -> dict:
    record = {"job": job, "notes": [], "depth": None}
    try:
        if job.synthetic is not None:
            from daat.synthetic import render_item

            rgb, z = render_item(job.synthetic, s.render_size)
            stored, geo = decode_array(rgb, resize_short=s.resize_short, center_crop=s.center_crop)
            record["orig_hw"] = list(rgb.shape[:2])
            if s.oracle:
                record["depth"] = _oracle_depth(z, geo).numpy()
        else:
            decoded = decode_file(
                job.path,
                resize_short=s.resize_short,
                center_crop=s.center_crop,
                max_pixels=s.max_pixels,
                min_side=s.min_side,
            )
            stored, record["orig_hw"], record["notes"] = (
                decoded.image,
                list(decoded.orig_hw),
                decoded.notes,
            )
    except BadImage as e:
        record["reason"] = e.record
        return record
    record["jpg"] = encode_jpeg(stored, s.jpeg_quality)
    if not s.oracle:
        # The depth model sees the JPEG as training will decode it, so G is G of the stored x.
        record["image"] = decode_jpeg_bytes(record["jpg"])
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
        inv = F.interpolate(
            inv, size=geo.resized, mode="bilinear", align_corners=False, antialias=True
        )
    return inv[0, 0, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width].contiguous()


class _DepthBatches:
    """Batches decoded records through the depth model and hands each batch to the shard writer
    process, which encodes and writes it while the next batch's depth pass runs here."""

    def __init__(
        self,
        model: _LazyDepthModel | None,
        batch_size: int,
        device: torch.device,
        sink: ShardSink,
        bar,
    ):
        self.model, self.batch_size = model, batch_size
        self.device, self.sink, self.bar = device, sink, bar

    def consume(self, records) -> None:
        batch: list[dict] = []
        for record in records:
            if self.model is not None and not batch:
                self.model.load()  # the workers are running now; they decode while it loads
            batch.append(record)
            if len(batch) >= self.batch_size:
                self._submit(batch)
                batch = []
        if batch:
            self._submit(batch)
        self._drain(0)

    def _submit(self, batch: list[dict]) -> None:
        finished = self._with_saliency(batch)
        # Two batches in flight: slack for a writer that was scheduled late, memory still
        # bounded; the writer's errors surface here.
        self._drain(1)
        self.sink.write(finished)

    def _drain(self, keep: int) -> None:
        while self.sink.unanswered > keep:
            self.bar.update(self.sink.wait())

    def _with_saliency(self, batch: list[dict]) -> list[dict]:
        """Records as the writer takes them: skipped ones keep their reason, the others get their
        depth map, or on a GPU the 8-bit E already computed next to the model (E on the CPU is
        the writer's job: it has a core of its own, this process is busy with the model)."""
        import torch

        from daat.dist import cuda_paths

        good = [i for i, r in enumerate(batch) if "reason" not in r]
        if self.model is None:
            depths = [torch.from_numpy(batch[i]["depth"]) for i in good]
        else:
            images = [
                torch.from_numpy(batch[i]["image"]).to(self.device).permute(2, 0, 1).float() / 255
                for i in good
            ]
            depths = self.model(images) if images else []
        depth_id = ORACLE if self.model is None else self.model.model_id
        out = [_sink_record(r, depth_id) for r in batch]
        if not cuda_paths(self.device):
            for i, depth in zip(good, depths):
                out[i]["depth"] = depth.float().numpy()
        else:
            for i, (q, scale) in zip(good, saliency_codes(depths, self.device)):
                out[i]["saliency"], out[i]["scale"] = q, scale
        return out


def _sink_record(record: dict, depth_id: str) -> dict:
    job = record["job"]
    out = {"split": job.split, "shard": job.shard, "key": job.key}
    if "reason" in record:
        return {**out, "reason": record["reason"]}
    meta = {
        "relpath": job.relpath,
        "label": job.label,
        "orig_hw": record["orig_hw"],
        "depth_model": depth_id,
    }
    texture_class = getattr(job.synthetic, "texture_class", None)
    if texture_class is not None:
        meta[fmt.TEXTURE_LABEL] = int(texture_class)
    if record["notes"]:
        meta["notes"] = record["notes"]
    return {**out, "jpg": record["jpg"], "label": job.label, "meta": meta}


def _finalise(cfg, art: artifacts.Artifact, card, items: dict, depth_id: str) -> None:
    """Rank 0, after every rank's shards are in place: record files, facts, mark complete."""
    splits = {}
    for split, split_items in items.items():
        plan = _shard_plan(split, split_items, cfg.data.shard_size)
        splits[split] = fmt.record_split(art, split, [[j.key for j in jobs] for jobs in plan])
        left_out = card.skipped(split)  # entries the folder scan did not read, with reasons
        skipped = splits[split]["skipped"]
        skipped["items"] = sorted(skipped["items"] + left_out, key=lambda x: x["relpath"])
        skipped["count"] = len(skipped["items"])
        _warn_skipped(split, len(split_items) + len(left_out), skipped["items"], art.path)
    fmt.describe(
        art,
        classes=list(card.classes),
        splits=splits,
        depth_model=depth_id,
        card=card.to_dict(),
        image={
            "resize_short": cfg.data.resize_short,
            "center_crop": cfg.data.center_crop,
            "jpeg_quality": cfg.data.jpeg_quality,
            "resample": RESAMPLE_NAME,
        },
    )
    art.mark_complete()


def _say(message: str) -> None:
    print(f"[preprocess] {message}", file=sys.stderr, flush=True)


def _warn_skipped(split: str, total: int, skipped: list[dict], path: Path) -> None:
    if not skipped:
        return
    reasons = collections.Counter(x["reason"].split(":", 1)[0] for x in skipped)
    summary = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
    print(
        f"warning: skipped {len(skipped)} of {total} {split} inputs ({summary}); paths and "
        f"reasons in {path / artifacts.MANIFEST} under extra.splits.{split}.skipped",
        file=sys.stderr,
    )
