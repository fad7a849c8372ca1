"""The config's sections: one dataclass per section, each field with its default and a one-line
comment, and each section's own ``check`` (``Config`` is the whole tree).

Choices are ``Literal`` types the loader (``daat/config.py``) enforces while it reads values, as it
does types and finiteness; ranges and cross-field rules are stated here beside the field they
bound. ε and α fields are ``PixelFraction``: a fraction of the [0, 1] pixel range in every section.
A new knob is a field here with a one-line comment; nothing else needs to know about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from daat.errors import DaatError


class ConfigError(DaatError, ValueError):
    """A config file, preset or override is wrong; the message names the key or file."""


class PixelFractionMark:
    """Marks an ε/α field: a fraction of the [0, 1] pixel range (the loader refuses values
    above 1 with the fraction to write instead)."""


PixelFraction = Annotated[float, PixelFractionMark]


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
