"""``results.zarr``: per-sample evaluation results, chunked so a killed evaluation resumes.

Samples live in three GROUPS, each a sorted list of positions in the evaluated set (n samples):
``all`` (every evaluated sample), ``long`` (the PGD-100 subset, eval.n_pgd_long) and ``autoattack``
(eval.n_autoattack); subsets are nested random draws (see subset_positions). Each group is cut
into chunks of C = eval.chunk_size of ITS samples, so one AutoAttack call attacks C samples
together (not the few a sparse subset has in a block of positions). Layout (zarr v3):

    index[n] int32, label[n] int16, key[n] str   val-stream index, label, sample key (group all)
    position_long[m], position_autoattack[a] int32   the subsets, as positions in 0..n-1
    <task>/pred[len] int16        prediction at the task's point (-1 = not computed)
    <task>/correct[len] bool      robust: correct when clean AND at every attack point
    <task>/margin[len] float32    true logit - best other logit at that point
    <task>/zero_grad[len] bool    PGD saw an all-zero input gradient for the sample
    <task>/done[K] bool           chunk k is finished: the unit of resume, written after the data
    attention/{cos,js,top_clean,top_adv}[n] float32   A(x) vs A(x_adv) under the Table 1 PGD
    attention/{cos_g_clean,cos_g_adv}[n] float32       cos(A, G(x)) for A(x) and A(x_adv)

where len is the task's group size. Per-sample arrays are chunked by C, so chunk k of a task is one
file, and ``done`` has one file per chunk: ranks writing disjoint chunks never share a file.
Tasks: ``clean``, ``pgd-10_eps4`` (Table 1), ``pgd-100_eps{e}_long`` for e in eval.eps_grid
(Fig. 3c), ``autoattack_eps4``; radii in names are in grey levels (eps4 = ε 4/255).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from daat.config import Config, EvalConfig
from daat.errors import DaatError

LAYOUT_VERSION = 4  # 3: radii as fractions, long tasks named *_long; 4: attention cos(A, G)
TASK_FIELDS = {
    "pred": ("int16", -1),
    "correct": ("bool", False),
    "margin": ("float32", float("nan")),
    "zero_grad": ("bool", False),
}
ATTENTION_FIELDS = ("cos", "js", "top_clean", "top_adv", "cos_g_clean", "cos_g_adv")
ATTENTION = "attention"
GROUPS = ("all", "long", "autoattack")


@dataclass(frozen=True)
class Task:
    name: str  # zarr group name
    kind: str  # clean | pgd | autoattack
    eps: float = 0.0  # L-inf radius, a fraction of the [0, 1] pixel range
    alpha: float = 0.0  # PGD step, same units
    steps: int = 0
    group: str = "all"  # all | long | autoattack
    early_stop: bool = False  # PGD drops samples once fooled (attacks_eval.pgd_until_fooled)


def eps_tag(eps: float) -> str:
    """The radius in a task (zarr group) name, in grey levels: 4/255 -> '4', 0.01 -> '2.55'."""
    return f"{eps * 255:.6g}"


def accuracy_keys(cfg: Config) -> tuple[str, str]:
    """Summary keys of the Table 1 PGD and of Fig. 3c's PGD (kept apart when their steps agree)."""
    short, long = f"pgd-{cfg.eval.pgd_steps}", f"pgd-{cfg.eval.pgd_long_steps}"
    return short, (long if long != short else f"{long}-long")


def table_task_name(ev: EvalConfig) -> str:
    return f"pgd-{ev.pgd_steps}_eps{eps_tag(ev.eps)}"


def long_task_name(ev: EvalConfig, eps: float) -> str:
    """Fig. 3c's PGD on its subset; the suffix keeps it apart from the Table 1 PGD when both have
    the same steps and radius."""
    return f"pgd-{ev.pgd_long_steps}_eps{eps_tag(eps)}_long"


def autoattack_task_name(ev: EvalConfig) -> str:
    return f"autoattack_eps{eps_tag(ev.eps)}"


def plan_tasks(ev: EvalConfig) -> list[Task]:
    """Every task, in the order they run on a chunk of their group (names are unique)."""
    tasks = [
        Task("clean", "clean"),
        Task(table_task_name(ev), "pgd", ev.eps, ev.alpha, ev.pgd_steps),
    ]
    tasks += [
        Task(
            long_task_name(ev, e),
            "pgd",
            e,
            ev.pgd_long_alpha_frac * e,
            ev.pgd_long_steps,
            "long",
            early_stop=True,
        )
        for e in ev.eps_grid
    ]
    if ev.autoattack:
        tasks.append(Task(autoattack_task_name(ev), "autoattack", ev.eps, group="autoattack"))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise DaatError(f"evaluation tasks share a name: {names}")
    return tasks


def subset_positions(total: int, n: int, seed: int = 0) -> np.ndarray:
    """n positions out of ``total`` (0 or >= total = all), sorted: the first n of one fixed
    permutation (seeded by eval.seed, not the run), so subsets are nested (the AutoAttack subset
    lies inside the PGD-100 subset when it is smaller) and identical for every run. Random, not
    strided: strides alias with class order (ImageFolder sorts by class; the synthetic set
    interleaves classes, so every 4th image would be 5 of its 10 classes)."""
    if n <= 0 or n >= total:
        return np.arange(total)
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[:n])


class Store:
    """The zarr group plus the layout facts needed to read and write it chunk by chunk."""

    def __init__(self, group: zarr.Group, tasks: list[Task]):
        self.group = group
        self.tasks = tasks
        self.n = int(group.attrs["n"])
        self.chunk_size = int(group.attrs["chunk_size"])
        self.positions = {"all": np.arange(self.n)}
        for name in GROUPS[1:]:
            self.positions[name] = np.asarray(group[f"position_{name}"][:], dtype=np.int64)

    # -- layout -----------------------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        path: Path,
        tasks: list[Task],
        *,
        n: int,
        n_val: int,
        chunk_size: int,
        subsets: dict[str, np.ndarray],
    ) -> Store:
        """Create the group (first run) or open it and check that its layout is this one."""
        attrs = {
            "layout": LAYOUT_VERSION,
            "n": n,
            "n_val": n_val,
            "chunk_size": chunk_size,
            "tasks": [asdict(t) for t in tasks],
        }
        if (path / "zarr.json").is_file():
            group = zarr.open_group(str(path), mode="r+")
            found = {k: group.attrs.get(k) for k in attrs}
            if found == attrs:
                return cls(group, tasks)
            if found["layout"] is not None:
                raise DaatError(
                    f"{path}: layout {found} differs from this evaluation's {attrs}; "
                    f"delete {path} to start the evaluation over"
                )
        group = zarr.open_group(str(path), mode="w")  # absent, or created without its attrs
        chunks = (chunk_size,)
        group.create_array("index", shape=(n,), chunks=chunks, dtype="int32", fill_value=-1)
        group.create_array("label", shape=(n,), chunks=chunks, dtype="int16", fill_value=-1)
        group.create_array("key", shape=(n,), chunks=chunks, dtype=str, fill_value="")
        sizes = {"all": n}
        for name in GROUPS[1:]:
            pos = np.asarray(subsets[name], dtype=np.int32)
            group.create_array(f"position_{name}", data=pos, chunks=(max(len(pos), 1),))
            sizes[name] = len(pos)
        for task in tasks:
            size = sizes[task.group]
            for field, (dtype, fill) in TASK_FIELDS.items():
                group.create_array(
                    f"{task.name}/{field}",
                    shape=(size,),
                    chunks=chunks,
                    dtype=dtype,
                    fill_value=fill,
                )
            group.create_array(
                f"{task.name}/done",
                shape=(max(math.ceil(size / chunk_size), 1),),
                chunks=(1,),
                dtype="bool",
                fill_value=False,
            )
        for field in ATTENTION_FIELDS:
            group.create_array(
                f"{ATTENTION}/{field}",
                shape=(n,),
                chunks=chunks,
                dtype="float32",
                fill_value=float("nan"),
            )
        group.attrs.update(attrs)  # last: a group without attrs is recreated, never half-trusted
        return cls(group, tasks)

    @classmethod
    def open(cls, path: Path, tasks: list[Task]) -> Store:
        return cls(zarr.open_group(str(path), mode="r"), tasks)

    # -- chunk bookkeeping -------------------------------------------------------------------
    def n_chunks(self, group: str) -> int:
        return math.ceil(len(self.positions[group]) / self.chunk_size)

    def units(self) -> list[tuple[str, int]]:
        """Every (group, chunk) in a fixed order; unit u belongs to rank u % world_size."""
        return [(g, k) for g in GROUPS for k in range(self.n_chunks(g))]

    def bounds(self, group: str, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, len(self.positions[group]))

    def chunk_positions(self, group: str, chunk: int) -> np.ndarray:
        start, end = self.bounds(group, chunk)
        return self.positions[group][start:end]

    def tasks_of(self, group: str) -> list[Task]:
        return [t for t in self.tasks if t.group == group]

    def is_done(self, task: Task, chunk: int) -> bool:
        return bool(self.group[f"{task.name}/done"][chunk])

    def pending(self, group: str, chunk: int) -> list[Task]:
        return [t for t in self.tasks_of(group) if not self.is_done(t, chunk)]

    def mark_done(self, task: Task, chunk: int) -> None:
        self.group[f"{task.name}/done"][chunk] = True

    # -- data ------------------------------------------------------------------------------
    def write_samples(
        self, chunk: int, index: np.ndarray, label: np.ndarray, keys: list[str]
    ) -> None:
        start, end = self.bounds("all", chunk)
        self.group["index"][start:end] = index.astype(np.int32)
        self.group["label"][start:end] = label.astype(np.int16)
        self.group["key"][start:end] = np.asarray(keys, dtype=str)

    def write_task(self, task: Task, chunk: int, values: dict[str, np.ndarray]) -> None:
        start, end = self.bounds(task.group, chunk)
        for field, (dtype, _fill) in TASK_FIELDS.items():
            self.group[f"{task.name}/{field}"][start:end] = values[field].astype(dtype)

    def write_attention(self, chunk: int, values: dict[str, np.ndarray]) -> None:
        start, end = self.bounds("all", chunk)
        for field in ATTENTION_FIELDS:
            self.group[f"{ATTENTION}/{field}"][start:end] = values[field].astype(np.float32)

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][:])

    def member(self, group: str) -> np.ndarray:
        """bool[n]: which evaluated samples belong to ``group``."""
        mask = np.zeros(self.n, dtype=bool)
        mask[self.positions[group]] = True
        return mask

    def read_full(self, task: Task, field: str) -> np.ndarray:
        """A task's field scattered onto all n evaluated samples (fill value off its group)."""
        dtype, fill = TASK_FIELDS[field]
        full = np.full(self.n, fill, dtype=dtype)
        full[self.positions[task.group]] = self.read(f"{task.name}/{field}")
        return full

    def all_done(self) -> bool:
        return all(
            bool(np.all(self.read(f"{t.name}/done")))
            for t in self.tasks
            if len(self.positions[t.group])
        )

    def done_counts(self) -> dict[str, int]:
        return {t.name: int(np.sum(self.read(f"{t.name}/done"))) for t in self.tasks}


def progress(path: Path) -> dict[str, tuple[int, int]]:
    """{task name: (chunks done, chunks)} of the store at ``path``, in run order; {} before the
    store exists. Reads only the layout this module wrote (for ``daat artifacts list``)."""
    if not (path / "zarr.json").is_file():
        return {}
    group = zarr.open_group(str(path), mode="r")
    tasks = [_task_from_attrs(t) for t in group.attrs.get("tasks", [])]
    if not tasks:
        return {}
    store = Store(group, tasks)
    done = store.done_counts()
    return {
        t.name: (min(done[t.name], store.n_chunks(t.group)), store.n_chunks(t.group)) for t in tasks
    }


def _task_from_attrs(saved: dict) -> Task:
    """A task as a store's attrs list it; layout 2 stored radii in 1/255 units."""
    saved = dict(saved)
    for old, new in (("eps255", "eps"), ("alpha255", "alpha")):
        if old in saved:
            saved[new] = saved.pop(old) / 255
    return Task(**saved)
