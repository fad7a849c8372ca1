"""The one config system: nested dataclasses, YAML presets, typed ``--set a.b=v`` overrides.

Every stage reads the same ``Config``; each artifact's content key hashes only the keys that
determine it (the tables in ``daat/keys.py``), so e.g. changing ``train.epochs`` never invalidates
shards.

Each section checks its own fields (``check``): choices are ``Literal`` types the loader enforces,
every number must be finite, ranges are stated beside the field they bound. ε and α fields are
``PixelFraction``: a fraction of the [0, 1] pixel range in every section, written ``0.0157`` or
``4/255`` (in YAML files and ``--set`` alike); a value above 1 is refused with the fraction to
write instead. YAML files may not repeat a key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from daat.errors import DaatError


class ConfigError(DaatError, ValueError):
    """A config file, preset or override is wrong; the message names the key or file."""


class _PixelFraction:
    """Marks an ε/α field: a fraction of the [0, 1] pixel range."""


PixelFraction = Annotated[float, _PixelFraction]


def _rule(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raise naming ``key`` when ``ok`` is false: 'config key K must be RULE, got V'."""
    if not ok:
        raise ConfigError(f"config key '{key}' must be {rule}, got {value!r}")


def _positive(section: Any, where: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _rule(value is None or value > 0, f"{where}.{name}", "positive", value)


def _non_negative(section: Any, where: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _rule(value is None or value >= 0, f"{where}.{name}", ">= 0", value)


@dataclass
class DataConfig:
    card: str = "synthetic"  # data card: name in data_cards/, a YAML path, or an ImageFolder dir
    # (the synthetic set's size, resolution, seed and spurious-texture switch live in its card)
    root: str | None = None  # where the card's images live (not needed for the synthetic card)
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    resize_short: int = 64  # preprocess resizes the short side once to this (ImageNet: 256)
    center_crop: bool = False  # also centre-crop to resize_short x resize_short when storing
    jpeg_quality: int = 95  # quality of the stored image, 1..100
    shard_size: int = 1000  # samples per shard
    num_workers: int = 2  # decode workers (DataLoader) for preprocess and training
    max_image_pixels: int = 178_956_970  # larger images are refused as decompression bombs
    min_image_side: int = 8  # inputs whose short side is below this many pixels are skipped

    def check(self, where: str = "data") -> None:
        _rule(
            bool(self.card.strip()),
            f"{where}.card",
            "a card name, YAML file or directory",
            self.card,
        )
        _rule(
            bool(self.splits) and len(set(self.splits)) == len(self.splits),
            f"{where}.splits",
            "a non-empty list without repeats",
            self.splits,
        )
        _positive(self, where, "resize_short", "shard_size", "max_image_pixels", "min_image_side")
        _non_negative(self, where, "num_workers")
        _rule(
            1 <= self.jpeg_quality <= 100, f"{where}.jpeg_quality", "in 1..100", self.jpeg_quality
        )


@dataclass
class DepthConfig:
    # The depth network: 'oracle' (synthetic ground truth), a hub id or a local directory.
    # None: preprocess uses 'oracle' for synthetic cards (others need --depth); train uses the
    # depth model the shards were made with (read from their manifest).
    model: str | None = None
    # train: a depth.model other than the shards' own is refused when G(x_adv) is computed online
    # (target online/mixed), since the cached and online targets would come from different
    # networks; true allows it and the run records it.
    allow_other_model: bool = False
    batch_size: int = 64  # depth-model batch in preprocess and online G(x_adv)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # channels_last memory format for the depth model on CUDA
    compile: bool = False  # torch.compile the depth model
    # L_align target: cached G(x) from the shards | online G(x_adv) | mixed (see online_every)
    target: Literal["cached", "online", "mixed"] = "cached"
    online_every: int = 0  # mixed: run the depth model online every N steps (0 = never by step)
    online_epochs: list[int] = field(default_factory=list)  # mixed: [start, end) epochs online

    def check(self, where: str = "depth") -> None:
        _rule(
            self.model is None or bool(self.model.strip()),
            f"{where}.model",
            "a depth model name or null",
            self.model,
        )
        _positive(self, where, "batch_size")
        _non_negative(self, where, "online_every")
        epochs = self.online_epochs
        _rule(
            not epochs or (len(epochs) == 2 and 0 <= epochs[0] < epochs[1]),
            f"{where}.online_epochs",
            "[] or [start, end) with 0 <= start < end",
            epochs,
        )
        if self.target == "mixed" and self.online_every == 0 and not epochs:
            raise ConfigError(
                f"{where}.target=mixed needs {where}.online_every > 0 or "
                f"{where}.online_epochs=[start, end]"
            )


@dataclass
class ModelConfig:
    name: str = "vit_base_patch14_dinov2"  # timm architecture (from scratch unless pretrained)
    img_size: int = 224  # training/eval crop size
    patch_size: int = 14
    embed_dim: int | None = None  # override the timm default width (tiny models)
    depth: int | None = None  # override the number of blocks
    num_heads: int | None = None
    pretrained: bool = False  # the paper trains from scratch
    # LayerScale init value (DINOv2's own is 1e-5). null = no LayerScale: a plain ViT, as the
    # paper's from-scratch ViT-B/14. Ignored with pretrained weights, which keep their own.
    init_values: float | None = None
    # patch: one strided conv (plain ViT) | conv: a 3x3 conv stack (ConvStem, Singh et al. 2023)
    stem: Literal["patch", "conv"] = "patch"
    attention_aggregate: Literal["mean", "last", "rollout"] = "mean"  # A(x) over layers

    def check(self, where: str = "model") -> None:
        _rule(bool(self.name.strip()), f"{where}.name", "a timm architecture", self.name)
        _positive(
            self, where, "img_size", "patch_size", "embed_dim", "depth", "num_heads", "init_values"
        )
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"{where}.img_size {self.img_size} is not a multiple of "
                f"{where}.patch_size {self.patch_size}"
            )
        if self.embed_dim and self.num_heads and self.embed_dim % self.num_heads:
            raise ConfigError(
                f"{where}.embed_dim {self.embed_dim} is not a multiple of "
                f"{where}.num_heads {self.num_heads}"
            )
        if self.stem == "conv" and self.pretrained:
            raise ConfigError(
                f"{where}.stem=conv has no pretrained weights: set "
                f"{where}.pretrained=false or {where}.stem=patch"
            )


@dataclass
class AttackConfig:
    eps: PixelFraction = 4 / 255  # L-inf radius (training PGD and the per-epoch val PGD)
    alpha: PixelFraction = 1 / 255  # PGD step size
    steps: int = 10  # PGD steps during training (0 = standard training)
    random_start: bool = True
    amp: bool = True  # bf16 autocast for the attack on CUDA; delta stays fp32
    # Ramp the training eps (and alpha) linearly up over these epochs (0 = off).
    eps_warmup_epochs: float = 0.0

    def check(self, where: str = "attack") -> None:
        _non_negative(self, where, "steps", "eps_warmup_epochs")


@dataclass
class LossConfig:
    lam: float = 0.1  # lambda for L_align, >= 0 (Sec. 4 says 0.1; B.1 says 0.05)
    s_schedule: Literal["constant", "warmup_anneal"] = "constant"  # s(t); not given by the paper
    s_warmup_frac: float = 0.1  # warmup_anneal: ramp-up share of training, in [0, 1]
    gamma0: float = 0.0  # gamma(0) for L_feat; the paper does not give it (daat presets use 1.0)
    gamma_frac: float = 0.2  # gamma(t) reaches 0 at this share of the epochs (Eq. 4), in (0, 1]
    teacher: str = "vit_base_patch14_dinov2.lvd142m"  # timm name, local dir or weights file
    # timm architecture of a local teacher weights file that does not record its own (or records
    # a wrong one), e.g. vit_small_patch14_dinov2; null = the file's record, else ViT-B/14 DINOv2
    teacher_arch: str | None = None

    def check(self, where: str = "loss") -> None:
        _non_negative(self, where, "lam", "gamma0")
        _rule(
            0 <= self.s_warmup_frac <= 1, f"{where}.s_warmup_frac", "in [0, 1]", self.s_warmup_frac
        )
        _rule(0 < self.gamma_frac <= 1, f"{where}.gamma_frac", "in (0, 1]", self.gamma_frac)
        _rule(
            bool(self.teacher.strip()), f"{where}.teacher", "a teacher name or path", self.teacher
        )
        _rule(
            self.teacher_arch is None or bool(self.teacher_arch.strip()),
            f"{where}.teacher_arch",
            "a timm architecture or null",
            self.teacher_arch,
        )


@dataclass
class OptimConfig:
    lr: float = 5e-4
    min_lr: float = 1e-6  # cosine floor, <= lr
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # each in [0, 1)
    warmup_epochs: float = 5.0  # linear warm-up, then cosine to min_lr
    grad_clip: float = 1.0  # global-norm clip (0 = off)

    def check(self, where: str = "optim") -> None:
        _positive(self, where, "lr")
        _non_negative(self, where, "min_lr", "weight_decay", "warmup_epochs", "grad_clip")
        _rule(self.min_lr <= self.lr, f"{where}.min_lr", f"<= {where}.lr ({self.lr})", self.min_lr)
        _rule(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{where}.betas",
            "two numbers in [0, 1)",
            self.betas,
        )


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 128  # per rank
    samples_per_epoch: int | None = None  # per epoch over all ranks (None = train split size)
    amp: bool = True  # bf16 autocast on CUDA for the weight update; master weights fp32
    compile: bool = False  # torch.compile the student
    ckpt_every_steps: int = 500  # also at every epoch end
    keep_step_checkpoints: int = 2  # newest mid-epoch checkpoints kept (besides latest/final)
    keep_epoch_checkpoints: int = 3  # newest epoch-end checkpoints kept (besides latest/final)
    val_samples: int = 1000  # val subset evaluated after each epoch (0 = all)
    val_pgd_steps: int = 10  # PGD-k at attack.eps, step 2.5 eps / k (0 = clean only)
    val_every_epochs: int = 1  # validate after every N-th epoch and after the last one
    log_every_steps: int = 50
    hflip: bool = True
    rrc_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # random resized crop
    # Start from a finished run's weights: run:/path/to/run-... | run:standard ("" = scratch)
    init_from: str = ""
    finetune_epochs: int = 0  # epochs of a run that starts from init_from (0 = train.epochs)
    ema_decay: float = (
        0.0  # an EMA of the weights (decay per step), validated and evaluated (0 = off)
    )
    # Metrics sinks: jsonl (metrics.jsonl, required) plus tensorboard | mlflow | wandb trackers,
    # each from its extra (pip install 'daat[tensorboard]'); only rank 0 logs.
    loggers: list[Literal["jsonl", "tensorboard", "mlflow", "wandb"]] = field(
        default_factory=lambda: ["jsonl"]
    )
    tracker_project: str = "daat"  # MLflow experiment and W&B project name
    mlflow_uri: str | None = None  # MLflow tracking URI (None = a file store in <run>/mlruns)
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: upload later (wandb sync)

    def check(self, where: str = "train") -> None:
        _positive(
            self,
            where,
            "epochs",
            "batch_size",
            "samples_per_epoch",
            "ckpt_every_steps",
            "log_every_steps",
            "val_every_epochs",
        )
        _non_negative(
            self,
            where,
            "keep_step_checkpoints",
            "keep_epoch_checkpoints",
            "val_samples",
            "val_pgd_steps",
            "finetune_epochs",
        )
        _rule(0 <= self.ema_decay < 1, f"{where}.ema_decay", "in [0, 1)", self.ema_decay)
        _rule(
            not self.init_from or self.init_from.startswith("run:"),
            f"{where}.init_from",
            "run:/path/to/run-... or run:standard",
            self.init_from,
        )
        scale = self.rrc_scale
        _rule(
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
            f"{where}.rrc_scale",
            "[low, high] with 0 < low <= high <= 1",
            scale,
        )
        _rule(
            "jsonl" in self.loggers,
            f"{where}.loggers",
            "a list that includes 'jsonl' "
            "(daat report and resume read metrics.jsonl; add trackers beside it)",
            self.loggers,
        )
        _rule(
            len(set(self.loggers)) == len(self.loggers),
            f"{where}.loggers",
            "a list without repeats",
            self.loggers,
        )


@dataclass
class EvalConfig:
    batch_size: int = 128
    # Fig. 3c's PGD-100 radii, increasing
    eps_grid: list[PixelFraction] = field(
        default_factory=lambda: [k / 255 for k in (1, 2, 4, 6, 8, 10)]
    )
    pgd_steps: int = 10  # the Table 1 PGD
    pgd_long_steps: int = 100  # the Fig. 3c PGD
    n_samples: int = 0  # val samples evaluated (0 = all)
    n_autoattack: int = 1000  # AutoAttack subset (0 = all)
    autoattack: bool = True  # run AutoAttack (Table 1); false only for quick looks
    autoattack_version: Literal["standard"] = "standard"
    chunk_size: int = 256  # samples per zarr chunk (the unit of resume)
    n_figures: int = 4  # fixed val images drawn for Fig. 2/4 style figures
    figure_eps: list[PixelFraction] = field(default_factory=lambda: [2 / 255, 4 / 255])
    depth_model: str | None = None  # if set, also draw depth of x and x_adv (Fig. 1a)
    eps: PixelFraction = 4 / 255  # Table 1 PGD and AutoAttack radius
    alpha: PixelFraction = 1 / 255  # Table 1 PGD step
    pgd_long_alpha_frac: float = 0.25  # PGD-100 step = this x eps (eps/4, Table 1's 1/255 at 4/255)
    n_pgd_long: int = 0  # PGD-100 subset of the evaluated samples (0 = all)
    seed: int = 0  # attack randomness; fixed (not the run's seed) so runs face identical attacks

    def check(self, where: str = "eval") -> None:
        _positive(
            self,
            where,
            "batch_size",
            "pgd_steps",
            "pgd_long_steps",
            "chunk_size",
            "eps",
            "alpha",
            "pgd_long_alpha_frac",
        )
        _non_negative(self, where, "n_samples", "n_autoattack", "n_figures", "n_pgd_long")
        grid = self.eps_grid
        _rule(
            bool(grid) and grid[0] > 0 and all(a < b for a, b in zip(grid, grid[1:])),
            f"{where}.eps_grid",
            "positive and strictly increasing",
            grid,
        )
        _rule(
            all(e > 0 for e in self.figure_eps), f"{where}.figure_eps", "positive", self.figure_eps
        )
        if self.depth_model is not None and self.depth_model.strip().lower() == "oracle":
            raise ConfigError(
                f"config key '{where}.depth_model': 'oracle' depth exists only for the clean "
                "synthetic renders, not for x_adv; give a depth network (hub id or directory) or "
                "leave it empty"
            )


@dataclass
class Config:
    preset: str = ""  # names of the presets applied, for reports
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.check(f.name)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config, where: str = "") -> Any:
    """Build a dataclass from a (partial) dict, rejecting unknown keys and bad types by name. A
    whole config saved by an older daat (in a run, checkpoint or eval artifact) is upgraded
    first (``upgrade_saved``)."""
    if cls is Config and isinstance(data, dict):
        data = upgrade_saved(data)
    return _merge(cls(), data, where)


_EVAL_RADII = ("eps", "alpha", "eps_grid", "figure_eps")


def upgrade_saved(data: dict) -> dict:
    """A saved config as this version reads it. Older versions counted eval radii in 1/255 (any
    radius above 1 gives them away: a fraction never is) and had no model.init_values (the
    architecture's own LayerScale then applied)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    ev = data.get("eval")
    if isinstance(ev, dict):
        radii = [
            r
            for key in _EVAL_RADII
            if key in ev
            for r in (ev[key] if isinstance(ev[key], list) else [ev[key]])
        ]
        if any(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 1 for r in radii):
            for key in (k for k in _EVAL_RADII if k in ev):
                value = ev[key]
                ev[key] = [r / 255 for r in value] if isinstance(value, list) else value / 255
    model = data.get("model")
    if isinstance(model, dict) and "init_values" not in model and "name" in model:
        model["init_values"] = _architecture_layerscale(str(model["name"]))
    return data


def _architecture_layerscale(name: str) -> float | None:
    """1e-5 (DINOv2's init; the weights come from the checkpoint anyway) when timm's ``name``
    has LayerScale by default, else None."""
    import timm
    import torch

    if not timm.is_model(name):
        return None
    with torch.device("meta"):
        vit = timm.create_model(name, pretrained=False)
    blocks = getattr(vit, "blocks", [])
    has = bool(len(blocks)) and type(getattr(blocks[0], "ls1", None)).__name__ == "LayerScale"
    return 1e-5 if has else None


def _merge(obj: Any, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj), include_extras=True)
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        number = _coerce(value, args[0], path)
        if _PixelFraction in args[1:]:
            _check_fraction(number, path)
        return number
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"config key '{path}' must be one of {', '.join(map(str, args))}; got {value!r}"
        )
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}' expects a list, got {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}' expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{path}' expects an integer, got {value!r}")
    if hint is float:
        return _number(value, path)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{path}' expects a string, got {value!r}")
    raise ConfigError(f"config key '{path}': unsupported type {hint}")


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FRACTION_TEXT = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")
_SHOWN_TEXT = re.compile(rf"^\s*{_NUMBER}\s*\(\s*({_NUMBER}\s*/\s*{_NUMBER})\s*\)\s*$")


def _number(value: Any, path: str) -> float:
    """A finite float from a number or from text: '1e-3', '4/255', or '0.0157 (4/255)' (what
    ``show`` prints; the fraction in brackets is the exact value)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key '{path}' expects a number, got {value!r}")
    if isinstance(value, str):
        text = value
        shown = _SHOWN_TEXT.match(text)
        if shown:
            text = shown.group(1)
        ratio = _FRACTION_TEXT.match(text)
        try:
            if ratio:
                value = float(ratio.group(1)) / float(ratio.group(2))
            else:
                value = float(text)  # YAML 1.1 reads '1e-3' (no dot) as a string
        except (ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"config key '{path}' expects a number, got {text!r}") from e
    if not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{path}' expects a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"config key '{path}' must be a finite number, got {value!r}")
    return float(value)


def _check_fraction(value: float, path: str) -> None:
    if value > 1:
        raise ConfigError(
            f"config key '{path}' = {value:g} is above 1: ε and α are fractions of the [0, 1] "
            f"pixel range, so write {value:g}/255 for {value:g} grey levels"
        )
    if value < 0:
        raise ConfigError(f"config key '{path}' must be in [0, 1], got {value:g}")


def fraction_text(value: float) -> str:
    """'4/255' when ``value`` is a multiple of 1/255 (or of a quarter of it: '0.75/255'), else
    the number itself."""
    quarters = value * 255 * 4
    if abs(quarters - round(quarters)) < 1e-6:
        return f"{round(quarters) / 4:g}/255"
    return f"{value:g}"


def fraction_value(text: str) -> float:
    """The number ``fraction_text`` wrote."""
    return _number(text, "fraction")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set`` as YAML (fractions like ``4/255`` stay text until
    the field's type reads them)."""
    stripped = text.strip()
    return yaml.safe_load(stripped) if stripped else ""


def apply_override(cfg: Config, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    key, _, text = assignment.partition("=")
    parts = key.strip().split(".")
    nested: dict = {}
    cursor = nested
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = parse_value(text)
    _merge(cfg, nested, "")


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("daat.configs").iterdir() if p.name.endswith(".yaml")
    )


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping repeats a key (PyYAML would silently keep the last value)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            marker = repr(key)
            line = key_node.start_mark.line + 1
            if marker in seen:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice (lines {seen[marker]} and {line}); keep one"
                )
            seen[marker] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys (``DuplicateKeyError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line."""
    return " ".join(str(error).split())


def read_yaml(source: str) -> dict:
    """A preset name (``daat/configs/NAME.yaml``) or a YAML file path."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}")
        text = path.read_text()
    else:
        preset = resources.files("daat.configs") / f"{source}.yaml"
        if not preset.is_file():
            raise ConfigError(f"unknown preset '{source}' (presets: {', '.join(preset_names())})")
        text = preset.read_text()
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    return data


def load(
    configs: typing.Sequence[str] = (),
    overrides: typing.Sequence[str] = (),
    base: dict | None = None,
) -> Config:
    """Defaults (or ``base``, e.g. a run's saved config), then each preset/file in order (later
    wins), then each ``--set`` in order; then every section checks itself."""
    cfg = from_dict(base) if base is not None else Config()
    applied = [cfg.preset] if cfg.preset else []
    for source in configs:
        data = read_yaml(source)
        try:
            _merge(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e
        applied.append(Path(source).stem if Path(source).suffix else source)
    if applied and not any(o.strip().startswith("preset=") for o in overrides):
        cfg.preset = "+".join(applied)
    for assignment in overrides:
        apply_override(cfg, assignment)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every section's own checks (ranges, cross-field rules); choices, types and finiteness are
    checked while values are read."""
    cfg.check()


def dump(cfg: Config) -> str:
    """The config as YAML with exact numbers (what artifacts save)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


class _Shown(str):
    """An ε/α value as ``show`` prints it: '0.0157 (4/255)'."""


class _ShowDumper(yaml.SafeDumper):
    pass


_ShowDumper.add_representer(
    _Shown,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style=""),
)


def _shown(value: float) -> _Shown | float:
    text = fraction_text(value)
    return _Shown(f"{value:.3g} ({text})") if "/" in text else value


def _for_show(obj: Any) -> Any:
    hints = typing.get_type_hints(type(obj), include_extras=True)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(value):
            out[f.name] = _for_show(value)
        elif hint == PixelFraction:
            out[f.name] = _shown(value)
        elif typing.get_args(hint) and typing.get_args(hint)[0] == PixelFraction:
            out[f.name] = [_shown(v) for v in value]
        else:
            out[f.name] = value
    return out


def show(cfg: Config) -> str:
    """The config as YAML for people: ε/α fields read '0.0157 (4/255)' (``load`` accepts that
    text back; the fraction is the exact value)."""
    return yaml.dump(_for_show(cfg), Dumper=_ShowDumper, sort_keys=False, allow_unicode=True)


def print_resolved(cfg: Config, label: str) -> None:
    """The resolved config on stderr, as every command prints it before it works."""
    import sys

    sys.stderr.write(f"# resolved config ({label})\n{show(cfg)}")
    sys.stderr.flush()
