"""The student ViT with its attention tap A(x), and the feature projection of L_feat (the frozen
DINOv2 teacher is ``daat.teacher_model``, the conv patch stem ``daat.stems``).

Images enter every model in [0,1]; each model's first layer is its own mean/std normalisation.

The contract, as in timm: ``DaatViT.forward(x)`` returns the logits and nothing else, so attacks,
evaluation and exports treat the student as any classifier. ``DaatViT.forward_tapped(x,
need_attention, need_tokens)`` is the one named method that also returns A(x) and/or the
final-norm tokens (an ``Outputs``); training reaches it through ``train.step.TrainForward``, the
module DDP wraps.

The tap (DESIGN "A(x)"): for every block, the CLS query's softmax attention over ALL keys (CLS,
register tokens, patches) exactly as the block computes it, restricted to the patch keys, averaged
over heads, aggregated over blocks (``mean`` | ``last`` | ``rollout``) and renormalised to unit mass
on the patch grid. The logits keep timm's fused ``scaled_dot_product_attention``; the tap recomputes
only the CLS row from each block's qkv projection output (captured by a forward hook, so no extra
matmul), which costs O(N) per head instead of the O(N^2) map. The hooks are registered once and
are inert (an attribute test) except inside ``forward_tapped(..., need_attention=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import timm
import torch
from timm.layers import Attention
from torch import nn

from daat.config import ConfigError, ModelConfig
from daat.errors import DaatError
from daat.saliency import unit_mass_of_rows
from daat.stems import ConvStem

AGGREGATES = ("mean", "last", "rollout")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Outputs(NamedTuple):
    """What ``DaatViT.forward_tapped`` returns; the fields not asked for are None."""

    logits: torch.Tensor
    attention: torch.Tensor | None  # [B, h*w], unit mass per sample
    tokens: torch.Tensor | None  # [B, 1+N, D]: final-norm CLS + patch tokens (registers dropped)


def norm_buffers(module: nn.Module, vit: nn.Module) -> None:
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", _IMAGENET_MEAN), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", _IMAGENET_STD), dtype=torch.float32).view(1, -1, 1, 1)
    module.register_buffer("mean", mean)
    module.register_buffer("std", std)


def cls_and_patches(tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
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
        norm_buffers(self, vit)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] of images [B, 3, H, W] in [0,1]; never the tap."""
        return self.vit(self.normalize(x))

    def forward_tapped(
        self, x: torch.Tensor, need_attention: bool = False, need_tokens: bool = False
    ) -> Outputs:
        """One forward pass giving the logits and, as asked, A(x) [B, h*w] (unit mass per
        sample) and the final-norm CLS + patch tokens [B, 1+N, D] (registers dropped)."""
        with self._tap(need_attention) as rows:
            feats = self.vit.forward_features(self.normalize(x))
        logits = self.vit.forward_head(feats)
        attention = self._aggregate(rows) if need_attention else None
        tokens = cls_and_patches(feats, self.num_prefix_tokens) if need_tokens else None
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
        return unit_mass_of_rows(cls_row[:, self.num_prefix_tokens :])


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
