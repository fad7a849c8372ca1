"""The shard writer process of ``daat preprocess``.

The depth model's process hands each batch of finished ``Record``s (stored JPEG, facts, and either
the depth map or, on a GPU, the 8-bit saliency already computed there) to this process, which
computes E and its 8-bit code where needed (``pipeline/saliency_codec.py``), has
``pipeline/shards.py`` write each sample and closes each shard (tar, sha256, sidecar) once its last
planned sample has arrived. In the model's process that work
(~0.5 ms of Python per sample, holding the GIL) starved the model: end to end ran at 0.50 of the
model's speed on the 2-core CPU; here it runs on another core.

Protocol over one pipe, parent -> child: ``("plan", {(split, shard): [(key, relpath), ...]})``,
``("write", [Record, ...])``, ``("finish",)``; the child answers each write and the finish with
``("ok", n)`` or ``("error", exception, traceback text)``; ``("abort",)``, any error or the
parent's disappearance (EOF) make it abort its open shards, so a crash never leaves a half-written
shard under a final name.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import sys
import traceback
from pathlib import Path

from daat.errors import DaatError, ShardFormatError
from daat.pipeline import shards as fmt
from daat.pipeline.records import Record
from daat.pipeline.saliency_codec import saliency_codes


class SinkError(DaatError):
    """The shard writer process died or could not be reached."""


class ShardSink:
    """Parent side: ``processes`` writer processes, shard s of a split going to process s % n.
    The caller bounds how many writes are ``unanswered`` (memory in the pipes)."""

    def __init__(self, root: str | Path, processes: int = 1):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        # fork where the platform has it: a child starts in milliseconds and, unlike spawn,
        # does not re-run the caller's __main__. It never touches CUDA and runs torch on one
        # thread only (as DataLoader workers do), so forking a process that uses them is safe.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pipes = [ctx.Pipe() for _ in range(processes)]
        every_end = [end for pair in pipes for end in pair]
        self._children = [
            _Child(ctx, parent, child, every_end, str(root), i)
            for i, (parent, child) in enumerate(pipes)
        ]
        for _, child in pipes:
            child.close()
        self._pending: collections.deque[list[_Child]] = collections.deque()
        # Sends run on a thread: a batch of depth maps (~1.4 MB on the CPU benchmark) crosses a
        # pipe in pieces, each waiting for the child to be scheduled, and the model need not wait.
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daat-sink")
        self._sending: concurrent.futures.Future | None = None

    @property
    def unanswered(self) -> int:
        return len(self._pending)

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def plan(self, shards: dict[tuple[str, int], list[tuple[str, str]]]) -> None:
        parts = self._split(shards.items(), key=lambda item: item[0])
        self._send([(child, ("plan", dict(items))) for child, items in parts.items()])

    def write(self, records: list[Record]) -> None:
        """Send finished records (each with its depth map or its saliency code, or skipped)."""
        parts = self._split(records, key=lambda r: (r.split, r.shard))
        self._send([(child, ("write", part)) for child, part in parts.items()])
        self._pending.append(list(parts))

    def wait(self) -> int:
        """Block for the oldest unanswered write; returns its sample count (written + skipped)."""
        self._sent()
        return sum(child.answer() for child in self._pending.popleft())

    def finish(self) -> None:
        """Wait for every write, then check that every planned shard was closed."""
        while self._pending:
            self.wait()
        self._send([(child, ("finish",)) for child in self._children])
        self._sent()
        for child in self._children:
            child.answer()

    def close(self) -> None:
        """Without ``finish`` first, the children abort their open shards."""
        self._sender.shutdown(wait=True)
        for child in self._children:
            child.close()

    def _split(self, items, key) -> dict[_Child, list]:
        parts: dict[_Child, list] = {}
        for item in items:
            parts.setdefault(self._children[key(item)[1] % len(self._children)], []).append(item)
        return parts

    def _send(self, messages: list[tuple[_Child, tuple]]) -> None:
        self._sent()
        self._sending = self._sender.submit(_send_all, messages)

    def _sent(self) -> None:
        """Wait for the messages in flight to be in the pipes (order; their errors surface)."""
        if self._sending is None:
            return
        try:
            self._sending.result()
        finally:
            self._sending = None


def _send_all(messages: list[tuple[_Child, tuple]]) -> None:
    for child, message in messages:
        child.send(message)


class _Child:
    """One writer process and the parent's end of its pipe."""

    def __init__(self, ctx, parent_end, child_end, every_end: list, root: str, index: int):
        self.conn = parent_end
        # The child closes every pipe end it inherited except its own: an end of another
        # child's pipe left open in it would hide that child's exit (or the parent's) as EOF.
        others = [end for end in every_end if end is not child_end]
        self.proc = ctx.Process(
            target=_serve,
            args=(child_end, others, root),
            name=f"daat-shard-sink-{index}",
            daemon=True,
        )
        self.proc.start()

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise self.died() from e

    def answer(self) -> int:
        try:
            kind, *rest = self.conn.recv()
        except (EOFError, ConnectionResetError) as e:
            raise self.died() from e
        if kind == "ok":
            return rest[0]
        error, text = rest
        error.add_note(f"in the shard writer process:\n{text}")
        raise error

    def close(self) -> None:
        if self.proc.is_alive():
            # it may exit between the check and the send: then there is nothing left to tell it
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.conn.send(("abort",))
        self.conn.close()
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def died(self) -> SinkError:
        self.proc.join(timeout=10)
        return SinkError(
            f"the shard writer process (pid {self.proc.pid}) exited with code "
            f"{self.proc.exitcode}; unfinished shards are redone on the next run"
        )


def _serve(conn, inherited: list, root: str) -> None:
    """Child side: write until "finish", abort open shards on "abort", any error or a vanished
    parent (EOF: the parent's end is closed here, so only the parent holds it)."""
    for end in inherited:
        end.close()
    os.nice(5)  # yield to the depth model's process, the bottleneck (see preprocess)
    if "torch" in sys.modules:  # forked from a process whose OpenMP pool this copy cannot use
        sys.modules["torch"].set_num_threads(1)
    state = _Shards(Path(root))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return  # parent gone (crash or kill): the finally aborts open shards
            kind = message[0]
            if kind == "plan":
                state.plan(message[1])
            elif kind == "write":
                conn.send(("ok", state.write(message[1])))
            elif kind == "finish":
                state.check_finished()
                conn.send(("ok", 0))
                return
            elif kind == "abort":
                return
            else:
                raise ShardFormatError(f"shard writer: unknown message {kind!r}")
    except BaseException as e:  # reported to the parent, which raises it
        # if the parent is gone there is no one left to tell
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(("error", _picklable(e), traceback.format_exc()))
    finally:
        state.abort()
        conn.close()


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return SinkError(f"{type(e).__name__}: {e}")


class _Shards:
    """The open ``ShardWriter``s of one preprocess run and what each still expects."""

    def __init__(self, root: Path):
        self.root = root
        self.planned: dict[tuple[str, int], list[tuple[str, str]]] = {}
        self.left: dict[tuple[str, int], int] = {}
        self.open: dict[tuple[str, int], fmt.ShardWriter] = {}

    def plan(self, shards: dict[tuple[str, int], list[tuple[str, str]]]) -> None:
        self.planned.update(shards)
        self.left.update({shard: len(keys) for shard, keys in shards.items()})

    def write(self, records: list[Record]) -> int:
        with_depth = [i for i, r in enumerate(records) if r.depth is not None]
        if with_depth:
            import torch

            codes = saliency_codes(
                [torch.from_numpy(records[i].depth) for i in with_depth], torch.device("cpu")
            )
            for i, (q, scale) in zip(with_depth, codes):
                records[i] = dataclasses.replace(records[i], depth=None, saliency=q, scale=scale)
        for record in records:
            shard = (record.split, record.shard)
            if shard not in self.left:
                raise ShardFormatError(f"shard writer: {shard_name(shard)} was not planned")
            writer = self.open.get(shard)
            if writer is None:
                writer = self.open[shard] = fmt.ShardWriter(self.root, *shard, self.planned[shard])
            if record.skipped:
                writer.skip(record.key, record.reason)
            else:
                writer.write(record)
            self.left[shard] -= 1
            if self.left[shard] == 0:
                self.open.pop(shard).close()
        return len(records)

    def check_finished(self) -> None:
        unfinished = sorted(shard_name(s) for s, n in self.left.items() if n)
        if unfinished:
            raise ShardFormatError(
                f"shard writer: {len(unfinished)} planned shards did not get "
                f"all their samples (first: {unfinished[0]})"
            )

    def abort(self) -> None:
        for writer in self.open.values():
            writer.abort()
        self.open.clear()


def shard_name(shard: tuple[str, int]) -> str:
    return fmt.shard_relpath(*shard)
