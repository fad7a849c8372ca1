"""``daat evaluate``: clean, PGD-10, PGD-100 over ε, AutoAttack, attention under attack, figures.

Flow: the run's saved config is the base (``--config``/``--set`` may change eval.*, device and
data.num_workers only) → the checkpoint, checked against the sha256 the run recorded → the shards:
the run's own (their id and content digest must be the run's lineage, so an edited ``shards_dir``
is refused) or ``--shards`` given on purpose (same classes; recorded as such) → their val tars
hashed (the ranks split the work) → eval artifact (kind "eval", lineage [run id, shard id], content
key = eval section + run id + checkpoint sha256 + shards content digest; its writer lock held by
rank 0) → stream the val split in order, cut each sample group
(all / PGD-100 subset / AutoAttack subset) into chunks of ``eval.chunk_size`` samples, and for
every chunk run each task whose ``done`` flag is still False (see ``results.py``) → the val tars
hashed again (chunks of earlier sessions included, nothing is summarised from shards that
changed) → rank 0 writes ``summary.json`` and the figures and marks the artifact complete. A
killed evaluation rerun with the same command redoes only unfinished chunks.

Multi-GPU (torchrun): the (group, chunk) units of results.py are dealt round-robin, unit u to rank
u % world_size; every rank reads the whole (cheap to decode) val stream but attacks only its own
units; rank 0 summarises and draws the figures after a barrier.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from daat import config as config_mod
from daat import dist, keys
from daat.artifact_admin import resume_line, reuse_line
from daat.artifacts import Artifact, create_or_open, open_artifact, sha256_file
from daat.config import Config
from daat.errors import DaatError
from daat.eval import attacks_eval, attention, cue_conflict, results, summary
from daat.eval.results import GROUPS, Store, Task
from daat.eval.style import format_eps

ATTENTION_TOP_FRAC = 0.2  # attention mass on the top-20 % patches of G (the report's column)


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


def log(message: str) -> None:
    tqdm.write(f"[evaluate] {message}", file=sys.stderr)  # keeps the progress bars intact


# -- set-up ------------------------------------------------------------------------------------
def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The explicit checkpoint, else ``checkpoints/final.pt``, else the one ``latest`` names."""
    from daat.train import checkpoint as ckpt

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise DaatError(f"checkpoint {checkpoint} does not exist")
        return path
    final = run_dir / ckpt.CKPT_DIR / ckpt.FINAL
    if final.is_file():
        return final
    found = ckpt.latest(run_dir / ckpt.CKPT_DIR)
    if found is None:
        raise DaatError(f"{run_dir} has no checkpoint to evaluate yet")
    log(f"warning: {run_dir} has no final checkpoint; evaluating {found.name}")
    return found


def checkpoint_sha(run_art: Artifact, path: Path) -> str:
    try:
        rel = path.resolve().relative_to(run_art.path.resolve()).as_posix()
    except ValueError:
        rel = None
    entry = run_art.manifest["files"].get(rel) if rel else None
    return entry["sha256"] if entry else sha256_file(path)


def _differences(ours: dict, theirs: dict, prefix: str = "") -> list[str]:
    changed = []
    for key, value in ours.items():
        path = f"{prefix}{key}"
        if path in keys.RULES["eval"].free:
            continue
        if isinstance(value, dict) and isinstance(theirs.get(key), dict):
            changed += _differences(value, theirs[key], f"{path}.")
        elif theirs.get(key) != value:
            changed.append(path)
    return changed


def eval_config(run_art: Artifact, configs: list[str], overrides: list[str]) -> Config:
    """The run's config with the user's presets/overrides on top. Only eval.*, device and
    data.num_workers may change: the rest describes the model being evaluated."""
    cfg = config_mod.load(configs, overrides, base=run_art.config)
    run_cfg = config_mod.to_dict(config_mod.from_dict(run_art.config))
    changed = _differences(config_mod.to_dict(cfg), run_cfg)
    if changed:
        key = changed[0]
        section, _, name = key.partition(".")
        mine = getattr(getattr(cfg, section), name) if name else getattr(cfg, section)
        raise config_mod.ConfigError(
            f"config key '{key}' = {mine!r} differs from the run's "
            f"{run_cfg[section][name] if name else run_cfg[section]!r}; evaluate uses the run's "
            f"model and training settings, so only eval.*, device and data.num_workers may change"
        )
    cfg.preset = run_cfg["preset"]
    return cfg


def determining(cfg: Config, run_id: str, ckpt_sha: str, shard_art) -> dict:
    return {
        **keys.determining("eval", cfg),
        "run": run_id,
        "checkpoint_sha256": ckpt_sha,
        "shards_content": shard_art.content_digest,
    }


def eval_shards(run_art: Artifact, shards_dir: Path, given: str | None, num_classes: int):
    """(shard artifact, facts to record): the shards the run was trained on, found at its
    recorded ``shards_dir`` or at ``given``, and only if their id and content digest are the ones
    in the run's lineage; or, ``given`` on purpose, other shards with the same classes."""
    from daat.pipeline.shards import open_shards

    lineage_id, content = run_art.manifest["lineage"][0], run_art.extra.get("shards_content")
    shard_art = open_shards(given or shards_dir)
    ours = shard_art.id == lineage_id and shard_art.content_digest == content
    if not ours and given is None:
        raise DaatError(
            f"{shards_dir} holds {shard_art.id} (content {shard_art.content_digest[:12]}), but "
            f"{run_art.id} was trained on {lineage_id} (content {str(content)[:12]}); its manifest "
            f"points at other shards. Pass --shards DIR to evaluate on other shards on purpose"
        )
    classes = run_art.extra.get("classes")
    if not ours and (shard_art.num_classes != num_classes or shard_art.classes != classes):
        raise DaatError(
            f"--shards {given}: classes {shard_art.classes}, but the model was "
            f"trained on {num_classes} classes {classes}; evaluation needs the same "
            f"classes in the same order"
        )
    return shard_art, {
        "id": shard_art.id,
        "path": str(shard_art.path.resolve()),
        "content_digest": shard_art.content_digest,
        "source": "run lineage" if ours else "--shards (not the run's own)",
    }


def open_eval_artifact(
    out: str, cfg: Config, run_art: Artifact, shard_art, ckpt_sha: str, info: dist.DistInfo
) -> Artifact:
    """Rank 0 creates, resumes or reuses the evaluation (holding its writer lock); the others
    open the same one."""
    args = (out, "eval", determining(cfg, run_art.id, ckpt_sha, shard_art))
    kwargs = {"config": config_mod.to_dict(cfg), "lineage": [run_art.id, shard_art.id]}
    art = dist.main_first(lambda: create_or_open(*args, **kwargs))  # returns once rank 0 has
    return art or create_or_open(*args, **kwargs, lock=False)


# -- streaming the val split into chunks -------------------------------------------------------
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


# -- per-chunk work ----------------------------------------------------------------------------
def task_title(task: Task) -> str:
    """'PGD-10 ε=4/255', 'AutoAttack ε=4/255', 'clean': what a progress bar calls a task."""
    if task.kind == "clean":
        return "clean"
    name = f"PGD-{task.steps}" if task.kind == "pgd" else "AutoAttack"
    return f"{name} ε={format_eps(task.eps)}"


def progress_bars(
    store: Store, mine: list[tuple[str, int]], info: dist.DistInfo
) -> dict[str, tqdm]:
    """One bar per task on rank 0 (samples of this rank's chunks, done / total, ETA), unless the
    environment sets TQDM_DISABLE; other ranks get disabled bars."""
    off = not info.is_main or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    bars = {}
    for i, task in enumerate(store.tasks):
        units = [k for g, k in mine if g == task.group]
        sizes = [store.bounds(task.group, k)[1] - store.bounds(task.group, k)[0] for k in units]
        done = sum(n for k, n in zip(units, sizes) if store.is_done(task, k))
        bars[task.name] = tqdm(
            total=sum(sizes),
            initial=done,
            desc=f"{task_title(task):<20}",
            unit="img",
            position=i,
            leave=True,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=off,
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
            "top_clean": attention.top_mass(a_clean, g, ATTENTION_TOP_FRAC),
            "top_adv": attention.top_mass(a_adv, g, ATTENTION_TOP_FRAC),
        }
        return {k: v.cpu().numpy() for k, v in metrics.items()}


# -- the stage -------------------------------------------------------------------------------
def run(
    run_dir: str,
    checkpoint: str | None,
    configs: list[str],
    overrides: list[str],
    out: str,
    shards: str | None = None,
) -> Artifact:
    """Evaluate a run's checkpoint on its own shards' val split (or ``shards``, on purpose)."""
    from daat.pipeline.loaders import eval_pipeline, require_intact
    from daat.train.checkpoint import load_model_for_eval

    run_art = open_artifact(run_dir, kind="run")
    cfg = eval_config(run_art, list(configs), list(overrides))
    ckpt_path = resolve_checkpoint(run_art.path, checkpoint)
    with dist.session(cfg.device) as (device, info):
        art = None
        try:
            model, _run_cfg, shards_dir = load_model_for_eval(run_art.path, ckpt_path, device)
            shard_art, shard_facts = eval_shards(run_art, shards_dir, shards, model.vit.num_classes)
            sha = checkpoint_sha(run_art, ckpt_path)
            art = open_eval_artifact(out, cfg, run_art, shard_art, sha, info)
            if info.is_main:
                config_mod.print_resolved(cfg, art.id)
            if art.complete:
                if info.is_main:
                    log(reuse_line(art))
                return art
            files = shard_art.guard(["val"])
            require_intact(shard_art, files.verify(info.rank, info.world_size), "before evaluating")
            _evaluate(
                art,
                model,
                cfg,
                shard_art,
                eval_pipeline,
                info,
                device,
                {
                    "run": run_art.id,
                    "checkpoint": str(ckpt_path),
                    "checkpoint_sha256": sha,
                    "shards": shard_facts,
                    "grid": list(model.grid),
                },
                lambda: require_intact(
                    shard_art,
                    files.verify(info.rank, info.world_size),
                    "before writing summary.json",
                ),
            )
            return art
        finally:
            if art is not None:
                art.unlock()


def _evaluate(
    art: Artifact,
    model,
    cfg: Config,
    shard_art,
    eval_pipeline,
    info,
    device,
    facts: dict,
    check_shards,
) -> None:
    from daat.eval import figures as figures_mod
    from daat.pipeline.loaders import EvalReadSpec

    ev = cfg.eval
    n_val = shard_art.split_size("val")
    val_positions = results.subset_positions(n_val, ev.n_samples, ev.seed)
    n = len(val_positions)
    tasks = results.plan_tasks(ev)
    subsets = {
        "long": results.subset_positions(n, ev.n_pgd_long, ev.seed),
        "autoattack": results.subset_positions(n, ev.n_autoattack, ev.seed),
    }
    zarr_path = art.path / "results.zarr"
    layout = dict(n=n, n_val=n_val, chunk_size=ev.chunk_size, subsets=subsets)
    if info.is_main:
        Store.create_or_open(zarr_path, tasks, **layout)
    dist.barrier()
    store = Store.create_or_open(zarr_path, tasks, **layout)  # rank 0 made it; all open it
    units = store.units()
    pending = {
        unit: len(store.pending(*unit))
        for u, unit in enumerate(units)
        if u % info.world_size == info.rank
    }  # this rank's (group, chunk) -> tasks to do
    reused = sum(len(store.tasks_of(g)) for g, _ in pending) - sum(pending.values())

    def wanted(group: str, k: int) -> bool:
        return pending.get((group, k), 0) > 0

    figure_pos = (
        set(results.subset_positions(n, ev.n_figures, ev.seed).tolist())
        if (info.is_main and ev.n_figures and not figures_mod.all_present(art.path, ev))
        else set()
    )
    log(
        f"{n} of {n_val} val samples; chunks of {ev.chunk_size}; PGD-{ev.pgd_long_steps} on "
        f"{len(subsets['long'])}, AutoAttack on "
        f"{len(subsets['autoattack']) if ev.autoattack else 'none (eval.autoattack=false)'}; "
        f"rank {info.rank}: "
        f"{sum(pending.values())} chunk-tasks to compute, {reused} already done"
    )
    if reused and info.is_main:
        log(
            resume_line(
                art.path,
                f"{reused} of {reused + sum(pending.values())} chunk-tasks "
                f"already done{' by this rank' if info.world_size > 1 else ''}",
            )
        )
    bars = progress_bars(store, list(pending), info)
    runner = ChunkRunner(model, store, cfg, device, shard_art.num_classes, bars)
    figure_samples: dict[int, tuple] = {}
    batches = eval_pipeline(shard_art, EvalReadSpec.from_config(cfg, grid=model.grid))
    for chunk in stream_chunks(batches, val_positions, store, wanted, figure_pos, figure_samples):
        if wanted(chunk.group, chunk.index):
            runner.run(chunk)
    for bar in bars.values():
        bar.close()
    log(
        f"rank {info.rank}: computed {sum(runner.computed.values())} chunk-tasks this time "
        f"({reused} reused from an earlier run); seconds per task: "
        + ", ".join(f"{k} {v:.0f}" for k, v in runner.seconds.items() if v)
    )
    counts = dist.all_gather_objects(
        {"computed": runner.computed, "reused": reused, "seconds": runner.seconds}
    )
    check_shards()  # every rank, its share of the val tars: before anything is summarised
    dist.barrier()
    if info.is_main:
        _finish(art, model, cfg, shard_art, store, figure_samples, counts, facts, device)
    dist.barrier()


def _finish(
    art: Artifact,
    model,
    cfg: Config,
    shard_art,
    store: Store,
    figure_samples,
    counts,
    facts: dict,
    device,
) -> None:
    from daat.eval import figures as figures_mod

    if not store.all_done():
        raise DaatError(
            f"{art.path}: some chunks are still not done after every rank finished: "
            f"{store.done_counts()}"
        )
    fig_files = figures_mod.make_all(
        art.path, model, cfg.eval, figure_samples, figures_mod.display_names(shard_art), device
    )
    data = summary.build(store, cfg, facts, counts, fig_files, shard_art.num_classes)
    summary.shout(data["sanity"]["flags"])
    cue_conflict.add_to(art, data, model, cfg, shard_art, device)
    for path in sorted((art.path / "results.zarr").rglob("*")):
        if path.is_file() and not path.name.endswith(".partial"):
            art.record_file(path.relative_to(art.path).as_posix())
    for rel in fig_files:
        art.record_file(rel)
    art.write_json("summary.json", data)
    art.extra.update(
        {
            "accuracy": data["accuracy"],
            "n_samples": data["counts"]["evaluated"],
            "flags": [f["name"] for f in data["sanity"]["flags"]],
        }
    )
    art.mark_complete()
    summary.print_table(data)
