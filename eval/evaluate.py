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

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from daat import config as config_mod
from daat import dist, keys
from daat.artifact_admin import resume_line, reuse_line
from daat.artifacts import Artifact, create_or_open, open_artifact, sha256_file
from daat.config import Config
from daat.errors import DaatError
from daat.eval import cue_conflict, results, sanity, summary
from daat.eval.chunks import ChunkRunner, progress_bars, stream_chunks
from daat.eval.context import EvalContext, RankWork, ShardSource
from daat.eval.results import Store


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
    found = ckpt.final_or_latest(run_dir)
    if found.name != ckpt.FINAL:
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
    """(shard artifact, ``ShardSource``): the shards the run was trained on, found at its
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
    return shard_art, ShardSource(
        shard_art.id, shard_art.path.resolve(), shard_art.content_digest, own=ours
    )


def open_eval_artifact(
    out: str, cfg: Config, run_art: Artifact, shard_art, ckpt_sha: str, info: dist.DistInfo
) -> Artifact:
    """Rank 0 creates, resumes or reuses the evaluation (holding its writer lock); the others
    open the same one."""
    args = (out, "eval", determining(cfg, run_art.id, ckpt_sha, shard_art))
    kwargs = {"config": config_mod.to_dict(cfg), "lineage": [run_art.id, shard_art.id]}
    art = dist.main_first(lambda: create_or_open(*args, **kwargs))  # returns once rank 0 has
    return art or create_or_open(*args, **kwargs, lock=False)


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
    from daat.pipeline.loaders import require_intact
    from daat.train.checkpoint import load_model_for_eval

    run_art = open_artifact(run_dir, kind="run")
    cfg = eval_config(run_art, list(configs), list(overrides))
    ckpt_path = resolve_checkpoint(run_art.path, checkpoint)
    with dist.session(cfg.device) as (device, info):
        art = None
        try:
            model, _run_cfg, shards_dir = load_model_for_eval(run_art.path, ckpt_path, device)
            shard_art, source = eval_shards(run_art, shards_dir, shards, model.vit.num_classes)
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
            context = EvalContext(
                run_id=run_art.id,
                checkpoint=ckpt_path,
                checkpoint_sha256=sha,
                shards=source,
                num_classes=shard_art.num_classes,
                grid=tuple(model.grid),
            )

            def check_shards() -> None:
                require_intact(
                    shard_art,
                    files.verify(info.rank, info.world_size),
                    "before writing summary.json",
                )

            _evaluate(art, model, cfg, shard_art, context, (device, info), check_shards)
            return art
        finally:
            if art is not None:
                art.unlock()


def _evaluate(
    art: Artifact,
    model,
    cfg: Config,
    shard_art,
    context: EvalContext,
    session: tuple[torch.device, dist.DistInfo],
    check_shards: Callable[[], None],
) -> None:
    """Every rank: its pending chunks, then (rank 0, after a barrier) the summary and figures.
    ``check_shards`` re-hashes this rank's val tars before anything is summarised."""
    from daat.eval import figures as figures_mod
    from daat.pipeline.loaders import EvalReadSpec, eval_pipeline

    device, info = session
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
    work = dist.all_gather_objects(RankWork(runner.computed, reused, runner.seconds))
    check_shards()  # every rank, its share of the val tars: before anything is summarised
    dist.barrier()
    if info.is_main:
        _finish(art, model, cfg, shard_art, store, figure_samples, work, context, device)
    dist.barrier()


def _finish(
    art: Artifact,
    model,
    cfg: Config,
    shard_art,
    store: Store,
    figure_samples: dict[int, tuple],
    work: list[RankWork],
    context: EvalContext,
    device: torch.device,
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
    data = summary.build(store, cfg, context, work, fig_files)
    sanity.shout(data["sanity"]["flags"])
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
