"""A depth model's own preprocessing, re-implemented on float tensors on the model's device,
batched -- the HF processor is never called per image -- and the way back to each input's size.

The settings are read from the model's image-processor config (size, keep_aspect_ratio,
ensure_multiple_of, resample, rescale, mean/std, pad/size_divisor) into a ``Preprocessing``.
It follows transformers' torchvision DPT processor fed uint8 images (PIL images, the way
these models are used and were validated): output size rounded exactly like
``get_resize_output_image_size``, anti-aliased resize with ``align_corners=False`` done width
pass first with a clamp to [0,1] between and after the passes (as the uint8 kernels and PIL
do), rescale, normalise, centre zero-padding after normalisation. Float pixels are not rounded
to 1/255 steps, so pixel_values differ from the processor's by about one grey level at most.

``restore_size`` resizes the model's output back to each input's H x W with bicubic
interpolation: MiDaS/DPT and transformers' own ``post_process_depth_estimation`` use it (sharper
depth edges than bilinear, and E is an edge detector); anti-aliased only when shrinking, since the
model output (e.g. 384 px) is often larger than the stored image (64 px) and plain bicubic
downsampling would alias depth edges into spurious Sobel responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from daat.depth_ref import DepthModelError

OUTPUT_MODE = "bicubic"
# PIL resampling codes stored in preprocessor_config.json -> F.interpolate modes (as
# transformers' pil_torch_interpolation_mapping + torchvision's resize do it).
_RESAMPLE_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_TORCH_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """The image-processor settings that matter, in tensor terms."""

    resize: tuple[int, int] | None  # target (h, w) before aspect/multiple rules; None = native
    keep_aspect_ratio: bool
    multiple: int  # ensure_multiple_of
    mode: str  # F.interpolate mode
    scale: float  # maps [0,1] input to the processor's post-rescale range (1.0 or 255.0 ...)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_multiple: int | None  # centre zero-pad (after normalising) to a multiple of this

    @classmethod
    def from_processor(cls, proc: Any, where: str) -> Preprocessing:
        # Other depth processors (GLPN, ZoeDepth, DepthPro...) size and pad differently.
        if not type(proc).__name__.startswith("DPTImageProcessor"):
            raise DepthModelError(
                f"{where}: image processor {type(proc).__name__} is not "
                "supported (DPT, DPT-Hybrid, DINOv2-DPT and Depth Anything use "
                "DPTImageProcessor)"
            )
        resize = None
        if getattr(proc, "do_resize", False):
            height, width = _size_field(proc.size, "height"), _size_field(proc.size, "width")
            if not height or not width:
                raise DepthModelError(
                    f"{where}: preprocessor size {proc.size!r} has no height and width"
                )
            resize = (int(height), int(width))
        scale = 255.0 * float(proc.rescale_factor) if getattr(proc, "do_rescale", False) else 255.0
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if getattr(proc, "do_normalize", False):
            mean, std = (
                _triple(proc.image_mean, "image_mean", where),
                _triple(proc.image_std, "image_std", where),
            )
        pad = None
        if getattr(proc, "do_pad", False):
            pad = getattr(proc, "size_divisor", None)
            if not isinstance(pad, int) or pad <= 0:
                raise DepthModelError(f"{where}: do_pad is set but size_divisor is {pad!r}")
        return cls(
            resize=resize,
            keep_aspect_ratio=bool(getattr(proc, "keep_aspect_ratio", False)),
            multiple=int(getattr(proc, "ensure_multiple_of", None) or 1),
            mode=_interp_mode(getattr(proc, "resample", 3), where),
            scale=scale,
            mean=mean,
            std=std,
            pad_multiple=pad,
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """transformers' ``get_resize_output_image_size`` (DPT), or the input size unresized."""
        if self.resize is None:
            return height, width
        scale_h, scale_w = self.resize[0] / height, self.resize[1] / width
        if self.keep_aspect_ratio:
            # scale as little as possible (same tie-break as transformers)
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return (
            _constrain_to_multiple(scale_h * height, self.multiple),
            _constrain_to_multiple(scale_w * width, self.multiple),
        )

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) centre padding of a resized image."""
        if self.pad_multiple is None:
            return 0, 0, 0, 0
        top, bottom = _centre_pad(height, self.pad_multiple)
        left, right = _centre_pad(width, self.pad_multiple)
        return top, bottom, left, right


def _size_field(size: Any, key: str) -> Any:
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _triple(values: Any, key: str, where: str) -> tuple[float, float, float]:
    seq = [values] * 3 if isinstance(values, (int, float)) else list(values)
    if len(seq) != 3:
        raise DepthModelError(f"{where}: {key} must have 3 values, got {values!r}")
    return float(seq[0]), float(seq[1]), float(seq[2])


def _interp_mode(resample: Any, where: str) -> str:
    value = getattr(resample, "value", resample)  # int, PIL enum or torchvision InterpolationMode
    if isinstance(value, str) and value in _TORCH_MODES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in _RESAMPLE_MODES:
        return _RESAMPLE_MODES[value]
    raise DepthModelError(
        f"{where}: resample={resample!r} is not supported (nearest, bilinear and bicubic are)"
    )


def _constrain_to_multiple(value: float, multiple: int) -> int:
    # transformers' constrain_to_multiple_of with min_val=0 and no max_val; the final max()
    # only differs where transformers would produce a zero-sized image and fail.
    out = round(value / multiple) * multiple
    if out < 0:
        out = math.ceil(value / multiple) * multiple
    return max(int(out), multiple)


def _centre_pad(size: int, multiple: int) -> tuple[int, int]:
    total = math.ceil(size / multiple) * multiple - size
    return total // 2, total - total // 2


def resize_image(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize [B,3,H,W] images in [0,1] like the processor's uint8 path (torchvision/PIL):
    no-op at the same size, ``align_corners=False``, antialias, result clamped to [0,1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode.startswith("nearest"):
        return F.interpolate(x, size=size, mode=mode)
    if mode == "bicubic" and x.shape[-2] != size[0] and x.shape[-1] != size[1]:
        # PIL and torchvision's uint8 kernel resample the width first and clamp to the pixel
        # range before the height pass; with bicubic overshoot that clamp changes the result
        # by up to ~20 grey levels on textured images, so do the same.
        x = _interp(x, (x.shape[-2], size[1]), mode).clamp(0.0, 1.0)
    return _interp(x, size, mode).clamp(0.0, 1.0)


def _interp(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def preprocess(images: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """[B,3,H,W] float in [0,1] -> the model's pixel_values (same for every image of the batch)."""
    x = images.float()
    x = resize_image(x, spec.resized_size(*x.shape[-2:]), spec.mode)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    x = (x * spec.scale - mean) / std
    top, bottom, left, right = spec.padding(*x.shape[-2:])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x


def restore_size(
    raw: torch.Tensor, spec: Preprocessing, input_size: tuple[int, int]
) -> torch.Tensor:
    """Model output [B,h,w] -> [B,H,W] at the input's size: undo centre padding (on the output
    resized to the padded input), then resize bicubic (anti-aliased when shrinking)."""
    x = raw.float().unsqueeze(1)
    resized = spec.resized_size(*input_size)
    top, bottom, left, right = spec.padding(*resized)
    if top or bottom or left or right:
        padded = (resized[0] + top + bottom, resized[1] + left + right)
        x = _resize_output(x, padded)[..., top : top + resized[0], left : left + resized[1]]
    return _resize_output(x, input_size).squeeze(1)


def _resize_output(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode=OUTPUT_MODE, align_corners=False, antialias=shrinking)
