"""The decode side of ``daat preprocess``: DataLoader workers turn each ``Job`` into a ``Record``
(read, decode, orient, resize and JPEG-encode an input file, or render a synthetic item and put
its exact depth on the stored grid), a chunk of inputs at a time.

``decoded`` yields the records in job order in the depth model's process. Imports
``pipeline/images.py``, ``records.py``, ``transport.py``, ``oracle.py`` and the synthetic renderer;
nothing here knows the shard format or the depth model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from daat.pipeline import transport
from daat.pipeline.images import BadImage, decode_array, decode_file, decode_jpeg_bytes, encode_jpeg
from daat.pipeline.oracle import oracle_depth
from daat.pipeline.records import Job, Record

CHUNK = 32  # inputs per DataLoader item: one message and one shared-memory buffer per chunk


@dataclass(frozen=True)
class Settings:
    """How every input of a run is decoded and stored (from ``data.*`` and the card)."""

    resize_short: int
    center_crop: bool
    jpeg_quality: int
    max_pixels: int
    min_side: int
    render_size: int | None  # synthetic cards: the size the renderer draws at
    oracle: bool  # depth is the renderer's, not a model's: no decoded image for the model


def decoded(
    jobs: list[Job], settings: Settings, num_workers: int, batch_size: int
) -> Iterator[Record]:
    """Every job's record, in order, decoded by up to ``num_workers`` worker processes that stay
    two depth batches of ``batch_size`` ahead."""
    import torch

    chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    workers = min(num_workers, len(chunks))
    # Workers must be able to run two depth batches ahead: with torch's default (2 chunks per
    # worker) they stall while the model runs and the model then waits for them (measured: 45%
    # of the 2-core CPU idle at depth batch 64).
    ahead = {"prefetch_factor": max(2, -(-2 * batch_size // (CHUNK * workers)))} if workers else {}
    loader = torch.utils.data.DataLoader(
        _DecodeChunks(chunks, settings),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_yield_to_model,
        **ahead,
    )
    for chunk in loader:
        yield from transport.unpack(chunk)


def _yield_to_model(_worker_id: int | None = None) -> None:
    """Decode workers run at a lower priority: the depth model's process is the pipeline's
    bottleneck, and on a machine with few cores a helper preempting it costs more than it gains."""
    os.nice(5)
    transport.share_by_name()


def _as_is(x):
    return x


class _DecodeChunks:
    """Item i = chunk i decoded and packed for transport."""

    def __init__(self, chunks: list[list[Job]], settings: Settings):
        self.chunks, self.settings = chunks, settings

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> transport.Chunk:
        return transport.pack([decode_job(job, self.settings) for job in self.chunks[i]])


def decode_job(job: Job, s: Settings) -> Record:
    """``job``'s record: the stored JPEG and its facts, or the reason it is skipped
    (``BadImage``); for the oracle the depth map too, otherwise the JPEG decoded again."""
    depth, notes = None, ()
    try:
        if job.synthetic is not None:
            from daat.synthetic import render_item

            rgb, z = render_item(job.synthetic, s.render_size)
            stored, geo = decode_array(rgb, resize_short=s.resize_short, center_crop=s.center_crop)
            orig_hw = tuple(rgb.shape[:2])
            if s.oracle:
                depth = oracle_depth(z, geo).numpy()
        else:
            image = decode_file(
                job.path,
                resize_short=s.resize_short,
                center_crop=s.center_crop,
                max_pixels=s.max_pixels,
                min_side=s.min_side,
            )
            stored, orig_hw, notes = image.image, tuple(image.orig_hw), tuple(image.notes)
    except BadImage as e:
        return Record.of(job, reason=e.record)
    jpg = encode_jpeg(stored, s.jpeg_quality)
    # The depth model sees the JPEG as training will decode it, so G is G of the stored x.
    image = None if s.oracle else decode_jpeg_bytes(jpg)
    return Record.of(job, jpg=jpg, orig_hw=orig_hw, notes=notes, image=image, depth=depth)
