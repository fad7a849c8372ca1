"""Stage 1, ``daat preprocess``: clean images -> shards with the depth saliency E(g(x)).

One pass over the card, in three kinds of process: DataLoader workers read, decode, orient, resize
and JPEG-encode each input (or render it, for the synthetic card; ``pipeline/decode.py``); the
main process batches the stored images through the frozen depth model
(``pipeline/depth_batches.py``); a writer process (``pipeline/sink.py``) takes the Sobel magnitude
at the stored resolution (on a GPU the main process does that next to the model), encodes the
saliency PNGs and appends to the shards. What travels between them is a ``Record``
(``pipeline/records.py``). This module is the orchestration: the artifact, the shard plan, who
does which shard, resume, and the manifest at the end. Shards are the unit of resume: one that has
its tar and a matching sidecar is kept, any other is redone. Under torchrun, shard i of a split
belongs to rank i % world; rank 0 alone writes the manifest after every rank is done. The
artifact's writer lock (``daat/locks.py``, held by rank 0) keeps a second preprocess of the same
artifact out: it fails at once naming the holder instead of deleting the first one's temp files.
"""

from __future__ import annotations

import collections
import copy
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daat import artifacts, depth_ref, keys
from daat import config as config_mod
from daat.artifact_admin import resume_line, reuse_line
from daat.depth_ref import ORACLE, is_oracle
from daat.errors import DataError
from daat.pipeline import shards as fmt
from daat.pipeline.decode import Settings, decoded
from daat.pipeline.depth_batches import DepthBatches, LazyDepthModel
from daat.pipeline.images import JPEG_SUBSAMPLING, RESAMPLE_NAME
from daat.pipeline.records import Job
from daat.pipeline.sink import ShardSink

if TYPE_CHECKING:
    import torch

    from daat.dist import DistInfo

# torch (and daat.dist, daat.depth) are imported only once there is work to do: a rerun that
# finds its artifact complete answers from the manifest without paying torch's import.


def run(cfg: config_mod.Config, out: str) -> artifacts.Artifact:
    """Make (or reuse, or resume) the shard artifact ``cfg`` determines under ``out``."""
    from daat.cards import load_card

    card = load_card(cfg.data.card, cfg.data.root)
    cfg = _with_depth_model(cfg, card)
    if os.environ.get("RANK", "0") == "0":
        config_mod.print_resolved(cfg, f"preprocess {card.name}")
    oracle = is_oracle(cfg.depth.model)
    if oracle and card.kind != "synthetic":
        raise DataError(
            f"depth model 'oracle' is the synthetic data's exact depth; card "
            f"'{card.name}' is {card.kind} data: pass --depth with a depth network"
        )
    for split in card.splits_to_write(cfg.data.splits):
        fmt.check_split(split)
    determining = _determining(cfg, card, oracle)
    art = None  # single process: opened (and locked) before torch is imported
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        art = artifacts.create_or_open(out, "shards", determining, config=config_mod.to_dict(cfg))
        if art.complete:
            _say(reuse_line(art))
            return art
    try:
        from daat import dist

        with dist.session(cfg.device) as (device, info):
            return _run(cfg, out, card, determining, oracle, device, info, art)
    finally:
        if art is not None:
            art.unlock()


def _with_depth_model(cfg: config_mod.Config, card) -> config_mod.Config:
    """``depth.model`` unset: the exact ``oracle`` depth for synthetic cards; real images need a
    depth network named."""
    if cfg.depth.model is not None:
        return cfg
    if card.kind != "synthetic":
        raise DataError(
            f"card '{card.name}' holds real images: name the depth model with --depth "
            f"(e.g. Intel/dpt-hybrid-midas) or depth.model"
        )
    cfg = copy.deepcopy(cfg)
    cfg.depth.model = ORACLE
    return cfg


def _run(
    cfg,
    out: str,
    card,
    determining: dict,
    oracle: bool,
    device: torch.device,
    info: DistInfo,
    art: artifacts.Artifact | None,
) -> artifacts.Artifact:
    from daat import dist

    art = art or _open(cfg, out, determining, info)
    try:
        if art.complete:
            if info.is_main:
                _say(reuse_line(art))
            return art
        items = {split: card.items(split) for split in card.splits_to_write(cfg.data.splits)}
        model = None if oracle else LazyDepthModel(cfg.depth, device)
        settings = Settings(
            cfg.data.resize_short,
            cfg.data.center_crop,
            cfg.data.jpeg_quality,
            cfg.data.max_image_pixels,
            cfg.data.min_image_side,
            _render_size(card),
            oracle,
        )
        with ShardSink(art.path, _writer_processes(device)) as sink:
            for split, split_items in items.items():
                _process_split(cfg, art, split, split_items, settings, model, info, device, sink)
            sink.finish()
        dist.barrier()
        if info.is_main:
            _finalise(cfg, art, card, items, ORACLE if oracle else model.model_id)
        dist.barrier()
        return artifacts.open_artifact(art.path, kind="shards", require_complete=True)
    finally:
        art.unlock()


def _writer_processes(device: torch.device) -> int:
    """One writer process does ~1,200 256-px samples/s (0.6 ms PNG + 0.2 ms tar each, measured on
    the 2-core CPU), too close to a GPU's >= 1000 img/s: on a GPU use one per 8 cores this rank
    can count on, 1 to 4. On CPU the depth model is far slower than one writer."""
    from daat.dist import cuda_paths

    if not cuda_paths(device):
        return 1
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, max(1, cores // 8))


def _render_size(card) -> int | None:
    if card.kind != "synthetic":
        return None
    return int(card.synthetic["size"])


def _determining(cfg, card, oracle: bool) -> dict:
    """Everything the shards depend on: the data/depth config, the resolved card, the depth
    model's identity, the inputs' fingerprints, and the format/encoding versions."""
    ignore = keys.RULES["shards"].card_ignore
    card_facts = {k: v for k, v in card.to_dict().items() if k not in ignore}
    return {
        **keys.determining("shards", cfg),
        "card": card_facts,
        "depth_identity": ORACLE if oracle else depth_ref.identity(cfg.depth.model),
        "inputs": {s: card.input_fingerprint(s) for s in card.splits_to_write(cfg.data.splits)},
        "format": fmt.FORMAT_VERSION,
        "saliency": fmt.SAL_ENCODING,
        "image_encoding": f"{RESAMPLE_NAME}; JPEG {JPEG_SUBSAMPLING}",
    }


def _open(cfg, out: str, determining: dict, info: DistInfo) -> artifacts.Artifact:
    """Rank 0 creates (or finds) the artifact and holds its writer lock; the others open it once
    it exists (every rank raises if rank 0 could not, e.g. another job holds the lock)."""
    from daat import dist

    art = dist.main_first(
        lambda: artifacts.create_or_open(out, "shards", determining, config=config_mod.to_dict(cfg))
    )
    path = dist.all_gather_objects(str(art.path) if art is not None else None)[0]
    return art if art is not None else artifacts.open_artifact(path, kind="shards")


def _shard_plan(split: str, items: list, shard_size: int) -> list[list[Job]]:
    jobs = [
        Job(
            split,
            i // shard_size,
            fmt.sample_key(split, it.index),
            int(it.label),
            str(it.relpath),
            None if it.path is None else str(it.path),
            getattr(it, "synthetic", None),
        )
        for i, it in enumerate(items)
    ]
    return [jobs[i : i + shard_size] for i in range(0, len(jobs), shard_size)]


def _process_split(
    cfg,
    art,
    split: str,
    items: list,
    settings: Settings,
    model,
    info: DistInfo,
    device: torch.device,
    sink: ShardSink,
) -> None:
    from daat import progress

    plan = _shard_plan(split, items, cfg.data.shard_size)
    mine = [s for s in range(len(plan)) if s % info.world_size == info.rank]
    pending = [
        s
        for s in mine
        if fmt.finished_sidecar(art.path, split, s, [j.key for j in plan[s]]) is None
    ]
    total = sum(len(plan[s]) for s in mine)
    if info.is_main and 0 < len(mine) - len(pending) < len(mine):
        _say(
            resume_line(
                art.path,
                f"{split}: {len(mine) - len(pending)} of {len(mine)} shards "
                f"already written{' by this rank' if info.enabled else ''}",
            )
        )
    bar = progress.bar(
        total=total,
        initial=total - sum(len(plan[s]) for s in pending),
        unit="img",
        desc=f"{split}" + (f" [rank {info.rank}]" if info.enabled else ""),
        position=info.rank,
        leave=True,
        dynamic_ncols=True,
    )
    try:
        if pending:
            sink.plan({(split, s): [(j.key, j.relpath) for j in plan[s]] for s in pending})
            jobs = [job for s in pending for job in plan[s]]
            records = decoded(jobs, settings, cfg.data.num_workers, cfg.depth.batch_size)
            DepthBatches(model, cfg.depth.batch_size, device, sink, bar).consume(records)
    finally:
        bar.close()


def _finalise(cfg, art: artifacts.Artifact, card, items: dict, depth_id: str) -> None:
    """Rank 0, after every rank's shards are in place: record files, facts, mark complete."""
    splits = {}
    for split, split_items in items.items():
        plan = _shard_plan(split, split_items, cfg.data.shard_size)
        splits[split] = fmt.record_split(art, split, [[j.key for j in jobs] for jobs in plan])
        left_out = card.skipped(split)  # entries the folder scan did not read, with reasons
        skipped = splits[split]["skipped"]
        skipped["items"] = sorted(skipped["items"] + left_out, key=lambda x: x["relpath"])
        skipped["count"] = len(skipped["items"])
        _warn_skipped(split, len(split_items) + len(left_out), skipped["items"], art.path)
    fmt.describe(
        art,
        classes=list(card.classes),
        splits=splits,
        depth_model=depth_id,
        card=card.to_dict(),
        image={
            "resize_short": cfg.data.resize_short,
            "center_crop": cfg.data.center_crop,
            "jpeg_quality": cfg.data.jpeg_quality,
            "resample": RESAMPLE_NAME,
        },
    )
    art.mark_complete()


def _say(message: str) -> None:
    print(f"[preprocess] {message}", file=sys.stderr, flush=True)


def _warn_skipped(split: str, total: int, skipped: list[dict], path: Path) -> None:
    if not skipped:
        return
    reasons = collections.Counter(x["reason"].split(":", 1)[0] for x in skipped)
    summary = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
    print(
        f"warning: skipped {len(skipped)} of {total} {split} inputs ({summary}); paths and "
        f"reasons in {path / artifacts.MANIFEST} under extra.splits.{split}.skipped",
        file=sys.stderr,
    )
