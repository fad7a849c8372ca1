"""The per-chunk work of ``daat evaluate``: the ordered val stream cut into each sample group's
chunks (``stream_chunks``), and ``ChunkRunner``, which runs a chunk's pending tasks (clean, PGD,
AutoAttack, attention under the Table 1 PGD) and writes them to the store, with one progress bar
per task. What a chunk and a task are, and when one is done, is ``results.py``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from daat import dist, progress
from daat.config import Config
from daat.errors import DaatError
from daat.eval import attacks_eval, attention, results
from daat.eval.results import GROUPS, Store, Task
from daat.eval.style import format_eps


@dataclass
class Chunk:
    """The samples of chunk ``index`` of ``group`` (see results.py), in stream order."""

    group: str
    index: int
    val_index: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    saliency: list[torch.Tensor] = field(default_factory=list)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.stack(self.images).to(device),
            torch.tensor(self.labels, device=device),
            torch.stack(self.saliency).to(device),
        )


def stream_chunks(
    batches,
    val_positions: np.ndarray,
    store: Store,
    wanted,
    figure_pos: set[int],
    figures: dict[int, tuple],
):
    """Yield every group's ``Chunk``s (only ``wanted(group, k)`` ones carry images) from the
    ordered val stream; ``val_positions[p]`` is the val index of evaluated sample p.

    Samples at evaluated positions in ``figure_pos`` are also copied into
    ``figures[p] = (image, label, G, key)``. Stops reading once nothing wanted is left.
    """
    ends = [int(store.chunk_positions(g, k)[-1]) for g, k in store.units() if wanted(g, k)]
    last_pos = max(ends + list(figure_pos), default=-1)
    if last_pos < 0:
        return
    pos_of = {int(v): p for p, v in enumerate(val_positions)}
    member = {g: {int(p): i for i, p in enumerate(store.positions[g])} for g in GROUPS}
    chunks = {g: Chunk(g, 0) for g in GROUPS}
    seen = 0
    for sample_keys, images, labels, sal in batches:
        for j in range(len(sample_keys)):
            pos = pos_of.get(seen)
            seen += 1
            if pos is None:
                continue
            if pos in figure_pos:
                figures[pos] = (images[j], int(labels[j]), sal[j], sample_keys[j])
            for g in GROUPS:
                if pos not in member[g]:
                    continue
                chunk = chunks[g]
                chunk.val_index.append(seen - 1)
                chunk.keys.append(sample_keys[j])
                chunk.labels.append(int(labels[j]))
                if wanted(g, chunk.index):
                    chunk.images.append(images[j])
                    chunk.saliency.append(sal[j])
                start, end = store.bounds(g, chunk.index)
                if len(chunk.val_index) == end - start:
                    yield chunk
                    chunks[g] = Chunk(g, chunk.index + 1)
            if pos >= last_pos:
                return
    raise DaatError(
        f"the val stream ended after {seen} samples, before val sample "
        f"{val_positions[last_pos]} (are the shards complete?)"
    )


def task_title(task: Task) -> str:
    """'PGD-10 ε=4/255', 'AutoAttack ε=4/255', 'clean': what a progress bar calls a task."""
    if task.kind == "clean":
        return "clean"
    name = f"PGD-{task.steps}" if task.kind == "pgd" else "AutoAttack"
    return f"{name} ε={format_eps(task.eps)}"


def progress_bars(
    store: Store, mine: list[tuple[str, int]], info: dist.DistInfo
) -> dict[str, tqdm]:
    """One bar per task on rank 0 (samples of this rank's chunks, done / total, ETA), under
    ``daat.progress``'s rules; other ranks get disabled bars."""
    bars = {}
    for i, task in enumerate(store.tasks):
        units = [k for g, k in mine if g == task.group]
        sizes = [store.bounds(task.group, k)[1] - store.bounds(task.group, k)[0] for k in units]
        done = sum(n for k, n in zip(units, sizes) if store.is_done(task, k))
        bars[task.name] = progress.bar(
            main=info.is_main,
            total=sum(sizes),
            initial=done,
            desc=f"{task_title(task):<20}",
            unit="img",
            position=i,
            leave=True,
            dynamic_ncols=True,
        )
    return bars


class ChunkRunner:
    """Runs one chunk's pending tasks and writes them to the store; counts what it computed."""

    def __init__(
        self,
        model,
        store: Store,
        cfg: Config,
        device: torch.device,
        num_classes: int,
        bars: dict[str, tqdm],
    ):
        self.model, self.store, self.ev = model, store, cfg.eval
        self.device, self.num_classes, self.bars = device, num_classes, bars
        self.computed: dict[str, int] = {t.name: 0 for t in store.tasks}
        self.seconds: dict[str, float] = {t.name: 0.0 for t in store.tasks}

    def run(self, chunk: Chunk) -> None:
        x, y, g = chunk.tensors(self.device)
        clean = self.batched(lambda sl: attacks_eval.clean(self.model, x[sl], y[sl]), len(y))
        for task in self.store.pending(chunk.group, chunk.index):
            start = time.perf_counter()
            if task.kind == "clean":
                self.store.write_samples(
                    chunk.index, np.asarray(chunk.val_index), np.asarray(chunk.labels), chunk.keys
                )
                out = clean
            else:
                out = self.run_task(task, chunk.index, x, y, g, clean["correct"])
            self.store.write_task(task, chunk.index, out)
            self.store.mark_done(task, chunk.index)
            self.computed[task.name] += 1
            self.seconds[task.name] += time.perf_counter() - start
            self.bars[task.name].update(len(chunk.labels))

    def batched(self, fn, n: int) -> dict[str, np.ndarray]:
        """Run ``fn(slice)`` over batches of eval.batch_size; concatenate the per-sample fields
        (plus the attention metrics when fn returns them)."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, self.ev.batch_size):
            out = fn(slice(start, start + self.ev.batch_size))
            outcome, extra = out if isinstance(out, tuple) else (out, {})
            fields = {name: getattr(outcome, name).numpy() for name in results.TASK_FIELDS}
            for name, value in {**fields, **extra}.items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(v) for name, v in parts.items()}

    def run_task(self, task: Task, k: int, x, y, g, clean_correct: np.ndarray) -> dict:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(attacks_eval.task_seed(self.ev.seed, task.name, k))
        ok = torch.from_numpy(clean_correct).to(self.device)
        table = task.name == results.table_task_name(self.ev)

        def one(sl: slice):
            out = self.attack(task, k, x[sl], y[sl], ok[sl], generator)
            return (out, self.attention_metrics(x[sl], out.x_adv, g[sl])) if table else out

        values = self.batched(one, len(y))
        if table:
            self.store.write_attention(k, {f: values[f] for f in results.ATTENTION_FIELDS})
        return values

    def attack(self, task: Task, k: int, x, y, clean_ok, generator) -> attacks_eval.Outcome:
        if task.kind == "pgd":
            fn = attacks_eval.pgd_until_fooled if task.early_stop else attacks_eval.pgd_eval
            return fn(
                self.model,
                x,
                y,
                clean_ok,
                eps=task.eps,
                alpha=task.alpha,
                steps=task.steps,
                generator=generator,
            )
        seed = attacks_eval.task_seed(self.ev.seed, task.name, k) % (2**31)
        return attacks_eval.autoattack_eval(
            self.model,
            x,
            y,
            eps=task.eps,
            seed=seed,
            num_classes=self.num_classes,
            batch_size=self.ev.batch_size,
        )

    def attention_metrics(self, x, x_adv, g) -> dict[str, np.ndarray]:
        a_clean, _ = attention.attention_map(self.model, x)
        a_adv, _ = attention.attention_map(self.model, x_adv)
        metrics = {
            "cos": attention.cosine(a_clean, a_adv),
            "cos_g_clean": attention.cosine(a_clean, g),
            "cos_g_adv": attention.cosine(a_adv, g),
            "js": attention.js_divergence(a_clean, a_adv),
            "top_clean": attention.top_mass(a_clean, g, attention.TOP_MASS_FRAC),
            "top_adv": attention.top_mass(a_adv, g, attention.TOP_MASS_FRAC),
        }
        return {k: v.cpu().numpy() for k, v in metrics.items()}
