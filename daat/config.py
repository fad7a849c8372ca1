"""The one config system: nested dataclasses, YAML presets, typed ``--set a.b=v`` overrides.

Every stage reads the same ``Config``; each artifact's content key hashes only the sections that
determine it (see ``determining``), so e.g. changing ``train.epochs`` never invalidates shards.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from daat.errors import DaatError


class ConfigError(DaatError, ValueError):
    """A config file, preset or override is wrong; the message names the key or file."""


@dataclass
class DataConfig:
    card: str = "synthetic"  # data card: name in data_cards/, a YAML path, or an ImageFolder dir
    # (the synthetic set's size, resolution, seed and spurious-texture switch live in its card)
    root: str | None = None  # where the card's images live (not needed for the synthetic card)
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    resize_short: int = 64  # preprocess resizes the short side once to this (ImageNet: 256)
    center_crop: bool = False  # also centre-crop to resize_short x resize_short when storing
    jpeg_quality: int = 95  # quality of the stored image
    shard_size: int = 1000  # samples per shard
    num_workers: int = 2  # decode workers (DataLoader) for preprocess and training
    max_image_pixels: int = 178_956_970  # larger images are refused as decompression bombs
    min_image_side: int = 8  # inputs whose short side is below this many pixels are skipped


@dataclass
class DepthConfig:
    model: str = "oracle"  # 'oracle' (synthetic ground truth), a hub id, or a local directory
    batch_size: int = 64  # depth-model batch in preprocess and online G(x_adv)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # channels_last memory format for the depth model on CUDA
    compile: bool = False  # torch.compile the depth model
    target: str = "cached"  # L_align target: cached G(x) | online G(x_adv) | mixed
    online_every: int = 0  # mixed: run the depth model online every N steps (0 = never by step)
    online_epochs: list[int] = field(default_factory=list)  # mixed: [start, end) epochs online


@dataclass
class ModelConfig:
    name: str = "vit_base_patch14_dinov2"  # timm architecture (from scratch unless pretrained)
    img_size: int = 224  # training/eval crop size
    patch_size: int = 14
    embed_dim: int | None = None  # override the timm default width (tiny models)
    depth: int | None = None  # override the number of blocks
    num_heads: int | None = None
    pretrained: bool = False  # the paper trains from scratch
    stem: str = "patch"  # patch: one strided conv (ViT) | conv: 3x3 conv stack (ConvStem, Singh et al.)
    attention_aggregate: str = "mean"  # A(x) over layers: mean | last | rollout


@dataclass
class AttackConfig:
    eps: float = 4 / 255  # L-inf radius in [0,1] pixel units
    alpha: float = 1 / 255  # PGD step size
    steps: int = 10  # PGD steps during training (0 = standard training)
    random_start: bool = True
    amp: bool = True  # bf16 autocast for the attack on CUDA; delta stays fp32
    eps_warmup_epochs: float = 0.0  # ramp training eps (and alpha) linearly up over these epochs (0 = off)


@dataclass
class LossConfig:
    lam: float = 0.1  # lambda for L_align (Sec. 4 says 0.1; B.1 says 0.05)
    s_schedule: str = "constant"  # s(t): constant | warmup_anneal (paper gives no schedule)
    s_warmup_frac: float = 0.1  # warmup_anneal: ramp-up share of training
    gamma0: float = 0.0  # gamma(0) for L_feat; the paper does not give it (daat presets use 1.0)
    gamma_frac: float = 0.2  # gamma(t) reaches 0 at this share of the epochs (Eq. 4)
    teacher: str = "vit_base_patch14_dinov2.lvd142m"  # timm name, local dir or weights file


@dataclass
class OptimConfig:
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 5.0  # linear warm-up, then cosine to min_lr
    grad_clip: float = 1.0  # global-norm clip (0 = off)


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
    val_pgd_steps: int = 10
    val_every_epochs: int = 1  # validate after every N-th epoch and after the last one
    log_every_steps: int = 50
    hflip: bool = True
    rrc_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # random resized crop
    init_from: str = ""  # start from a finished run's weights: run:/path/to/run-... | run:standard ('' = scratch)
    finetune_epochs: int = 0  # epochs of a run that starts from init_from (0 = train.epochs)
    ema_decay: float = 0.0  # keep an EMA of the weights (decay per step), validated and evaluated (0 = off)


@dataclass
class EvalConfig:
    batch_size: int = 128
    eps_grid: list[float] = field(default_factory=lambda: [1, 2, 4, 6, 8, 10])  # in 1/255 units
    pgd_steps: int = 10  # the Table 1 PGD
    pgd_long_steps: int = 100  # the Fig. 3c PGD
    n_samples: int = 0  # val samples evaluated (0 = all)
    n_autoattack: int = 1000  # AutoAttack subset (0 = all)
    autoattack: bool = True  # run AutoAttack (Table 1); false only for quick looks
    autoattack_version: str = "standard"
    chunk_size: int = 256  # samples per zarr chunk (the unit of resume)
    n_figures: int = 4  # fixed val images drawn for Fig. 2/4 style figures
    figure_eps: list[float] = field(default_factory=lambda: [2, 4])  # in 1/255 units
    depth_model: str | None = None  # if set, also draw depth of x and x_adv (Fig. 1a)
    eps: float = 4  # Table 1 PGD and AutoAttack radius, in 1/255 units
    alpha: float = 1  # Table 1 PGD step, in 1/255 units
    pgd_long_alpha_frac: float = 0.25  # PGD-100 step = this x eps (eps/4, Table 1's 1/255 at 4/255)
    n_pgd_long: int = 0  # PGD-100 subset of the evaluated samples (0 = all)
    seed: int = 0  # attack randomness; fixed (not the run's seed) so runs face identical attacks


@dataclass
class Config:
    preset: str = ""  # names of the presets applied, for reports
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Which sections determine each artifact kind; everything else may change without a new artifact.
DETERMINING = {
    "shards": {"data": ["card", "splits", "resize_short", "center_crop", "jpeg_quality",
                        "shard_size", "max_image_pixels", "min_image_side"],
               "depth": ["model"]},
}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config, where: str = "") -> Any:
    """Build a dataclass from a (partial) dict, rejecting unknown keys and bad types by name."""
    return _merge(cls(), data, where)


def _merge(obj: Any, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError as e:
                raise ConfigError(f"config key '{path}' expects a number, got {value!r}") from e
        raise ConfigError(f"config key '{path}' expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{path}' expects a string, got {value!r}")
    raise ConfigError(f"config key '{path}': unsupported type {hint}")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set``: YAML scalars/lists, plus fractions like ``4/255``."""
    stripped = text.strip()
    if "/" in stripped and all(p.strip().replace(".", "", 1).isdigit() for p in stripped.split("/", 1)):
        num, den = stripped.split("/", 1)
        return float(num) / float(den)
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
    return sorted(p.name[:-5] for p in resources.files("daat.configs").iterdir()
                  if p.name.endswith(".yaml"))


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
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    return data


def load(configs: typing.Sequence[str] = (), overrides: typing.Sequence[str] = (),
         base: dict | None = None) -> Config:
    """Defaults (or ``base``, e.g. a run's saved config), then each preset/file in order (later
    wins), then each ``--set`` in order."""
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
    choices = {
        "depth.target": (cfg.depth.target, {"cached", "online", "mixed"}),
        "model.attention_aggregate": (cfg.model.attention_aggregate, {"mean", "last", "rollout"}),
        "model.stem": (cfg.model.stem, {"patch", "conv"}),
        "loss.s_schedule": (cfg.loss.s_schedule, {"constant", "warmup_anneal"}),
        "device": (cfg.device, {"auto", "cpu", "cuda"}),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {sorted(allowed)}, got {value!r}")
    positive = {"train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
                "train.val_every_epochs": cfg.train.val_every_epochs,
                "model.img_size": cfg.model.img_size, "model.patch_size": cfg.model.patch_size,
                "data.shard_size": cfg.data.shard_size, "data.resize_short": cfg.data.resize_short}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if cfg.model.img_size % cfg.model.patch_size:
        raise ConfigError(f"model.img_size {cfg.model.img_size} is not a multiple of "
                          f"model.patch_size {cfg.model.patch_size}")
    if cfg.attack.eps < 0 or cfg.attack.alpha < 0 or cfg.attack.steps < 0:
        raise ConfigError("attack.eps, attack.alpha and attack.steps must be non-negative")
    if cfg.attack.eps_warmup_epochs < 0 or cfg.train.finetune_epochs < 0:
        raise ConfigError("attack.eps_warmup_epochs and train.finetune_epochs must be non-negative")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must be in [0, 1), got {cfg.train.ema_decay}")
    if cfg.train.init_from and not cfg.train.init_from.startswith("run:"):
        raise ConfigError(f"config key 'train.init_from' must be run:/path/to/run-... or "
                          f"run:standard, got {cfg.train.init_from!r}")


def determining(cfg: Config, kind: str) -> dict:
    """The part of the config that determines an artifact of ``kind`` (hashed into its key)."""
    full = to_dict(cfg)
    if kind not in DETERMINING:
        return full
    return {section: {k: full[section][k] for k in keys}
            for section, keys in DETERMINING[kind].items()}


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
