"""What travels through ``daat preprocess``: a ``Job`` (one input of the card, and the shard it
goes to) becomes a ``Record`` in a decode worker, which the depth model's process completes with
the depth map or the saliency code and hands to the shard writer.

A record is immutable: each stage hands on a copy with its fields filled in
(``dataclasses.replace``), so no stage reshapes another's output. How a finished record becomes a
sample (members, json) is ``pipeline/shards.py``'s business alone. Imports nothing from daat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Job:
    """One input to read: where it is (``path``, or ``synthetic`` for a rendered card item) and
    where its sample goes (``split``, ``shard``, ``key``)."""

    split: str
    shard: int
    key: str
    label: int
    relpath: str
    path: str | None
    synthetic: object | None


@dataclass(frozen=True)
class Record:
    """One input on its way from decode to the shard writer.

    Skipped inputs carry ``reason`` and nothing after it. The others carry the stored ``jpg`` and
    the facts the sample's json records; ``image`` (the JPEG decoded again, what the depth model
    sees) lives from decode to the depth pass; ``depth`` (on the stored pixel grid) from the depth
    pass (or decode, for the oracle) to the writer, which replaces it with the 8-bit ``saliency``
    code and its ``scale``, unless the depth model's process computed them already (on a GPU).
    """

    split: str
    shard: int
    key: str
    label: int
    relpath: str
    texture_label: int | None = None  # the cue-conflict split: the class of the texture worn
    reason: str | None = None
    jpg: bytes | None = None
    orig_hw: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
    depth_model: str | None = None
    image: np.ndarray | None = None  # uint8 HxWx3
    depth: np.ndarray | None = None  # float32 HxW
    saliency: np.ndarray | None = None  # uint8 HxW
    scale: float | None = None

    @classmethod
    def of(cls, job: Job, **fields) -> Record:
        """The record of ``job``: its place and card facts, plus ``fields``."""
        texture = getattr(job.synthetic, "texture_class", None)
        return cls(
            job.split,
            job.shard,
            job.key,
            job.label,
            job.relpath,
            None if texture is None else int(texture),
            **fields,
        )

    @property
    def skipped(self) -> bool:
        return self.reason is not None
