"""``daat export``: a trained run's student, out of the project.

    export(run_dir, out, fmt="timm", checkpoint=None) -> Path

``timm`` (default): a timm hub folder -- ``model.safetensors`` (the ViT's own state dict, no daat
keys), ``config.json`` (``architecture``, ``num_classes``, ``label_names``, ``model_args``,
``pretrained_cfg`` with the input size, mean/std, interpolation and crop_pct) and ``README.md`` (a
Hugging Face model card holding the run's lineage). ``timm.create_model("local-dir:DIR",
pretrained=True)`` rebuilds it in a process that never imports daat, and the folder can be pushed
to the hub as it is. daat's normalisation layer moves into ``pretrained_cfg`` (mean, std), where
timm's data pipeline reads it. The folder is checked before it is published: timm rebuilds it here
and must give the run's logits, else the export fails naming why (a model that plain timm cannot
express, such as a custom stem, would silently change its outputs).

``robust``: ``model.pt2`` (``torch.export``) of the model WITH its normalisation, taking [0,1]
images of any batch size (RobustBench's convention, for attack libraries), and the same README.
Load it with ``torch.export.load("model.pt2").module()``.

Exports are deterministic: the same run exported twice gives the same bytes. ``out`` is replaced
as a whole (a folder holding anything but a previous export is refused).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from daat.errors import DaatError

FORMATS = ("timm", "robust")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
ROBUST = "model.pt2"
EXPORT_FILES = frozenset({WEIGHTS, CONFIG, CARD, ROBUST})
# Eval view: the stored image (short side data.resize_short, PIL bicubic) is centre-cropped to its
# whole short side and resized to model.img_size: timm's crop_pct=1 geometry.
CROP_PCT = 1.0
INTERPOLATION = "bicubic"
_CHECK_BATCH = 4
_CHECK_ATOL = 1e-5


class ExportError(DaatError):
    """The run cannot be exported in the requested format (the message says why)."""


def export(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "timm",
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Write the run's model to ``out`` in ``fmt`` (``timm`` | ``robust``); returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (formats: {', '.join(FORMATS)})")
    from daat.artifacts import open_artifact
    from daat.train.checkpoint import load_model_for_eval

    run = open_artifact(run_dir, kind="run", require_complete=True)
    model, cfg, shards_dir = load_model_for_eval(run.path, checkpoint, device="cpu")
    out = Path(out)
    _check_target(out)
    shards = _shard_facts(shards_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent.resolve()))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; an export is for sharing
        if fmt == "timm":
            _write_timm(model, cfg, shards, staging)
            _check_timm(model, staging, run.id)
        else:
            _write_robust(model, staging)
        (staging / CARD).write_text(model_card(run, cfg, model, fmt, shards))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            raise ExportError(
                f"--out {out} holds files that are not a daat export "
                f"({', '.join(foreign[:3])}); choose an empty or new directory"
            )
    out.parent.mkdir(parents=True, exist_ok=True)


# -- timm hub folder -------------------------------------------------------------------------
def timm_state_dict(model) -> dict:
    """The wrapped timm ViT's state dict (contiguous tensors), refusing weights outside it."""
    state = model.state_dict()
    outside = sorted(k for k in state if not k.startswith("vit.") and k not in ("mean", "std"))
    if outside:
        raise ExportError(
            _not_timm(f"it has weights outside the timm ViT ({', '.join(outside[:3])})")
        )
    return {
        k[len("vit.") :]: v.detach().contiguous() for k, v in state.items() if k.startswith("vit.")
    }


def _not_timm(why: str) -> str:
    return (
        f"this run's model cannot be expressed as a plain timm model: {why}. Export it with "
        "--format robust (a torch.export file of the whole model) instead"
    )


def _float32_list(t) -> list[float]:
    """The shortest decimals that round-trip each float32 value (0.485, not 0.48500001430511475)."""
    import numpy as np

    return [float(str(np.float32(v))) for v in t.flatten().tolist()]


def timm_config(model, cfg, shards: dict | None) -> dict:
    """config.json in timm's hub format for ``model`` (a DaatViT) trained with ``cfg``."""
    from daat.models import timm_model_args

    if cfg.model.stem != "patch":
        raise ExportError(
            _not_timm(
                f"it has a convolutional stem (model.stem={cfg.model.stem}), which timm's "
                "VisionTransformer cannot build from config.json (train with --set "
                "model.stem=patch for a timm export)"
            )
        )
    import timm

    vit = model.vit
    arch_cfg = getattr(vit, "pretrained_cfg", None) or {}
    architecture, _ = timm.models.split_model_name_tag(cfg.model.name)  # "name.tag" -> "name"
    num_classes = int(vit.num_classes)
    pretrained_cfg = {
        "architecture": architecture,
        "input_size": list(model.input_size),
        "fixed_input_size": bool(arch_cfg.get("fixed_input_size", True)),
        "interpolation": INTERPOLATION,
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "mean": _float32_list(model.mean),
        "std": _float32_list(model.std),
        "num_classes": num_classes,
        "pool_size": None,
        "first_conv": arch_cfg.get("first_conv"),
        "classifier": arch_cfg.get("classifier"),
        "description": "Depth-Aware Adversarial Training (daat) student; takes images in [0,1] "
        "normalised with mean/std",
    }
    config = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": int(vit.num_features),
    }
    if isinstance(getattr(vit, "global_pool", None), str) and vit.global_pool:
        config["global_pool"] = vit.global_pool
    if shards is not None:
        names, descriptions = shards["labels"], shards["names"]
        config["label_names"] = names
        if any(descriptions.get(n, n) != n for n in names):
            config["label_descriptions"] = {n: descriptions.get(n, n) for n in names}
    config["model_args"] = {**timm_model_args(cfg.model), "num_classes": num_classes}
    config["pretrained_cfg"] = pretrained_cfg
    config["daat"] = {"attention_aggregate": cfg.model.attention_aggregate}
    return config


def _write_timm(model, cfg, shards: dict | None, folder: Path) -> None:
    from safetensors.torch import save_file

    state = timm_state_dict(model)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    text = json.dumps(timm_config(model, cfg, shards), indent=2) + "\n"
    (folder / CONFIG).write_text(text)


def check_inputs(model, seed: int = 0):
    """A fixed batch of [0,1] images for ``model`` (the same on every call)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.rand(_CHECK_BATCH, *model.input_size, generator=gen)


def _check_timm(model, folder: Path, run_id: str) -> None:
    """timm must rebuild the folder with no daat code on its path and reproduce the logits."""
    import timm
    import torch

    try:
        rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise ExportError(
            f"{run_id}: "
            + _not_timm(
                f"timm cannot rebuild it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            )
        ) from e
    x = check_inputs(model)
    cfg = rebuilt.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected, got = model(x), rebuilt((x - mean) / std)
    diff = (expected - got).abs().max().item()
    if got.shape != expected.shape or not diff <= _CHECK_ATOL:
        raise ExportError(
            f"{run_id}: "
            + _not_timm(
                f"timm's rebuild gives different logits (max |diff| {diff:.3g} > {_CHECK_ATOL})"
            )
        )


def _shard_facts(shards_dir: Path) -> dict | None:
    """Class ids (label order), their display names, the card name and the shards' content key,
    from the run's shard artifact if it is still there."""
    from daat.pipeline.shards import open_shards

    try:
        shards = open_shards(shards_dir)
    except DaatError as e:
        print(
            f"warning: exporting without label names: cannot open the run's shards ({e})",
            file=sys.stderr,
        )
        return None
    card = shards.extra.get("card") or {}
    return {
        "labels": shards.classes,
        "names": dict(card.get("class_names") or {}),
        "card": card.get("name", "?"),
        "key": shards.manifest.get("key", "?"),
    }


# -- torch.export file ----------------------------------------------------------------------
def _write_robust(model, folder: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1)
    # Zeros, not random data: the example input is stored in the file (bytes must repeat).
    example = torch.zeros(2, *model.input_size)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / ROBUST)


# -- model card -------------------------------------------------------------------------------
def model_card(run, cfg, model, fmt: str, shards: dict | None) -> str:
    """README.md with Hugging Face front matter and the run's lineage; no timestamps, so it
    repeats byte for byte."""
    from daat import config as config_mod

    lineage = run.manifest.get("lineage", [])
    extra = run.extra
    final = extra.get("final_metrics") or {}
    _, h, w = model.input_size
    rows = [
        ("run", run.id),
        ("run key", run.manifest.get("key", "?")),
        ("shards", lineage[0] if lineage else "?"),
        ("shards key", shards["key"] if shards else "? (shards not found)"),
        ("other inputs", ", ".join(lineage[1:]) or "-"),
        ("depth model", extra.get("depth_model", "?")),
        ("teacher", extra.get("teacher") or "-"),
        ("preset", cfg.preset or "-"),
        ("data card", shards["card"] if shards else "?"),
        ("training steps", extra.get("steps", "?")),
        ("daat", run.manifest.get("versions", {}).get("daat", "?")),
    ]
    if final:
        rows += [
            ("val clean accuracy", f"{final.get('val_clean_acc', float('nan')):.4f}"),
            (
                f"val PGD-{final.get('val_pgd_steps', '?')} accuracy",
                f"{final.get('val_pgd_acc', float('nan')):.4f} at eps "
                f"{final.get('val_eps', float('nan')) * 255:.3g}/255 (L-inf, [0,1] pixels)",
            ),
        ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    mean = ", ".join(f"{v:g}" for v in _float32_list(model.mean))
    std = ", ".join(f"{v:g}" for v in _float32_list(model.std))
    usage = _USAGE[fmt]
    return f"""---
library_name: {"timm" if fmt == "timm" else "pytorch"}
pipeline_tag: image-classification
tags:
- image-classification
- adversarial-robustness
- daat
{"- timm" if fmt == "timm" else "- torch-export"}
---

# {cfg.model.name} trained with daat ({run.id})

A ViT trained with Depth-Aware Adversarial Training (PGD adversarial training plus depth-attention
and DINOv2 feature alignment), exported by `daat export --format {fmt}`.

Input: RGB images of {h}x{w} pixels. {_INPUT[fmt].format(mean=mean, std=std)}
Evaluation preprocessing in daat: resize the short side (bicubic), centre-crop the whole short side
(crop_pct {CROP_PCT:g}), resize to {h}x{w}.

## Usage

```python
{usage}
```

## Lineage

| | |
| --- | --- |
{table}

## Training config

```yaml
{config_mod.dump(cfg).rstrip()}
```
"""


_INPUT = {
    "timm": "Pixel values in [0,1], then normalised with mean ({mean}) and std ({std}), as "
    "`pretrained_cfg` says (timm's `resolve_data_config` + `create_transform` do it).",
    "robust": "Pixel values in [0,1]; the normalisation (mean ({mean}), std ({std})) is inside "
    "the model (RobustBench convention).",
}
_USAGE = {
    "timm": "import timm, torch\n"
    'model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True).eval()\n'
    "cfg = timm.data.resolve_data_config({}, model=model)\n"
    "transform = timm.data.create_transform(**cfg)  # PIL image -> normalised tensor",
    "robust": "import torch\n"
    'model = torch.export.load("model.pt2").module()  # takes [B, 3, H, W] in [0,1]\n'
    "logits = model(images)",
}
