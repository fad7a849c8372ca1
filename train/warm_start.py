"""Robust fine-tuning: ``train.init_from`` names a finished run whose final weights a run starts
from.

- ``run:/path/to/run-…``: that run;
- ``run:standard``: the ``standard`` run with this config's data/model/optim/train settings on the
  same shards (``teacher.standard_config``): the same artifact that ``loss.teacher: run:standard``
  names, so PGD-AT and DAAT start from the run that Table 1's Standard row reports and DAAT's
  stand-in teacher is. ``standard_first.resolve`` trains (or reuses) it before this run and
  passes ``run:run-<id>``; ``locate`` only opens finished runs. A run that is itself standard
  training ignores ``run:standard`` (it IS that run).

A run that starts from another trains ``train.finetune_epochs`` epochs (when > 0) instead of
``train.epochs``; ``effective`` writes the epochs it trains into ``train.epochs`` of the config the
run saves. Only the weights are taken: the optimiser, schedules and RNG streams start fresh.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from daat import config as config_mod
from daat.config import Config
from daat.errors import TrainingError
from daat.keys import as_trained
from daat.train.teacher import TeacherSource, require_resolved, run_dir, run_source

KEY = "train.init_from"


def effective(cfg: Config) -> Config:
    """``cfg`` as the run trains it (``keys.as_trained``: ``init_from`` cleared where it cannot
    act, ``train.epochs = train.finetune_epochs`` for a fine-tune). Idempotent."""
    trained = as_trained(config_mod.to_dict(cfg))["train"]
    out = copy.deepcopy(cfg)
    out.train.init_from, out.train.epochs = trained["init_from"], trained["epochs"]
    return out


def locate(cfg: Config, out: str | Path) -> TeacherSource | None:
    """The finished run to start from, or None (from scratch). Takes the config as given (before
    ``effective``); an acting ``run:standard`` is an error (``standard_first.resolve`` replaces
    it)."""
    spec = effective(cfg).train.init_from
    if not spec:
        return None
    require_resolved(spec, KEY)
    return run_source(spec, run_dir(spec, out), key=KEY)


def load_weights(model: nn.Module, source: TeacherSource, cfg: Config, num_classes: int) -> None:
    """Copy the final weights of ``source``'s run into ``model`` (the evaluation weights: its
    weight EMA where it kept one). Its model section must equal ``cfg.model``."""
    from daat.artifacts import open_artifact
    from daat.train import checkpoint as ckpt

    path = source.run_dir / ckpt.CKPT_DIR / ckpt.FINAL
    ckpt.verify_checkpoint(open_artifact(source.run_dir, kind="run"), path)
    state = ckpt.load(path)
    theirs = state["config"]["model"]
    ours = config_mod.to_dict(cfg)["model"]
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ or int(state["num_classes"]) != num_classes:
        what = (
            f"model.{differ[0]} = {theirs.get(differ[0])!r} there, {ours[differ[0]]!r} here"
            if differ
            else f"{state['num_classes']} classes there, {num_classes} here"
        )
        raise TrainingError(
            f"{KEY}={source.spec}: {source.run_dir} has a different model "
            f"({what}); fine-tune from a run with the same model settings"
        )
    model.load_state_dict(ckpt.eval_weights(state))
