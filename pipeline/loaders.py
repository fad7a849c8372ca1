"""Batch readers over shard artifacts: the training stream (resampled, joint random resized crop
+ flip of image and saliency, G pooled on the patch grid) and the evaluation stream (ordered,
complete, centre view). Samples come from ``pipeline/shards.py``, the one module that knows the
format; everything here is augmentation, batching and the order samples are read in. The readers
do not hash what they read: the stages verify the tars before and after (``require_intact``; the
loader benchmark measured hashing while streaming as well, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daat.errors import ShardFormatError
from daat.pipeline.shards import (
    Sample,
    decode,
    decode_members,
    dequantise_saliency,
    iter_raw,
    open_shards,
)

if TYPE_CHECKING:
    import torch


def require_intact(shard_art, problems: list[str], when: str) -> None:
    """Raise on every rank if any rank's ``FileGuard`` check of ``shard_art`` found a problem
    (each rank checked its own share of the tars), naming the first bad file."""
    from daat import dist

    problems = dist.problems_everywhere(problems)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShardFormatError(
            f"{shard_art.path}/{problems[0]}{more}, found {when}: the shards "
            f"no longer hold what preprocessing wrote; restore them from a "
            f"good copy or preprocess again"
        )


def batches_per_epoch(samples_per_epoch: int, batch_size: int, world_size: int) -> int:
    """Training batches each rank yields per epoch (equal on every rank, at least 1)."""
    return max(1, math.ceil(samples_per_epoch / (batch_size * world_size)))


# --- readers: training and evaluation batches -----------------------------------------------


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def _to_stack(sample: Sample) -> torch.Tensor:
    """[4,H,W] float: RGB in [0,1] and the saliency as the 4th channel, for joint geometry."""
    import torch

    image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float() / 255
    return torch.cat([image, torch.from_numpy(sample.saliency)[None]], dim=0)


def _collate(stacks: list[torch.Tensor], labels: list[int], grid: tuple[int, int]):
    import torch

    from daat.saliency import saliency_from_edges

    batch = torch.stack(stacks)
    images = batch[:, :3].clamp_(0, 1).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64), saliency_from_edges(batch[:, 3], grid)


def _seed_ints(*parts: int) -> list[int]:
    return [int(p) % (1 << 63) for p in parts]


def _worker() -> tuple[int, int]:
    import torch

    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


@dataclass(frozen=True)
class _TrainPlan:
    shards: tuple[str, ...]
    weights: tuple[float, ...]
    seed: int
    epoch: int
    rank: int
    world_size: int
    streams: int  # = max(1, num_workers): one independent sample stream per worker
    batch_size: int
    batches: int
    skip_batches: int
    image_size: int
    grid: tuple[int, int]
    rrc_scale: tuple[float, float]
    hflip: bool
    shuffle_buffer: int

    def stream(self) -> tuple[int, int, int]:
        """(stream id, batches of it already consumed, batches of it to yield) for this worker.
        Global batch j comes from stream j % streams; worker d serves stream (d + skip) % streams
        so the DataLoader's round robin over workers yields batches skip, skip+1, ... in order."""
        worker, _ = _worker()
        s = (worker + self.skip_batches) % self.streams
        total = max(0, math.ceil((self.batches - s) / self.streams))
        done = min(total, max(0, math.ceil((self.skip_batches - s) / self.streams)))
        return s, done, total - done

    def rng(self, stream: int, *tail: int) -> np.random.Generator:
        return np.random.default_rng(
            _seed_ints(
                self.seed, self.epoch, self.rank, self.world_size, self.streams, stream, *tail
            )
        )


class _TrainSource:
    """Resampled shards (weighted by sample count) -> shuffled raw samples -> this stream's
    slice, numbered so augmentation randomness depends on the sample's place, not on timing."""

    def __init__(self, plan: _TrainPlan):
        self.plan = plan

    def __call__(self) -> Iterator[tuple[int, dict]]:
        import random

        import webdataset as wds

        plan = self.plan
        stream, done, todo = plan.stream()
        if todo == 0:
            return
        pick = plan.rng(stream, 0)
        urls = iter(lambda: plan.shards[pick.choice(len(plan.shards), p=plan.weights)], None)
        raw = (sample for url in urls for sample in iter_raw(url))
        shuffle_seed = int(plan.rng(stream, 1).integers(1 << 62))
        mixed = wds.shuffle(
            plan.shuffle_buffer, plan.shuffle_buffer, rng=random.Random(shuffle_seed)
        )(raw)
        first = done * plan.batch_size
        taken = itertools.islice(mixed, first, first + todo * plan.batch_size)
        yield from ((first + i, s) for i, s in enumerate(taken))


def augment(
    sample: Sample,
    rng: np.random.Generator,
    *,
    image_size: int,
    rrc_scale: tuple[float, float],
    hflip: bool,
) -> torch.Tensor:
    """Joint random resized crop + horizontal flip: one box and one coin for image and saliency.
    Returns [4,S,S]: RGB in [0,1] (channels 0-2) and the saliency E (channel 3).

    The image is cropped while still uint8 and resized by torch's vectorised uint8 kernel (the same
    antialiased bilinear as the saliency's float path, so both stay aligned pixel for pixel); only
    the S x S result becomes float: ~20-30% more img/s than resizing a float [4,H,W] stack, pixels
    within 1/255 of it (benchmarks/loader.py). The training reader draws the same view and makes
    the same image, but pools the saliency without this S x S map (``_pooled_view``)."""
    import torch

    h, w = sample.saliency.shape
    box, flip = _draw_view(rng, h, w, rrc_scale, hflip)
    image = _image_view(torch.from_numpy(sample.image).permute(2, 0, 1), box, image_size, flip)
    top, left, ch, cw = box
    sal = torch.from_numpy(np.ascontiguousarray(sample.saliency[top : top + ch, left : left + cw]))
    sal = _resize_square(sal[None, None], image_size)[0]
    return torch.cat([image.float().div_(255), sal.flip(-1) if flip else sal])


def _draw_view(
    rng: np.random.Generator, h: int, w: int, rrc_scale: tuple[float, float], hflip: bool
) -> tuple[tuple[int, int, int, int], bool]:
    """The random view of an h x w sample: crop box (top, left, height, width), then the flip
    coin (drawn only when ``hflip``)."""
    from daat.pipeline.images import rrc_box

    box = rrc_box(rng, h, w, rrc_scale)
    return box, bool(hflip and rng.random() < 0.5)


def _image_view(
    image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """uint8 [3,H,W] (any strides) -> the view's uint8 [3,S,S]: crop, resize, flip. Flipping the
    uint8 result gives the same values as flipping after the float conversion, at 1/4 the bytes."""
    top, left, ch, cw = box
    out = _resize_square(image[None, :, top : top + ch, left : left + cw], size)[0]
    return out.flip(-1) if flip else out


def _pooled_view(
    q: np.ndarray,
    scale: float,
    box: tuple[int, int, int, int],
    size: int,
    grid: tuple[int, int],
    flip: bool,
) -> torch.Tensor:
    """pool_to_grid(the view's resized, flipped E) [gh,gw] straight from the quantised map, never
    making the S x S float map: resize and pooling are linear and act on rows and columns
    separately, so pool(resize(crop)) = A_h @ crop @ A_w^T (``_pool_weights``), ~5x cheaper than
    resizing the float crop. Equal to pooling ``augment``'s channel 3 up to float32 rounding
    (tests/test_shards.py)."""
    import torch

    top, left, ch, cw = box
    e = torch.from_numpy(dequantise_saliency(q[top : top + ch, left : left + cw], scale))
    pooled = _pool_weights(ch, size, grid[0]) @ e @ _pool_weights(cw, size, grid[1]).T
    return pooled.flip(-1) if flip else pooled


@functools.lru_cache(maxsize=4096)
def _pool_weights(n: int, size: int, cells: int) -> torch.Tensor:
    """float32 [cells, n]: an axis of n pixels resized to ``size`` as ``_resize_square`` does, then
    average-pooled onto ``cells`` bins as ``pool_to_grid`` does, as one matrix. Both factors are
    read off torch's own kernels (their responses to unit impulses), so they are whatever weights
    torch uses; crop sizes repeat, hence the cache."""
    import torch
    import torch.nn.functional as F

    if n == size:
        resize = torch.eye(n, dtype=torch.float64)
    elif n == 1:  # one pixel resizes to a constant (and torch 2.14 mis-resizes width-1 inputs)
        resize = torch.ones(size, 1, dtype=torch.float64)
    else:  # column j of the n x n identity is the impulse at pixel j; the width stays n
        impulses = torch.eye(n)[None, None]  # float32: the weights of the float32 saliency path
        resize = F.interpolate(
            impulses, size=(size, n), mode="bilinear", align_corners=False, antialias=True
        )[0, 0].double()
    pool = F.adaptive_avg_pool1d(torch.eye(size, dtype=torch.float64)[None], cells)[0].T
    return (pool @ resize).float()


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """[1,C,h,w] -> [1,C,size,size], bilinear, antialiased, align_corners=False (uint8 or float)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def center_view(sample: Sample, *, image_size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Evaluation's deterministic view: centre square (crop_pct of the short side) -> [4,S,S]."""
    from daat.pipeline.images import center_box, crop_resize

    h, w = sample.saliency.shape
    return crop_resize(_to_stack(sample), center_box(h, w, crop_pct), image_size)


class _TrainAugment:
    """Decode, joint random resized crop + flip, batch, pool the saliency into G.

    Each sample goes straight into its slot of the batch: the image as uint8 -> float in place,
    the saliency as its pooled grid only. Per sample that is what ``augment`` + pooling computes,
    without its [4,S,S] float stack and the batch-wide stack/copy passes (memory traffic was ~15%
    of the reader's CPU)."""

    def __init__(self, plan: _TrainPlan):
        self.plan = plan

    def __call__(self, numbered: Iterator[tuple[int, dict]]):
        plan = self.plan
        stream, _, _ = plan.stream()
        numbered = iter(numbered)
        while len(batch := list(itertools.islice(numbered, plan.batch_size))) == plan.batch_size:
            yield self.batch(stream, batch)

    def batch(self, stream: int, batch: list[tuple[int, dict]]):
        import torch

        from daat.saliency import unit_mass

        plan, size = self.plan, self.plan.image_size
        images = torch.empty(len(batch), 3, size, size)
        pooled = torch.empty(len(batch), *plan.grid)
        labels = []
        for slot, (index, raw) in enumerate(batch):
            label, _, image, q, scale = decode_members(raw)
            box, flip = _draw_view(plan.rng(stream, 2, index), *q.shape, plan.rrc_scale, plan.hflip)
            image = torch.from_numpy(image).permute(2, 0, 1)
            images[slot].copy_(_image_view(image, box, size, flip)).div_(255)
            pooled[slot] = _pooled_view(q, scale, box, size, plan.grid, flip)
            labels.append(label)
        return images, torch.tensor(labels, dtype=torch.int64), unit_mass(pooled).flatten(1)


class Batches:
    """One epoch of batches for one rank, in a fixed order; ``len`` = batches it will yield."""

    def __init__(self, pipeline, num_batches: int, num_workers: int, pin_memory: bool):
        self.pipeline, self.num_batches = pipeline, num_batches
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        import torch

        if self.num_batches == 0:
            return iter(())
        loader = torch.utils.data.DataLoader(
            self.pipeline, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        return iter(loader)


def train_pipeline(
    shard_art,
    *,
    image_size: int,
    grid: int | tuple[int, int],
    batch_size: int,
    samples_per_epoch: int | None,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
    rrc_scale: tuple[float, float] = (0.35, 1.0),
    hflip: bool = True,
    skip_batches: int = 0,
    shuffle_buffer: int = 1000,
    split: str = "train",
    pin_memory: bool = False,
) -> Batches:
    """Training batches ``(images [B,3,S,S] in [0,1], labels [B] int64, G [B,h*w])`` for one rank.

    Shards are resampled with replacement (weighted by their sample counts) from a stream seeded
    by (seed, epoch, rank, world_size, num_workers, worker), so each rank and worker reads its
    own sequence; every rank yields exactly ``batches_per_epoch(samples_per_epoch, batch_size,
    world_size)`` full batches, so DDP never waits on a rank that ran dry. The content of batch j
    depends only on those numbers, never on timing: to resume mid-epoch, build the same epoch
    with ``skip_batches=k`` and it yields batches k, k+1, ... (the skipped samples are read but
    not decoded). Changing ``num_workers`` changes the sample order (one stream per worker).
    """
    import webdataset as wds

    art = open_shards(shard_art)
    listed = [(str(p), n) for p, n in art.shards(split) if n > 0]
    if not listed:
        raise ShardFormatError(f"{art.path}: split '{split}' has no samples to train on")
    total = sum(n for _, n in listed)
    batches = batches_per_epoch(samples_per_epoch or total, batch_size, world_size)
    if not 0 <= skip_batches <= batches:
        raise ValueError(f"skip_batches {skip_batches} outside [0, {batches}]")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    grid = _grid(grid)
    if not all(0 < cells <= image_size for cells in grid):
        raise ValueError(f"grid {grid} must have 1 to image_size ({image_size}) cells per side")
    plan = _TrainPlan(
        tuple(p for p, _ in listed),
        tuple(n / total for _, n in listed),
        seed,
        epoch,
        rank,
        world_size,
        max(1, num_workers),
        batch_size,
        batches,
        skip_batches,
        image_size,
        grid,
        tuple(rrc_scale),
        hflip,
        shuffle_buffer,
    )
    pipeline = wds.DataPipeline(_TrainSource(plan), _TrainAugment(plan))
    return Batches(pipeline, batches - skip_batches, num_workers, pin_memory)


@dataclass(frozen=True)
class _EvalPlan:
    shards: tuple[tuple[str, int], ...]
    count: int  # samples evaluated over all ranks: the first ``count`` in key order
    rank: int
    world_size: int
    batch_size: int
    image_size: int
    crop_pct: float
    grid: tuple[int, int]

    def batch_of(self, position: int) -> int | None:
        """This rank's batch index for a split position, or None if another rank owns it."""
        if position >= self.count or position % self.world_size != self.rank:
            return None
        return (position // self.world_size) // self.batch_size


class _EvalStream:
    """Ordered samples; rank r owns positions r, r+W, ...; worker d decodes batches d, d+n, ..."""

    def __init__(self, plan: _EvalPlan):
        self.plan = plan

    def __call__(self):
        plan = self.plan
        worker, workers = _worker()

        def mine(batch: int | None) -> bool:
            return batch is not None and batch % workers == worker

        start, current, keys, stacks, labels = 0, None, [], [], []
        for url, n in plan.shards:
            if not any(mine(plan.batch_of(p)) for p in range(start, start + n)):
                start += n
                continue
            for offset, raw in enumerate(iter_raw(url)):
                m = plan.batch_of(start + offset)
                if not mine(m):
                    continue
                if current is not None and m != current:
                    yield (keys, *_collate(stacks, labels, plan.grid))
                    keys, stacks, labels = [], [], []
                current = m
                sample = decode(raw)
                stacks.append(
                    center_view(sample, image_size=plan.image_size, crop_pct=plan.crop_pct)
                )
                keys.append(sample.key)
                labels.append(sample.label)
            start += n
        if stacks:
            yield (keys, *_collate(stacks, labels, plan.grid))


def eval_pipeline(
    shard_art,
    *,
    split: str = "val",
    image_size: int,
    grid: int | tuple[int, int],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    max_samples: int | None = None,
    crop_pct: float = 1.0,
    pin_memory: bool = False,
) -> Batches:
    """Evaluation batches ``(keys, images, labels, G)`` in key order, every sample exactly once
    over all ranks (rank r gets positions r, r+W, ...; ranks may differ by one sample).

    Each image is centre-cropped to ``crop_pct`` of its short side and resized to
    ``image_size`` (crop_pct=1: resize-short + centre crop); ``max_samples`` keeps the first N.
    """
    art = open_shards(shard_art)
    listed = tuple((str(p), n) for p, n in art.shards(split))
    total = sum(n for _, n in listed)
    count = total if max_samples is None else min(total, max_samples)
    plan = _EvalPlan(listed, count, rank, world_size, batch_size, image_size, crop_pct, _grid(grid))
    mine = max(0, math.ceil((count - rank) / world_size))
    import webdataset as wds

    return Batches(
        wds.DataPipeline(_EvalStream(plan)), math.ceil(mine / batch_size), num_workers, pin_memory
    )
