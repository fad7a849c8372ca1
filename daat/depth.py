"""Frozen monocular depth models g(x) through ``transformers``, run batched on tensors.

``load_depth_model(name, device)`` loads DPT, DPT-Hybrid, DINOv2-DPT or Depth Anything (V1/V2)
from a hub id or a local ``save_pretrained`` directory (``trust_remote_code`` is never set;
safetensors weights are preferred, ``.bin`` falls back to ``torch.load(weights_only=True)``).

The model's own preprocessing is read from its image-processor config (size, keep_aspect_ratio,
ensure_multiple_of, resample, rescale, mean/std, pad/size_divisor) and re-implemented on
float tensors on the model's device, batched -- the HF processor is never called per image.
It follows transformers' torchvision DPT processor fed uint8 images (PIL images, the way
these models are used and were validated): output size rounded exactly like
``get_resize_output_image_size``, anti-aliased resize with ``align_corners=False`` done width
pass first with a clamp to [0,1] between and after the passes (as the uint8 kernels and PIL
do), rescale, normalise, centre zero-padding after normalisation. Float pixels are not rounded
to 1/255 steps, so pixel_values differ from the processor's by about one grey level at most.

Output: the model's ``predicted_depth`` (relative inverse depth for MiDaS-DPT and Depth Anything;
see ``DepthModel.output_kind``) resized back to each input's H x W with bicubic interpolation,
float32. Bicubic because MiDaS/DPT and transformers' own ``post_process_depth_estimation`` use
it (sharper depth edges than bilinear, and E is an edge detector); anti-aliased only when
shrinking, since the model output (e.g. 384 px) is often larger than the stored image (64 px)
and plain bicubic downsampling would alias depth edges into spurious Sobel responses.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from daat.depth_ref import ORACLE, DepthModelError, dir_hash, is_oracle, resolve  # noqa: F401
from daat.dist import cuda_paths

OUTPUT_MODE = "bicubic"
# PIL resampling codes stored in preprocessor_config.json -> F.interpolate modes (as
# transformers' pil_torch_interpolation_mapping + torchvision's resize do it).
_RESAMPLE_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_TORCH_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")
HUB_TIMEOUT_S = 10.0  # the one reachability check before downloading from the hub
_RANGE_SLACK = 1e-3  # tolerated rounding outside [0, 1] in input images
# Some CUDA kernels index with 32-bit integers: the channels_last bilinear upsample in the DPT head
# refused [128, 128, 384, 384] (2.4e9 elements) on an H200. The supported heads' widest map at the
# input resolution has 128 channels; budgeting 256 per pixel keeps every chunk below INT_MAX.
_MAX_ELEMENTS = 2**31 - 1
_FULL_RES_CHANNELS = 256


class OracleDepthError(DepthModelError):
    """'oracle' names the synthetic data's ground-truth depth, not a network."""


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


class DepthModel:
    """A frozen depth network plus its batched tensor preprocessing.

    ``model(images)``: [B,3,H,W] float in [0,1] -> [B,H,W] float32, or a list of [3,Hi,Wi] ->
    list of [Hi,Wi] (same-shaped model inputs run as one batch). Runs under ``torch.no_grad``
    (not ``inference_mode``: its output is used as a loss target next to tensors that need
    grad, which inference tensors forbid).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: Preprocessing,
        model_id: str,
        device: torch.device,
        amp: bool = True,
        channels_last: bool = True,
        compile: bool = False,
    ):
        self.model_id = model_id
        self.spec = spec
        self.device = torch.device(device)
        self.input_size = spec.resize  # nominal (h, w) of the processor; None = native size
        self.output_kind = _output_kind(model.config)
        self.amp = amp and cuda_paths(self.device)
        self.channels_last = channels_last and cuda_paths(self.device)
        model.eval().requires_grad_(False).to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self._net = torch.compile(model) if compile else model

    def __repr__(self) -> str:
        return (
            f"DepthModel({self.model_id!r}, input_size={self.input_size}, "
            f"device={self.device}, amp={self.amp}, output={self.output_kind})"
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> pixel_values on the model's device (as the HF processor makes)."""
        return self._prepare(_check_batch(images))

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return preprocess(batch.to(self.device, non_blocking=True), self.spec)

    def forward_raw(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The network on prepared pixel_values -> predicted_depth [B,h,w] float32, in chunks
        small enough for 32-bit-indexed kernels (``max_batch``)."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        step = self.max_batch(*pixel_values.shape[-2:])
        with torch.no_grad(), autocast:
            parts = [
                self._net(pixel_values=pixel_values[i : i + step]).predicted_depth.float()
                for i in range(0, pixel_values.shape[0], step)
            ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @staticmethod
    def max_batch(height: int, width: int) -> int:
        """Most images of this input size one network call may take (56 at 384x384)."""
        return max(1, _MAX_ELEMENTS // (_FULL_RES_CHANNELS * height * width))

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor]):
        if isinstance(images, torch.Tensor):
            batch = _check_batch(images)
            if batch.shape[0] == 0:
                return batch.new_zeros((0, *batch.shape[-2:]), dtype=torch.float32)
            with torch.no_grad():
                raw = self.forward_raw(self._prepare(batch))
                return restore_size(raw, self.spec, tuple(batch.shape[-2:]))
        if isinstance(images, (list, tuple)):
            return self._call_list(list(images))
        raise TypeError(
            f"images must be a [B,3,H,W] tensor or a list of [3,H,W] tensors, "
            f"got {type(images).__name__}"
        )

    def _call_list(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                raise ValueError(
                    f"images[{i}] must be a [3,H,W] tensor, got "
                    f"{getattr(image, 'shape', type(image).__name__)}"
                )
            by_shape[tuple(image.shape[-2:])].append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        with torch.no_grad():
            prepared = {
                shape: self.preprocess(torch.stack([images[i] for i in idx]))
                for shape, idx in by_shape.items()
            }
            by_model_shape: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
            for shape, pixels in prepared.items():
                by_model_shape[tuple(pixels.shape[-2:])].append(shape)
            for shapes in by_model_shape.values():
                raw = self.forward_raw(torch.cat([prepared[s] for s in shapes]))
                start = 0
                for shape in shapes:
                    idx = by_shape[shape]
                    depth = restore_size(raw[start : start + len(idx)], self.spec, shape)
                    start += len(idx)
                    for j, i in enumerate(idx):
                        out[i] = depth[j]
        return out  # type: ignore[return-value]


def _check_batch(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B,3,H,W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be float in [0,1], got {images.dtype} (divide uint8 images by 255)"
        )
    if images.numel():  # one device sync per call; cheap next to the network
        low, high = torch.stack(torch.aminmax(images.detach())).tolist()
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"images must be in [0,1], got values in [{low:.4g}, {high:.4g}]")
    return images.detach()


def _output_kind(config: Any) -> str:
    # Heuristic from the config: MiDaS-style DPT (ViT, hybrid, BEiT, Swin) and relative Depth
    # Anything predict relative inverse depth; the DINOv2-DPT NYU/KITTI heads and metric
    # Depth Anything predict metric depth.
    if getattr(config, "depth_estimation_type", "relative") == "metric":
        return "metric_depth"
    backbone = getattr(config, "backbone_config", None)
    if config.model_type == "dpt" and getattr(backbone, "model_type", None) == "dinov2":
        return "metric_depth"
    return "relative_inverse_depth"


def load_depth_model(
    name: str,
    device: torch.device | str,
    amp: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> DepthModel:
    """Load a frozen depth model from a hub id or a local ``save_pretrained`` directory.

    A hub id already in the Hugging Face cache loads from the cache without network access
    (reproducible; refresh the cache to update); otherwise it is downloaded at the commit the
    hub reports, which ``model_id`` records (local directories get a hash of their files).
    ``amp`` (bf16 autocast) and ``channels_last`` apply on CUDA only. Outputs live on ``device``.
    """
    if not isinstance(name, str) or not name.strip():
        raise DepthModelError(f"depth model name must be a non-empty string, got {name!r}")
    if is_oracle(name):
        raise OracleDepthError(
            "depth model 'oracle' is not a network: it is the synthetic dataset's exact depth, "
            "which the synthetic card supplies with the data (the preprocess pipeline handles "
            "it); pass a hub id or a local directory to load a depth network"
        )
    source, local = resolve(name)
    where = f"depth model '{name}'"
    hub_kwargs, commit = ({}, None) if local else _hub_access(name)
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    try:
        processor = AutoImageProcessor.from_pretrained(
            source, trust_remote_code=False, **hub_kwargs
        )
        # use_safetensors=None: model.safetensors when present, else .bin via weights_only load.
        model = AutoModelForDepthEstimation.from_pretrained(
            source,
            trust_remote_code=False,
            use_safetensors=None,
            weights_only=True,
            dtype=torch.float32,
            **hub_kwargs,
        )
    except (OSError, ValueError, KeyError) as e:
        hint = (
            ""
            if local
            else " If this machine is offline, pass a local directory saved "
            "with save_pretrained instead."
        )
        raise DepthModelError(f"could not load {where}: {e}{hint}") from e
    spec = Preprocessing.from_processor(processor, where)
    version = dir_hash(Path(source)) if local else (commit or "")[:12]
    model_id = f"{name}@{version}" if version else name
    return DepthModel(
        model,
        spec,
        model_id,
        torch.device(device),
        amp=amp,
        channels_last=channels_last,
        compile=compile,
    )


def _hub_access(name: str) -> tuple[dict[str, Any], str | None]:
    """How to reach a hub id without transformers' retry loop (~100 s of back-off when the
    network is down): a cached repo loads from the cache only; otherwise one quick request
    checks that the repo exists and the hub is reachable. Also returns the commit, if known."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as e:
        raise DepthModelError(
            f"depth model '{name}' is neither a local directory nor a valid hub id: {e}"
        ) from e
    if isinstance(cached, str):
        return {"local_files_only": True}, Path(cached).parent.name  # .../snapshots/<commit>/
    if constants.HF_HUB_OFFLINE:
        raise DepthModelError(
            f"depth model '{name}' is not a local directory and not in the Hugging Face cache "
            "(HF_HUB_OFFLINE is set); pass a local directory saved with save_pretrained"
        )
    try:
        info = HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 -- any failure here is re-raised as a named error
        raise DepthModelError(
            f"depth model '{name}' is not a local directory, not in the Hugging Face cache, and "
            f"could not be found on the hub ({type(e).__name__}: {e}). Offline? Pass a local "
            "directory saved with save_pretrained."
        ) from e
    return {"revision": info.sha} if info.sha else {}, info.sha
