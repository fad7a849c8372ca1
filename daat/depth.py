"""Frozen monocular depth models g(x) through ``transformers``, run batched on tensors.

``load_depth_model(name, device)`` loads DPT, DPT-Hybrid, DINOv2-DPT or Depth Anything (V1/V2)
from a hub id or a local ``save_pretrained`` directory (``trust_remote_code`` is never set;
safetensors weights are preferred, ``.bin`` falls back to ``torch.load(weights_only=True)``).
The model's own preprocessing runs batched on tensors (``daat/depth_preprocessing.py``).

Output: the model's ``predicted_depth`` (relative inverse depth for MiDaS-DPT and Depth Anything;
see ``DepthModel.output_kind``) resized back to each input's H x W (bicubic, anti-aliased when
shrinking: ``restore_size``), float32.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from daat.depth_preprocessing import Preprocessing, preprocess, restore_size
from daat.depth_ref import ORACLE, DepthModelError, dir_hash, is_oracle, resolve  # noqa: F401
from daat.dist import cuda_paths

HUB_TIMEOUT_S = 10.0  # the one reachability check before downloading from the hub
_RANGE_SLACK = 1e-3  # tolerated rounding outside [0, 1] in input images
# Some CUDA kernels index with 32-bit integers: the channels_last bilinear upsample in the DPT head
# refused [128, 128, 384, 384] (2.4e9 elements) on an H200. The supported heads' widest map at the
# input resolution has 128 channels; budgeting 256 per pixel keeps every chunk below INT_MAX.
_MAX_ELEMENTS = 2**31 - 1
_FULL_RES_CHANNELS = 256


class OracleDepthError(DepthModelError):
    """'oracle' names the synthetic data's ground-truth depth, not a network."""


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
