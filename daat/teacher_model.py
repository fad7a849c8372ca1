"""The frozen DINOv2 teacher of L_feat: building it from a timm hub name or local weights,
refusing at once what cannot load offline, and a tiny random one for tests and benchmarks.

Images enter in [0,1]; the teacher normalises with its own mean/std, resizes to a multiple of its
patch and returns final-norm CLS + patch tokens resampled onto the student's patch grid. Which
teacher a run uses (a name, a file, or ``run:standard``) is decided in ``daat.train.teacher``.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from daat.errors import DaatError, DataError
from daat.models import cls_and_patches, norm_buffers

DEFAULT_TEACHER_ARCH = "vit_base_patch14_dinov2"
TEACHER_SPEC_KEY = (
    "daat_teacher"  # safetensors metadata / checkpoint key holding the teacher's arch
)


class Teacher(nn.Module):
    """A frozen DINOv2: [0,1] images -> final-norm CLS + patch tokens on the student's grid."""

    def __init__(self, vit: nn.Module, in_size: int, grid: tuple[int, int], model_id: str):
        super().__init__()
        norm_buffers(self, vit)
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
        tokens = cls_and_patches(
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
