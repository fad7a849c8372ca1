"""The ``run:standard`` stand-in, trained as an ordinary run before the run that names it.

``loss.teacher: run:standard`` (when γ0 > 0) and ``train.init_from: run:standard`` (on a run that
is not itself standard training) name the ``standard`` run with the same data/model/optim/train
settings on the same shards (``teacher.standard_config``): offline, with no DINOv2 weights, the
synthetic preset's stand-in teacher and the start of its robust fine-tunes. ``resolve`` trains
that run (or reuses it: same content key, so free the second time) and returns the config with
each acting ``run:standard`` replaced by ``run:run-<id>`` (the bare id, found under the same
``--out`` by ``teacher.run_dir``, as ``daat experiment`` names it), so ``teacher.locate`` and
``warm_start.locate`` only open finished runs. Content keys do not change: a run is keyed by the
lineage id of its teacher and start, not by how they are named (``keys``).

``daat train`` calls it; ``daat experiment`` (and so ``daat quickstart``) trains the standard
cell first by itself and passes ``run:run-<id>``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from daat.config import Config
from daat.train import warm_start
from daat.train.run_artifact import check_inputs
from daat.train.teacher import STANDARD, standard_config


def acting_refs(cfg: Config) -> list[str]:
    """The config keys whose ``run:standard`` changes what the run learns."""
    refs = []
    if cfg.loss.gamma0 > 0 and cfg.loss.teacher == STANDARD:
        refs.append("loss.teacher")
    if warm_start.effective(cfg).train.init_from == STANDARD:
        refs.append(warm_start.KEY)
    return refs


def resolve(cfg: Config, shards_dir: str | Path, out: str | Path) -> Config:
    """``cfg`` with every acting ``run:standard`` replaced by ``run:<id of the standard run>``,
    that run trained (or reused) in ``out`` on ``shards_dir`` first; ``cfg`` itself when nothing
    acting names it. ``cfg`` is checked against the shards before the standard run trains, so a
    bad setting fails at once."""
    refs = acting_refs(cfg)
    if not refs:
        return cfg
    from daat.train.loop import run

    checked, _ = check_inputs(cfg, shards_dir)
    ref = f"run:{run(standard_config(checked), str(shards_dir), str(out)).id}"
    resolved = copy.deepcopy(cfg)
    if "loss.teacher" in refs:
        resolved.loss.teacher = ref
    if warm_start.KEY in refs:
        resolved.train.init_from = ref
    return resolved
