"""Batch readers over shard artifacts: the training stream (resampled, joint random resized crop
+ flip of image and saliency, G pooled on the patch grid) and the evaluation stream (ordered,
complete, centre view), each described by a read spec built from the config
(``TrainReadSpec.from_config``, ``EvalReadSpec.from_config``). Samples come from
``pipeline/shards.py``, the one module that knows the format, and their views from
``pipeline/augment.py``; everything here is batching and the order samples are read in. The readers
do not hash what they read: the stages verify the tars before and after (``require_intact``; the
loader benchmark measured hashing while streaming as well, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daat.errors import ShardFormatError
from daat.pipeline.augment import center_view, draw_view, image_view, pooled_view
from daat.pipeline.shards import decode, decode_members, iter_raw, open_shards

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
class TrainReadSpec:
    """What one rank's training reader reads, fixed for a run (``from_config``): the view it
    makes (``image_size``, ``rrc_scale``, ``hflip``), the grid G is pooled on, the batches, and
    the numbers its sample order depends on (``seed``, ``rank``, ``world_size``,
    ``num_workers``). ``samples_per_epoch`` None: the split's sample count."""

    image_size: int
    grid: int | tuple[int, int]
    batch_size: int
    samples_per_epoch: int | None
    seed: int
    num_workers: int
    rank: int = 0
    world_size: int = 1
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    shuffle_buffer: int = 1000
    split: str = "train"

    def __post_init__(self):
        object.__setattr__(self, "grid", _grid(self.grid))
        object.__setattr__(self, "rrc_scale", tuple(self.rrc_scale))

    @classmethod
    def from_config(
        cls, cfg, *, grid: int | tuple[int, int], rank: int = 0, world_size: int = 1
    ) -> TrainReadSpec:
        """The training reader of ``cfg`` for a model pooling G on ``grid``, on rank ``rank``."""
        return cls(
            image_size=cfg.model.img_size,
            grid=grid,
            batch_size=cfg.train.batch_size,
            samples_per_epoch=cfg.train.samples_per_epoch,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
            rank=rank,
            world_size=world_size,
            rrc_scale=tuple(cfg.train.rrc_scale),
            hflip=cfg.train.hflip,
        )


@dataclass(frozen=True)
class _TrainPlan:
    """One epoch of ``spec`` over the split's non-empty ``shards`` (sampled by ``weights``)."""

    spec: TrainReadSpec
    shards: tuple[str, ...]
    weights: tuple[float, ...]
    epoch: int
    batches: int
    skip_batches: int

    @property
    def streams(self) -> int:
        """One independent sample stream per worker (at least one)."""
        return max(1, self.spec.num_workers)

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
        spec = self.spec
        return np.random.default_rng(
            _seed_ints(
                spec.seed, self.epoch, spec.rank, spec.world_size, self.streams, stream, *tail
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
        buffer, batch_size = plan.spec.shuffle_buffer, plan.spec.batch_size
        mixed = wds.shuffle(buffer, buffer, rng=random.Random(shuffle_seed))(raw)
        first = done * batch_size
        taken = itertools.islice(mixed, first, first + todo * batch_size)
        yield from ((first + i, s) for i, s in enumerate(taken))


class _TrainAugment:
    """Decode, joint random resized crop + flip, batch, pool the saliency into G.

    Each sample goes straight into its slot of the batch: the image as uint8 -> float in place,
    the saliency as its pooled grid only. Per sample that is what ``augment`` + pooling computes,
    without its [4,S,S] float stack and the batch-wide stack/copy passes (memory traffic was ~15%
    of the reader's CPU)."""

    def __init__(self, plan: _TrainPlan):
        self.plan = plan

    def __call__(self, numbered: Iterator[tuple[int, dict]]):
        stream, _, _ = self.plan.stream()
        numbered, size = iter(numbered), self.plan.spec.batch_size
        while len(batch := list(itertools.islice(numbered, size))) == size:
            yield self.batch(stream, batch)

    def batch(self, stream: int, batch: list[tuple[int, dict]]):
        import torch

        from daat.saliency import unit_mass

        plan, spec, size = self.plan, self.plan.spec, self.plan.spec.image_size
        images = torch.empty(len(batch), 3, size, size)
        pooled = torch.empty(len(batch), *spec.grid)
        labels = []
        for slot, (index, raw) in enumerate(batch):
            label, _, image, q, scale = decode_members(raw)
            box, flip = draw_view(plan.rng(stream, 2, index), *q.shape, spec.rrc_scale, spec.hflip)
            image = torch.from_numpy(image).permute(2, 0, 1)
            images[slot].copy_(image_view(image, box, size, flip)).div_(255)
            pooled[slot] = pooled_view(q, scale, box, size, spec.grid, flip)
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
    shard_art, spec: TrainReadSpec, *, epoch: int, skip_batches: int = 0, pin_memory: bool = False
) -> Batches:
    """Training batches ``(images [B,3,S,S] in [0,1], labels [B] int64, G [B,h*w])`` of epoch
    ``epoch`` for rank ``spec.rank``.

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
    listed = [(str(p), n) for p, n in art.shards(spec.split) if n > 0]
    if not listed:
        raise ShardFormatError(f"{art.path}: split '{spec.split}' has no samples to train on")
    total = sum(n for _, n in listed)
    batches = batches_per_epoch(spec.samples_per_epoch or total, spec.batch_size, spec.world_size)
    if not 0 <= skip_batches <= batches:
        raise ValueError(f"skip_batches {skip_batches} outside [0, {batches}]")
    if not 0 <= spec.rank < spec.world_size:
        raise ValueError(f"rank {spec.rank} outside world of {spec.world_size}")
    if not all(0 < cells <= spec.image_size for cells in spec.grid):
        raise ValueError(
            f"grid {spec.grid} must have 1 to image_size ({spec.image_size}) cells per side"
        )
    plan = _TrainPlan(
        spec=spec,
        shards=tuple(p for p, _ in listed),
        weights=tuple(n / total for _, n in listed),
        epoch=epoch,
        batches=batches,
        skip_batches=skip_batches,
    )
    pipeline = wds.DataPipeline(_TrainSource(plan), _TrainAugment(plan))
    return Batches(pipeline, batches - skip_batches, spec.num_workers, pin_memory)


@dataclass(frozen=True)
class EvalReadSpec:
    """What one rank's evaluation reader reads: ``split`` in key order, the first
    ``max_samples`` (None: all), each centre-cropped to ``crop_pct`` of its short side and
    resized to ``image_size``, G pooled on ``grid``; rank r of ``world_size`` gets positions
    r, r+W, ..."""

    image_size: int
    grid: int | tuple[int, int]
    batch_size: int
    split: str = "val"
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    max_samples: int | None = None
    crop_pct: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "grid", _grid(self.grid))

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        grid: int | tuple[int, int],
        split: str = "val",
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> EvalReadSpec:
        """``cfg``'s evaluation reader of ``split`` for a model pooling G on ``grid``: batches of
        ``eval.batch_size`` and ``data.num_workers`` workers unless given."""
        return cls(
            image_size=cfg.model.img_size,
            grid=grid,
            batch_size=cfg.eval.batch_size if batch_size is None else batch_size,
            split=split,
            rank=rank,
            world_size=world_size,
            num_workers=cfg.data.num_workers if num_workers is None else num_workers,
            max_samples=max_samples,
        )


@dataclass(frozen=True)
class _EvalPlan:
    spec: EvalReadSpec
    shards: tuple[tuple[str, int], ...]
    count: int  # samples evaluated over all ranks: the first ``count`` in key order

    def batch_of(self, position: int) -> int | None:
        """This rank's batch index for a split position, or None if another rank owns it."""
        spec = self.spec
        if position >= self.count or position % spec.world_size != spec.rank:
            return None
        return (position // spec.world_size) // spec.batch_size


class _EvalStream:
    """Ordered samples; rank r owns positions r, r+W, ...; worker d decodes batches d, d+n, ..."""

    def __init__(self, plan: _EvalPlan):
        self.plan = plan

    def __call__(self):
        plan, spec = self.plan, self.plan.spec
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
                    yield (keys, *_collate(stacks, labels, spec.grid))
                    keys, stacks, labels = [], [], []
                current = m
                sample = decode(raw)
                stacks.append(
                    center_view(sample, image_size=spec.image_size, crop_pct=spec.crop_pct)
                )
                keys.append(sample.key)
                labels.append(sample.label)
            start += n
        if stacks:
            yield (keys, *_collate(stacks, labels, spec.grid))


def eval_pipeline(shard_art, spec: EvalReadSpec, *, pin_memory: bool = False) -> Batches:
    """Evaluation batches ``(keys, images, labels, G)`` of ``spec`` in key order, every sample
    exactly once over all ranks (ranks may differ by one sample)."""
    art = open_shards(shard_art)
    listed = tuple((str(p), n) for p, n in art.shards(spec.split))
    total = sum(n for _, n in listed)
    count = total if spec.max_samples is None else min(total, spec.max_samples)
    plan = _EvalPlan(spec=spec, shards=listed, count=count)
    mine = max(0, math.ceil((count - spec.rank) / spec.world_size))
    import webdataset as wds

    return Batches(
        wds.DataPipeline(_EvalStream(plan)),
        math.ceil(mine / spec.batch_size),
        spec.num_workers,
        pin_memory,
    )
