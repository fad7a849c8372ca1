"""Which settings decide an artifact's content key: one table per artifact kind.

``artifacts.create_or_open`` names an artifact by sha256(kind, determining, lineage). ``RULES`` is
the only place that says which config keys make up ``determining``; each stage adds the facts
that are not config beside them: the shard artifact its card (minus ``card_ignore``), its inputs'
fingerprints and the format versions; a run the content digest of its shards; an evaluation the
run id, the checkpoint's sha256 and the content digest of the shards it reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Keys = dict[str, tuple[str, ...]]  # section ("" = top level) -> key names; () = whole section


@dataclass(frozen=True)
class KeyRules:
    keep: Keys | None  # only these (None: the whole resolved config) ...
    drop: Keys  # ... minus these ...
    drop_if: tuple[tuple[Callable[[dict], bool], Keys], ...] = ()  # ... minus switched-off ones
    card_ignore: tuple[str, ...] = ()  # card fields that are prose: editing them keeps the shards
    free: frozenset[str] = frozenset()  # keys an artifact may set differently from its input's
    resolve: Callable[[dict], dict] | None = None  # the settings as they act, before anything else
    rewrite: tuple[Callable[[dict], None], ...] = ()  # in-place edits of the kept keys, last


def _no_attack(c: dict) -> bool:
    return c["attack"]["steps"] == 0


def _no_align(c: dict) -> bool:
    return c["loss"]["lam"] == 0


def _cached_target(c: dict) -> bool:
    return c["depth"]["target"] == "cached"


def _no_feat(c: dict) -> bool:
    return c["loss"]["gamma0"] == 0


def as_trained(c: dict) -> dict:
    """A run's settings (a config dict) as it trains them: ``train.init_from: run:standard`` is
    cleared on a standard run (it IS that run), and a run that starts from another trains
    ``train.finetune_epochs`` epochs (when > 0), written as its ``train.epochs``. Idempotent."""
    out = copy.deepcopy(c)
    train, attack, loss = out["train"], out["attack"], out["loss"]
    standard = attack["steps"] == 0 and loss["lam"] == 0 and loss["gamma0"] == 0
    if train["init_from"] == "run:standard" and standard:
        train["init_from"] = ""
    if train["init_from"] and train["finetune_epochs"] > 0:
        train["epochs"] = train["finetune_epochs"]
    return out


def _from_scratch(c: dict) -> bool:
    return not c["train"]["init_from"]


def _runs_by_lineage(d: dict) -> None:
    """A run teacher or ``init_from`` run is identified by its artifact id in the lineage, not by
    how it was named (``run:standard``, ``run:/some/path/run-…`` or ``run:run-…``), so all name
    one run."""
    for section, key in (("loss", "teacher"), ("train", "init_from")):
        values = d.get(section, {})
        if str(values.get(key, "")).startswith("run:"):
            values[key] = "run:"


RULES: dict[str, KeyRules] = {
    # What is stored: inputs, their resize/encoding and the depth model behind the saliency.
    "shards": KeyRules(
        keep={
            "data": (
                "card",
                "splits",
                "resize_short",
                "center_crop",
                "jpeg_quality",
                "shard_size",
                "max_image_pixels",
                "min_image_side",
            ),
            "depth": ("model",),
        },
        drop={},
        card_ignore=("description", "licence", "class_names"),
    ),
    # What a run learns. Left out: how it executes or reports (and ``data``, which the shards'
    # id and content digest stand for), and settings its other settings switch off, so e.g. the
    # ``run:standard`` teacher and a ``standard`` preset run share one key. A run that starts from
    # another is keyed with the epochs it trains (``as_trained``).
    "run": KeyRules(
        keep=None,
        drop={
            "": ("preset", "device", "data", "eval"),
            "train": (
                "log_every_steps",
                "ckpt_every_steps",
                "keep_step_checkpoints",
                "keep_epoch_checkpoints",
                "compile",
                "loggers",
                "tracker_project",
                "mlflow_uri",
                "wandb_mode",
            ),
            "depth": ("batch_size", "channels_last", "compile", "allow_other_model"),
        },
        drop_if=(
            (_no_attack, {"attack": ("alpha", "random_start", "amp", "eps_warmup_epochs")}),
            (_from_scratch, {"train": ("finetune_epochs",)}),
            (_no_align, {"": ("depth",), "loss": ("s_schedule", "s_warmup_frac")}),
            (_cached_target, {"depth": ("model", "amp", "online_every", "online_epochs")}),
            (_no_feat, {"loss": ("teacher", "teacher_arch", "gamma_frac")}),
        ),
        rewrite=(_runs_by_lineage,),
        resolve=as_trained,
    ),
    # What an evaluation measures; the rest of its config is its run's (only ``free`` may differ).
    "eval": KeyRules(
        keep={"eval": ()},
        drop={"eval": ("batch_size",)},
        free=frozenset({"preset", "device", "eval", "data.num_workers"}),
    ),
}


def determining(kind: str, cfg: Any) -> dict:
    """The config keys that decide an artifact of ``kind`` (a ``Config`` or its dict)."""
    from daat import config as config_mod

    full = copy.deepcopy(cfg if isinstance(cfg, dict) else config_mod.to_dict(cfg))
    rules = RULES[kind]
    if rules.resolve is not None:
        full = rules.resolve(full)
    out = (
        full
        if rules.keep is None
        else {
            section: dict(full[section]) if not names else {k: full[section][k] for k in names}
            for section, names in rules.keep.items()
        }
    )
    for drop in (rules.drop, *(keys for applies, keys in rules.drop_if if applies(full))):
        for section, names in drop.items():
            target = out if section == "" else out.get(section, {})
            for name in names:
                target.pop(name, None)
    for rewrite in rules.rewrite:
        rewrite(out)
    return out
