"""Tiny random depth models saved with ``save_pretrained``, for tests, benchmarks and offline demos.

Each writes a directory that ``daat.depth.load_depth_model`` (and transformers' Auto classes)
load exactly like a hub checkpoint: ``config.json`` + ``model.safetensors`` +
``preprocessor_config.json``. The architectures are the real transformers classes with tiny
widths; the processor configs mirror the real checkpoints' settings except for the input size:

| builder | mirrors | processor |
| --- | --- | --- |
| ``save_tiny_dpt`` | Intel/dpt-large (ViT-DPT) | square, no aspect kept, bicubic, mean/std 0.5 |
| ``save_tiny_dpt(hybrid=True)`` | Intel/dpt-hybrid-midas (BiT + ViT) | as above (384 px on hub) |
| ``save_tiny_dpt_dinov2`` | facebook/dpt-dinov2-*-{nyu,kitti} | 0-255 mean/std, centre pad 14 |
| | | (no resize, no rescale) |
| ``save_tiny_depth_anything`` | depth-anything/Depth-Anything-V2-*-hf | keep aspect, x14, |
| | | bicubic, ImageNet mean/std |

The weights are re-drawn with fan-in scaling (and a positive bias on the last head conv)
because transformers' default init (std 0.02) makes these tiny nets output ~1e-8 everywhere,
which would make every consistency test pass trivially.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as stored in preprocessor_config.json
_DPT_PATCH = 16
_DINOV2_PATCH = 14
_TINY_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
_NECK = dict(neck_hidden_sizes=[16, 16, 32, 32])


def _wake(model: nn.Module, seed: int) -> None:
    """Fan-in-scaled weights so activations stay O(1) through the tiny net; see module doc."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in)
                )
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.ConvTranspose2d):
                fan_in = module.weight.shape[0] * module.weight[0, 0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in)
                )
                if module.bias is not None:
                    module.bias.zero_()
        # The heads end in ReLU: a positive bias keeps most output pixels alive (non-zero).
        last = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)][-1]
        last.bias.fill_(1.0)


def _save(model: nn.Module, processor, path: str | Path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def _check_size(image_size: int, multiple: int, name: str) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"{name}: image_size must be a positive int, got {image_size!r}")
    if image_size % multiple:
        raise ValueError(f"{name}: image_size {image_size} must be a multiple of {multiple}")


def _square_processor(
    image_size: int,
    keep_aspect_ratio: bool,
    multiple: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
):
    from transformers import DPTImageProcessor

    return DPTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        keep_aspect_ratio=keep_aspect_ratio,
        ensure_multiple_of=multiple,
        resample=_BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_pad=False,
    )


def save_tiny_dpt(
    path: str | Path, hybrid: bool = False, image_size: int = 64, seed: int = 0
) -> Path:
    """A tiny DPT (ViT backbone, like Intel/dpt-large) or, with ``hybrid``, a tiny DPT-Hybrid
    (BiT ResNet stem + ViT, like Intel/dpt-hybrid-midas). The processor resizes every image to
    ``image_size`` x ``image_size`` (the hub models use 384; DPT's ViT neck needs a square grid
    and the hybrid embedding refuses any size but ``config.image_size``)."""
    from transformers import DPTConfig, DPTForDepthEstimation

    _check_size(image_size, _DPT_PATCH, "save_tiny_dpt")
    common = dict(
        _TINY_VIT,
        **_NECK,
        image_size=image_size,
        patch_size=_DPT_PATCH,
        backbone_out_indices=[0, 1, 2, 3],
        fusion_hidden_size=32,
    )
    if hybrid:
        # The BiT stem + 3 stages have stride 16, so the ViT sees an image_size/16 grid.
        grid = image_size // _DPT_PATCH
        bit = dict(
            global_padding="same",
            layer_type="bottleneck",
            depths=[1, 1, 1],
            out_features=["stage1", "stage2", "stage3"],
            embedding_dynamic_padding=True,
            hidden_sizes=[16, 16, 32],
            embedding_size=16,
            num_groups=2,
        )
        config = DPTConfig(
            **common,
            is_hybrid=True,
            backbone_config=bit,
            backbone=None,
            backbone_featmap_shape=[1, 32, grid, grid],
        )
    else:
        config = DPTConfig(**common)
    model = DPTForDepthEstimation(config)
    _wake(model, seed)
    processor = _square_processor(image_size, False, 1, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return _save(model, processor, path)


def _tiny_dinov2(image_size: int, **extra):
    from transformers import Dinov2Config

    return Dinov2Config(
        **_TINY_VIT,
        patch_size=_DINOV2_PATCH,
        image_size=image_size,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
        **extra,
    )


def save_tiny_dpt_dinov2(path: str | Path, seed: int = 0) -> Path:
    """A tiny DPT head on a tiny DINOv2 backbone (like facebook/dpt-dinov2-small-nyu).

    The processor matches the hub checkpoints: no resize (native resolution), no rescale,
    mean/std in 0-255 units, centre zero-padding to a multiple of 14. One difference from the
    real config: ``add_projection`` is off because transformers hard-codes that projection at
    256 channels (~40 MB with the matching fusion width). The real heads predict metric depth.
    """
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    backbone = _tiny_dinov2(5 * _DINOV2_PATCH, apply_layernorm=False)
    config = DPTConfig(
        backbone_config=backbone,
        **_NECK,
        fusion_hidden_size=32,
        use_bias_in_fusion_residual=False,
        add_projection=False,
    )
    model = DPTForDepthEstimation(config)
    _wake(model, seed)
    processor = DPTImageProcessor(
        do_resize=False,
        do_rescale=False,
        do_normalize=True,
        image_mean=[123.675, 116.28, 103.53],
        image_std=[58.395, 57.12, 57.375],
        do_pad=True,
        size_divisor=_DINOV2_PATCH,
    )
    return _save(model, processor, path)


def save_tiny_depth_anything(path: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """A tiny Depth Anything (V2 layout: DINOv2 backbone + DPT-style head, relative inverse
    depth). Processor like depth-anything/Depth-Anything-V2-*-hf (518 on the hub):
    ``image_size`` target, keep aspect ratio, sides rounded to a multiple of 14, bicubic,
    ImageNet mean/std. ``image_size`` need not be a multiple of 14 (64 -> 70 for a square)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    _check_size(image_size, 1, "save_tiny_depth_anything")
    backbone = _tiny_dinov2(max(1, round(image_size / _DINOV2_PATCH)) * _DINOV2_PATCH)
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=_DINOV2_PATCH,
        reassemble_hidden_size=_TINY_VIT["hidden_size"],
        **_NECK,
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    model = DepthAnythingForDepthEstimation(config)
    _wake(model, seed)
    processor = _square_processor(image_size, True, _DINOV2_PATCH, IMAGENET_MEAN, IMAGENET_STD)
    return _save(model, processor, path)
