"""The student ViT with its attention tap A(x), the frozen DINOv2 teacher and the feature
projection.

Images enter every model in [0,1]; each model's first layer is its own mean/std normalisation.

The tap (DESIGN "A(x)"): for every block, the CLS query's softmax attention over ALL keys (CLS,
register tokens, patches) exactly as the block computes it, restricted to the patch keys, averaged
over heads, aggregated over blocks (``mean`` | ``last`` | ``rollout``) and renormalised to unit mass
on the patch grid. The logits keep timm's fused ``scaled_dot_product_attention``; the tap recomputes
only the CLS row from each block's qkv projection output (captured by a forward hook, so no extra
matmul), which costs O(N) per head instead of the O(N^2) map. The hooks are registered once and
are inert (an attribute test) except inside ``forward_train(..., need_attention=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerNorm2d, PatchEmbed
from torch import nn

from daat.config import ConfigError, ModelConfig
from daat.errors import DaatError, DataError

AGGREGATES = ("mean", "last", "rollout")
DEFAULT_TEACHER_ARCH = "vit_base_patch14_dinov2"
TEACHER_SPEC_KEY = (
    "daat_teacher"  # safetensors metadata / checkpoint key holding the teacher's arch
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Outputs(NamedTuple):
    logits: torch.Tensor
    attention: torch.Tensor | None  # [B, h*w], unit mass per sample
    tokens: torch.Tensor | None  # [B, 1+N, D]: final-norm CLS + patch tokens (registers dropped)


def _norm_buffers(module: nn.Module, vit: nn.Module) -> None:
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", _IMAGENET_MEAN), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", _IMAGENET_STD), dtype=torch.float32).view(1, -1, 1, 1)
    module.register_buffer("mean", mean)
    module.register_buffer("std", std)


def _cls_and_patches(tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """[B, prefix+N, D] -> [B, 1+N, D]: register tokens are not part of phi (Eq. 3)."""
    if num_prefix == 1:
        return tokens
    return torch.cat([tokens[:, :1], tokens[:, num_prefix:]], dim=1)


def _split_qk(
    attn: Attention, qkv: torch.Tensor, all_queries: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (CLS only unless ``all_queries``) and k from a qkv output laid out as timm's Attention
    does: [B, N, 3*H*hd] -> (3, H, hd); q_norm/k_norm act on the head dim, as in timm. fp32 for
    the softmax."""
    b, n, _ = qkv.shape
    qkv = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim)
    q = qkv[:, :, 0] if all_queries else qkv[:, :1, 0]
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        q = attn.q_norm(q.float()).transpose(1, 2)  # [B, H, Nq, hd]
        k = attn.k_norm(qkv[:, :, 1].float()).transpose(1, 2)  # [B, H, N, hd]
    return q, k


def _attention_rows(attn: Attention, qkv: torch.Tensor, all_queries: bool) -> torch.Tensor:
    """Head-averaged softmax(q k^T * scale) rows: [B, Nq, N] (Nq = 1 for the CLS row)."""
    q, k = _split_qk(attn, qkv, all_queries)
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        probs = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)
    return probs.mean(dim=1)


def _unit_mass(a: torch.Tensor) -> torch.Tensor:
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def _rollout_cls_row(maps: list[torch.Tensor]) -> torch.Tensor:
    """CLS row of (0.5 A_L + 0.5 I) ... (0.5 A_1 + 0.5 I) (Abnar & Zuidema): a row vector times the
    matrices from the last block down, so no N x N product is ever formed."""
    row = torch.zeros_like(maps[0][:, 0])
    row[:, 0] = 1.0
    for a in reversed(maps):
        row = 0.5 * torch.bmm(row.unsqueeze(1), a).squeeze(1) + 0.5 * row
    return row


class _TapSink:
    """Where the qkv hooks put CLS attention rows; ``rows is None`` outside a tapped forward."""

    def __init__(self):
        self.rows: list[torch.Tensor] | None = None
        self.full = False  # all query rows (rollout) instead of the CLS row only
        self.first = 0  # blocks before this index are not recorded ("last" records one block)


def _tap_hook(
    sink: _TapSink,
    index: int,
    attn: Attention,
    _module: nn.Module,
    _inputs: tuple,
    qkv: torch.Tensor,
) -> None:
    if sink.rows is not None and index >= sink.first:
        sink.rows.append(_attention_rows(attn, qkv, all_queries=sink.full))


class DaatViT(nn.Module):
    """A timm ViT taking [0,1] images, with the attention tap for L_align and tokens for L_feat."""

    def __init__(self, vit: nn.Module, aggregate: str = "mean"):
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ConfigError(
                f"model.attention_aggregate must be one of {AGGREGATES}, got {aggregate!r}"
            )
        _check_tappable(vit)
        _norm_buffers(self, vit)
        self.vit = vit
        self.aggregate = aggregate
        # Registered once and gated by the sink rather than added per call: adding hooks inside a
        # forward is a torch.compile graph break; an inert hook is traced away.
        self._sink = _TapSink()
        for index, block in enumerate(vit.blocks):
            # The logits path must use F.scaled_dot_product_attention (TIMM_FUSED_ATTN=0 would
            # turn it off).
            block.attn.fused_attn = True
            block.attn.qkv.register_forward_hook(partial(_tap_hook, self._sink, index, block.attn))

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(3, H, W): the shape of one [0,1] image this model takes (timm's ``input_size``)."""
        return (3, *self.vit.patch_embed.img_size)

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.vit.patch_embed.img_size)
        if x.dim() != 4 or tuple(x.shape[-2:]) != size:
            raise ValueError(
                f"DaatViT expects images [B, 3, {size[0]}, {size[1]}] in [0,1] "
                f"(model.img_size), got {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def forward(
        self, x: torch.Tensor, need_attention: bool = False, need_tokens: bool = False
    ) -> torch.Tensor | Outputs:
        """Logits; or ``Outputs`` when a tap is requested (so a DDP wrapper, which only routes
        ``forward``, can run the training forward)."""
        if need_attention or need_tokens:
            return self.forward_train(x, need_attention, need_tokens)
        return self.vit(self.normalize(x))

    def forward_train(
        self, x: torch.Tensor, need_attention: bool = False, need_tokens: bool = False
    ) -> Outputs:
        """One forward pass giving logits, A(x) [B, h*w] and/or final-norm tokens [B, 1+N, D]."""
        with self._tap(need_attention) as rows:
            feats = self.vit.forward_features(self.normalize(x))
        logits = self.vit.forward_head(feats)
        attention = self._aggregate(rows) if need_attention else None
        tokens = _cls_and_patches(feats, self.num_prefix_tokens) if need_tokens else None
        return Outputs(logits, attention, tokens)

    @contextmanager
    def _tap(self, active: bool) -> Iterator[list[torch.Tensor]]:
        """Switch the qkv hooks on for one forward; they are inert (return at once) otherwise."""
        if not active:
            yield []
            return
        self._sink.rows = []
        self._sink.full = self.aggregate == "rollout"
        self._sink.first = len(self.vit.blocks) - 1 if self.aggregate == "last" else 0
        try:
            yield self._sink.rows
        finally:
            self._sink.rows = None

    def _aggregate(self, rows: list[torch.Tensor]) -> torch.Tensor:
        if len(rows) != (1 if self.aggregate == "last" else len(self.vit.blocks)):
            raise RuntimeError(
                f"attention tap saw {len(rows)} blocks; the ViT's forward did not run "
                "every block's qkv (gradient checkpointing or a custom block?)"
            )
        if self.aggregate == "rollout":
            cls_row = _rollout_cls_row(rows)
        else:
            cls_row = torch.stack([r[:, 0] for r in rows]).mean(dim=0)
        return _unit_mass(cls_row[:, self.num_prefix_tokens :])


def _check_tappable(vit: nn.Module) -> None:
    name = type(vit).__name__
    if not len(getattr(vit, "blocks", [])):
        raise ConfigError(f"model {name} has no transformer blocks to tap")
    if not getattr(vit, "has_class_token", False):
        raise ConfigError(f"model {name} has no CLS token; the attention tap needs one")
    if getattr(vit, "dynamic_img_size", False):
        raise ConfigError(f"model {name} uses dynamic_img_size; the tap needs a fixed patch grid")
    for i, block in enumerate(vit.blocks):
        if type(getattr(block, "attn", None)) is not Attention:
            raise ConfigError(
                f"model {name} block {i} does not use timm's plain Attention "
                f"({type(getattr(block, 'attn', None)).__name__}); the tap reads its qkv layout"
            )


class ConvStem(PatchEmbed):
    """ViT + ConvStem (Singh et al. 2023, after Xiao et al. 2021): log2(patch_size) 3x3 stride-2
    convolutions, each followed by a channel LayerNorm and GELU, then a 1x1 convolution to the
    embedding width, in place of the one strided patchify convolution. The token grid is the
    patchify stem's (img_size / patch_size per side), so A(x), G and L_align are unchanged. The
    widths double up to embed_dim / 2 (embed_dim 128, patch 8: 16, 32, 64). LayerNorm, not the
    paper's BatchNorm: the model keeps no batch statistics, so a sample's logits never depend on
    the rest of its batch (training batches [x_adv; x] together; attacks run in eval mode)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True, **kwargs):
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            bias=bias,
            **kwargs,
        )
        size = self.patch_size[0]
        if size != self.patch_size[1] or size < 2 or size & (size - 1):
            raise ConfigError(
                f"model.stem=conv needs model.patch_size to be a power of two "
                f">= 2 (one stride-2 conv per halving), got {self.patch_size}"
            )
        halvings = size.bit_length() - 1
        layers: list[nn.Module] = []
        width_in = in_chans
        for i in range(halvings):
            width = max(embed_dim >> (halvings - i), 8)
            layers += [
                nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False),
                LayerNorm2d(width),
                nn.GELU(),
            ]
            width_in = width
        layers.append(nn.Conv2d(width_in, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)


def timm_model_args(cfg: ModelConfig) -> dict:
    """The keyword arguments ``timm.create_model(cfg.name, ...)`` builds the student ViT with (a
    conv stem passes the ``ConvStem`` class, which plain timm cannot name in a config file)."""
    kwargs = {"img_size": cfg.img_size, "patch_size": cfg.patch_size}
    if not cfg.pretrained:
        # timm drops None arguments (keeping an architecture's own LayerScale, e.g. DINOv2's
        # 1e-5); 0 is what its blocks read as "no LayerScale".
        kwargs["init_values"] = cfg.init_values or 0.0
    if cfg.stem == "conv":
        kwargs["embed_layer"] = ConvStem
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    return kwargs


def build_student(model_cfg: ModelConfig, num_classes: int) -> DaatViT:
    """The classifier from config: timm ``model.name`` (from scratch unless ``pretrained``)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    if not timm.is_model(model_cfg.name):
        raise ConfigError(f"config key 'model.name': unknown timm model {model_cfg.name!r}")
    try:
        vit = timm.create_model(
            model_cfg.name,
            pretrained=model_cfg.pretrained,
            num_classes=num_classes,
            **timm_model_args(model_cfg),
        )
    except (OSError, RuntimeError) as e:
        if not model_cfg.pretrained:
            raise
        raise DaatError(
            f"could not load pretrained weights for model.name {model_cfg.name!r} (offline?): {e}"
        ) from e
    return DaatViT(vit, model_cfg.attention_aggregate)


class FeatureProjection(nn.Module):
    """Student width -> teacher width, per token, for L_feat when the widths differ. Trained with
    the student but held outside ``DaatViT`` so evaluation checkpoints never carry it."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


def build_projection(student_dim: int, teacher_dim: int) -> nn.Module:
    """Identity when the widths match (Eq. 3 compares tokens directly), else a FeatureProjection."""
    return (
        nn.Identity() if student_dim == teacher_dim else FeatureProjection(student_dim, teacher_dim)
    )


class Teacher(nn.Module):
    """A frozen DINOv2: [0,1] images -> final-norm CLS + patch tokens on the student's grid."""

    def __init__(self, vit: nn.Module, in_size: int, grid: tuple[int, int], model_id: str):
        super().__init__()
        _norm_buffers(self, vit)
        self.vit = vit.eval().requires_grad_(False)
        self.in_size = in_size
        self.grid = tuple(grid)
        self.model_id = model_id
        self.train(False)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def train(self, mode: bool = True) -> Teacher:
        # Frozen: a parent's .train() must not switch on dropout/drop-path in the teacher.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_size or x.shape[-2] != self.in_size:
            x = F.interpolate(
                x, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False
            )
        tokens = _cls_and_patches(
            self.vit.forward_features((x - self.mean) / self.std), self.vit.num_prefix_tokens
        )
        own = tuple(self.vit.patch_embed.grid_size)
        if own == self.grid:
            return tokens
        b, _, d = tokens.shape
        patches = tokens[:, 1:].transpose(1, 2).reshape(b, d, *own)
        patches = F.interpolate(
            patches.float(), size=self.grid, mode="bilinear", align_corners=False
        )
        patches = patches.to(tokens.dtype).flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :1], patches], dim=1)


def teacher_input_size(img_size: int, patch_size: int) -> int:
    """The student's size, or the nearest multiple of the teacher's patch (a 64 px image with patch
    14 would otherwise silently lose its last 8 pixel rows and columns in the strided conv)."""
    return max(1, round(img_size / patch_size)) * patch_size


def read_teacher_spec(path: Path) -> dict:
    """``{"architecture": ..., "model_args": {...}}`` recorded next to local teacher weights:
    ``config.json`` in a timm-style directory, safetensors metadata, or a checkpoint-dict key."""
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            return {}
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{cfg_file}: invalid JSON: {e}") from e
        return {k: cfg[k] for k in ("architecture", "model_args") if k in cfg}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get(TEACHER_SPEC_KEY)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            text = ckpt.get(TEACHER_SPEC_KEY) if isinstance(ckpt, dict) else None
        return json.loads(text) if isinstance(text, str) else {}
    except Exception as e:  # safetensors/torch/json raise unrelated types for a bad file
        raise DataError(f"teacher weights {path}: cannot read ({type(e).__name__}: {e})") from e


def build_teacher(
    name_or_path: str,
    img_size: int,
    patch_grid: tuple[int, int],
    device: torch.device | str = "cpu",
    arch_overrides: dict | None = None,
) -> Teacher:
    """A frozen DINOv2 from a timm hub name (``vit_base_patch14_dinov2.lvd142m``) or local weights
    (a safetensors / torch file, or a timm-style directory). ``arch_overrides`` (``architecture``
    plus timm kwargs such as ``embed_dim``; ``loss.teacher_arch`` gives the architecture) beat the
    spec stored with local weights, which beats the ViT-B/14 default. The positional embedding is
    resampled to the input size by timm. A hub name that is not in the Hugging Face cache fails at
    once when HF_HUB_OFFLINE is set or the hub cannot be reached."""
    overrides = dict(arch_overrides or {})
    path = Path(name_or_path).expanduser()
    if path.exists():
        spec = read_teacher_spec(path)
        named = overrides.pop("architecture", None)
        arch = named or spec.get("architecture") or DEFAULT_TEACHER_ARCH
        recorded = spec.get("model_args", {}) if arch == spec.get("architecture", arch) else {}
        kwargs = {**recorded, **overrides}
        overlay = {"file": str(path)} | ({"source": "local-dir"} if path.is_dir() else {})
    elif path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        raise DataError(f"teacher weights not found: {name_or_path} (loss.teacher)")
    else:
        arch, kwargs, overlay = overrides.pop("architecture", None) or name_or_path, overrides, None
    if not (timm.is_model(arch) or arch.startswith("hf-hub:")):
        raise DataError(
            f"teacher {name_or_path!r} is neither an existing weights file/directory "
            f"nor a timm model name ({arch!r}) (loss.teacher, loss.teacher_arch)"
        )
    if overlay is None:
        _check_hub_weights(name_or_path, arch)
    try:
        vit = _create_teacher_vit(arch, img_size, overlay, kwargs)
    except Exception as e:  # hub, network and file errors come in many types; all mean "no teacher"
        raise DaatError(_teacher_problem(name_or_path, arch, e)) from e
    return Teacher(vit, vit.patch_embed.img_size[0], patch_grid, model_id=str(name_or_path)).to(
        device
    )


_OFFLINE_FIX = (
    "Offline, set loss.teacher to a local weights file or directory (loss.teacher_arch "
    "names its timm architecture when the file does not), or 'loss.teacher: "
    "run:standard' (a standard run on the same shards as the teacher), or "
    "loss.gamma0=0 to train without L_feat"
)


def _hub_offline() -> bool:
    import os

    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _check_hub_weights(name: str, arch: str) -> None:
    """Refuse at once a hub teacher that is not cached when HF_HUB_OFFLINE is set or the hub
    cannot be reached (the hub client would otherwise retry for about a minute)."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    from daat.depth import HUB_TIMEOUT_S

    pretrained = get_pretrained_cfg(name) or get_pretrained_cfg(arch)
    hub_id = getattr(pretrained, "hf_hub_id", None) or (
        arch[len("hf-hub:") :] if arch.startswith("hf-hub:") else None
    )
    if not hub_id:
        return
    hub_id = hub_id.split("@")[0]
    names = [getattr(pretrained, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
    if any(isinstance(try_to_load_from_cache(hub_id, n), str) for n in names if n):
        return
    if _hub_offline():
        raise DaatError(
            f"teacher {name!r} (loss.teacher) is not in the Hugging Face cache and "
            f"HF_HUB_OFFLINE is set. {_OFFLINE_FIX}"
        )
    try:
        HfApi().model_info(hub_id, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 -- any failure here means the weights cannot come
        raise DaatError(
            f"teacher {name!r} (loss.teacher) is not in the Hugging Face cache and "
            f"the hub is unreachable ({type(e).__name__}: {_first_line(e)}); without "
            f"a network set HF_HUB_OFFLINE=1 to fail at once. {_OFFLINE_FIX}"
        ) from e


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(".:") if lines else type(error).__name__


def _teacher_problem(name: str, arch: str, error: Exception) -> str:
    """One line for a teacher that would not load; weights of another architecture are named."""
    import re

    text = str(error)
    shapes = re.findall(r"size mismatch for ([\w.]+)", text)
    missing = re.search(r"Missing key\(s\) in state_dict: ([^\n]*)", text)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: ([^\n]*)", text)
    counts = {
        "of another shape": len(shapes),
        "missing": len(re.findall(r'"[^"]+"', missing.group(1))) if missing else 0,
        "unexpected": len(re.findall(r'"[^"]+"', unexpected.group(1))) if unexpected else 0,
    }
    if any(counts.values()):
        example = shapes[0] if shapes else re.findall(r'"([^"]+)"', (missing or unexpected)[1])[0]
        found = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        return (
            f"teacher weights {name!r} do not fit the architecture {arch} (tensors: {found}; "
            f"e.g. {example}); name the weights' timm architecture with loss.teacher_arch "
            f"(e.g. vit_small_patch14_dinov2)"
        )
    return f"could not load teacher {name!r} ({arch}): {type(error).__name__}: {_first_line(error)}"


def _create_teacher_vit(arch: str, img_size: int, overlay: dict | None, kwargs: dict) -> nn.Module:
    with torch.device("meta"):  # only to read the patch size: no weights are allocated or loaded
        patch = timm.create_model(
            arch, pretrained=False, num_classes=0, **kwargs
        ).patch_embed.patch_size[0]
    return timm.create_model(
        arch,
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=overlay,
        img_size=teacher_input_size(img_size, patch),
        **kwargs,
    )


def save_random_teacher(
    path: str | Path,
    embed_dim: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    patch_size: int = 8,
    img_size: int = 64,
    architecture: str = DEFAULT_TEACHER_ARCH,
    seed: int = 0,
) -> Path:
    """A tiny random DINOv2-like teacher for tests, benchmarks and offline demos. ``*.safetensors``
    -> one file with the architecture in its metadata; ``*.pt``/``*.pth`` -> a torch checkpoint
    dict; anything else -> a timm-style directory (``model.safetensors`` + ``config.json``)."""
    path = Path(path)
    model_args = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "patch_size": patch_size,
    }
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(seed)
        vit = timm.create_model(
            architecture, pretrained=False, num_classes=0, img_size=img_size, **model_args
        )
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    spec = json.dumps({"architecture": architecture, "model_args": model_args})
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={TEACHER_SPEC_KEY: spec})
    elif path.suffix in (".pt", ".pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state, TEACHER_SPEC_KEY: spec}, path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(
            json.dumps(json.loads(spec) | {"num_classes": 0}, indent=2)
        )
    return path
