"""How decoded records cross from the decode workers to the depth model's process: the bulky
fields of a chunk of records travel in one shared-memory buffer, the rest by pickle.

``pack`` runs in a worker, ``unpack`` in the consumer; ``share_by_name`` is called once in each
worker. Imports only ``pipeline/records.py`` (and torch/numpy).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from daat.pipeline.records import Record

if TYPE_CHECKING:
    import torch

PACKED = ("jpg", "image", "depth")  # the bulky fields of a record

# where a packed field lies in the buffer: (type name, offset, dtype str, shape)
Slot = tuple[str, int, str, tuple[int, ...]]
Chunk = tuple[list[Record], list[dict[str, Slot]], "torch.Tensor"]


def share_by_name() -> None:
    """Make this worker's tensors travel as named shared memory ("file_system"): with the default
    fd passing, the model's process waited 1-5 ms per chunk for the busy worker to hand over the
    descriptor (measured), although the chunk had been decoded long before."""
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy("file_system")


def pack(records: list[Record]) -> Chunk:
    """(records without their bulky fields, where each bulky field lies, one uint8 buffer holding
    them), for the DataLoader to hand over in shared memory. Sent through its pipe instead, a
    chunk (~170 KB of 85x64 images) crossed in 64 KB pieces, each waiting for the worker to be
    scheduled again: the model's process waited 3-8 ms per chunk (measured) for data decoded
    long before."""
    import torch

    parts, slots, light, offset = [], [], [], 0
    for record in records:
        where: dict[str, Slot] = {}
        for field in PACKED:
            value = getattr(record, field)
            if value is None:
                continue
            array = np.frombuffer(value, np.uint8) if isinstance(value, bytes) else value
            offset = -(-offset // 16) * 16  # aligned, so a float32 view of the buffer is legal
            parts.append((offset, array))
            where[field] = (type(value).__name__, offset, array.dtype.str, array.shape)
            offset += array.nbytes
        slots.append(where)
        light.append(dataclasses.replace(record, **dict.fromkeys(where)) if where else record)
    buffer = np.zeros(offset, np.uint8)
    for start, array in parts:
        buffer[start : start + array.nbytes] = (
            np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        )
    return light, slots, torch.from_numpy(buffer)


def unpack(chunk: Chunk) -> list[Record]:
    """``pack``'s records with their bulky fields back (bytes as bytes, arrays as views of the
    buffer)."""
    records, slots, buffer = chunk
    flat = buffer.numpy()
    out = []
    for record, where in zip(records, slots, strict=True):
        fields = {}
        for field, (kind, start, dtype, shape) in where.items():
            dtype = np.dtype(dtype)
            view = flat[start : start + dtype.itemsize * int(np.prod(shape))].view(dtype)
            fields[field] = view.tobytes() if kind == "bytes" else view.reshape(shape)
        out.append(dataclasses.replace(record, **fields) if fields else record)
    return out
