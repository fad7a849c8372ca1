"""The depth model's side of ``daat preprocess``: decoded records, batched through the frozen
depth model, handed to the shard writer (``pipeline/sink.py``) with their depth map, or on a GPU
with the saliency code already computed next to the model.

Imports ``records.py``, ``saliency_codec.py``, ``sink.py`` and (lazily) the depth model; nothing
here knows the shard format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from daat.depth_ref import ORACLE
from daat.pipeline.records import Record
from daat.pipeline.saliency_codec import saliency_codes
from daat.pipeline.sink import ShardSink

if TYPE_CHECKING:
    import torch


class LazyDepthModel:
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


class DepthBatches:
    """Batches decoded records through the depth model (``None``: the records carry the oracle
    depth) and hands each batch to the shard writer process, which encodes and writes it while
    the next batch's depth pass runs here; ``bar`` counts the samples the writer answered."""

    def __init__(
        self,
        model: LazyDepthModel | None,
        batch_size: int,
        device: torch.device,
        sink: ShardSink,
        bar,
    ):
        self.model, self.batch_size = model, batch_size
        self.device, self.sink, self.bar = device, sink, bar

    def consume(self, records: Iterable[Record]) -> None:
        batch: list[Record] = []
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

    def _submit(self, batch: list[Record]) -> None:
        finished = self._with_saliency(batch)
        # Two batches in flight: slack for a writer that was scheduled late, memory still
        # bounded; the writer's errors surface here.
        self._drain(1)
        self.sink.write(finished)

    def _drain(self, keep: int) -> None:
        while self.sink.unanswered > keep:
            self.bar.update(self.sink.wait())

    def _with_saliency(self, batch: list[Record]) -> list[Record]:
        """Records as the writer takes them: skipped ones keep their reason, the others get their
        depth map, or on a GPU the 8-bit E already computed next to the model (E on the CPU is
        the writer's job: it has a core of its own, this process is busy with the model)."""
        import torch

        from daat.dist import cuda_paths

        good = [i for i, r in enumerate(batch) if not r.skipped]
        if self.model is None:
            depths = [torch.from_numpy(batch[i].depth) for i in good]
        else:
            images = [
                torch.from_numpy(batch[i].image).to(self.device).permute(2, 0, 1).float() / 255
                for i in good
            ]
            depths = self.model(images) if images else []
        depth_id = ORACLE if self.model is None else self.model.model_id
        out = list(batch)
        if not cuda_paths(self.device):
            for i, depth in zip(good, depths):
                out[i] = _finished(batch[i], depth_id, depth=depth.float().numpy())
        else:
            for i, (q, scale) in zip(good, saliency_codes(depths, self.device)):
                out[i] = _finished(batch[i], depth_id, depth=None, saliency=q, scale=scale)
        return out


def _finished(record: Record, depth_id: str, **fields) -> Record:
    """``record`` as the writer takes it: without the decoded image, with the depth results
    (``fields``: its depth map, or ``depth=None`` and the saliency code)."""
    return dataclasses.replace(record, image=None, depth_model=depth_id, **fields)
