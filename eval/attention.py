"""Attention under attack: comparison metrics between maps, A(x) capture, and Grad-CAM for a ViT.

Every map here is per sample over the ViT patch grid, flattened row-major to [B, h*w]. A(x) is the
student's own attention tap (unit mass, see daat.models); G(x) is the depth saliency (Eq. 1).

Metrics (all per sample, averaged over val by the caller):
- ``cosine(a, b)``: cos of the two flattened maps; 0 when either map is all zero (no direction).
- ``js_divergence(p, q)``: Jensen–Shannon divergence in nats (natural log), with 0·log 0 = 0, so it
  lies in [0, ln 2]; inputs are renormalised to unit mass first.
- ``top_mass(a, g, frac)``: the share of a's mass on the ceil(frac·N) patches where g is largest
  (ties broken by torch.topk); a uniform a scores ceil(frac·N)/N, reported as the chance baseline.

Grad-CAM for a ViT (Selvaraju et al. 2017, adapted as in pytorch-grad-cam's ViT recipe): the
"feature map" is the patch tokens ENTERING the last transformer block, T [B, N, D]. We take
those and not the last block's output because a CLS-token classifier never reads the last
block's patch outputs: their gradient is exactly zero. Channel weights are the gradient of the
chosen class logit averaged over patches, α_d = mean_i ∂y_c/∂T_id; the map is
ReLU(Σ_d α_d T_id), then divided by its maximum so clean and adversarial maps share a [0, 1]
scale (an all-zero map stays zero).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from daat.errors import DaatError
from daat.saliency import unit_mass_of_rows

JS_MAX = math.log(2.0)
TOP_MASS_FRAC = 0.2  # the paper's "top-20 % patches of G": the share ``top_mass`` reads


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity of two [B, ...] maps; 0 where either map has zero norm."""
    a, b = _flat(a), _flat(b)
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(dim=1)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(a.dtype).tiny), 0.0)


def _unit(p: torch.Tensor) -> torch.Tensor:
    if (p < 0).any():
        raise ValueError("js_divergence needs non-negative maps")
    return unit_mass_of_rows(p)


def _kl_terms(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # 0·log(0/m) = 0; m > 0 wherever p > 0 because m = (p + q) / 2.
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    safe_m = torch.where(p > 0, m, torch.ones_like(m))
    return (p * (safe_p.log() - safe_m.log())).sum(dim=1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample Jensen–Shannon divergence (nats) between two non-negative maps."""
    p, q = _unit(_flat(p).double()), _unit(_flat(q).double())
    m = 0.5 * (p + q)
    js = 0.5 * _kl_terms(p, m) + 0.5 * _kl_terms(q, m)
    return js.clamp(0.0, JS_MAX).float()


def top_k_count(n_patches: int, frac: float) -> int:
    if not 0 < frac <= 1:
        raise ValueError(f"top-mass fraction must be in (0, 1], got {frac}")
    return max(1, math.ceil(frac * n_patches - 1e-9))


def top_mass(
    attention: torch.Tensor, saliency: torch.Tensor, frac: float = TOP_MASS_FRAC
) -> torch.Tensor:
    """Per-sample share of ``attention``'s mass on the top-``frac`` patches of ``saliency``."""
    a, g = _flat(attention), _flat(saliency)
    if a.shape != g.shape:
        raise ValueError(
            f"attention {tuple(a.shape)} and saliency {tuple(g.shape)} differ in shape"
        )
    k = top_k_count(a.shape[1], frac)
    idx = g.topk(k, dim=1).indices
    total = a.sum(dim=1)
    picked = a.gather(1, idx).sum(dim=1)
    return torch.where(total > 0, picked / total.clamp_min(torch.finfo(a.dtype).tiny), 0.0)


def attention_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A(x) [B, h*w] and the logits, from one ``forward_tapped`` pass (no gradient)."""
    with torch.no_grad():
        out = model.forward_tapped(x, need_attention=True)
    if out.attention is None:
        raise DaatError("the model's forward_tapped returned no attention map")
    return out.attention.float(), out.logits.float()


def _blocks(model: nn.Module) -> nn.Module:
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(module, (nn.Sequential, nn.ModuleList)):
            if len(module) > 0:
                return module
    raise DaatError(f"Grad-CAM: {type(model).__name__} has no transformer 'blocks' to hook")


def _num_prefix_tokens(model: nn.Module, n_tokens: int, n_patches: int) -> int:
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        prefix = n_tokens - n_patches
    if n_tokens - prefix != n_patches:
        raise DaatError(
            f"Grad-CAM: {n_tokens} tokens, {prefix} prefix tokens, but the grid has "
            f"{n_patches} patches"
        )
    return prefix


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM [B, h*w] (max-normalised) for class ``target`` [B], and the logits [B, C].

    Only the captured tokens get a gradient: the weights are not touched (no .grad is written).
    """
    h, w = model.grid
    captured: dict[str, torch.Tensor] = {}

    def pre_hook(_module, args):
        tokens = args[0].detach().requires_grad_(True)
        captured["tokens"] = tokens
        return (tokens,) + tuple(args[1:])

    handle = _blocks(model)[-1].register_forward_pre_hook(pre_hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            score = logits.float().gather(1, target.view(-1, 1).long()).sum()
            tokens = captured["tokens"]
            (grads,) = torch.autograd.grad(score, tokens)
    finally:
        handle.remove()
    prefix = _num_prefix_tokens(model, tokens.shape[1], h * w)
    feats, grads = tokens[:, prefix:].detach().float(), grads[:, prefix:].float()
    weights = grads.mean(dim=1, keepdim=True)  # [B, 1, D]: α_d
    cam = F.relu((feats * weights).sum(dim=2))  # [B, N]
    peak = cam.amax(dim=1, keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), 0.0)
    return cam, logits.detach().float()


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, h*w] → [B, h, w] (row-major, as the maps are flattened)."""
    return maps.reshape(maps.shape[0], grid[0], grid[1])


def upsample(maps: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid maps [B, h*w] → image-size maps [B, H, W] (bilinear), for overlays."""
    grid_maps = to_grid(maps, grid).unsqueeze(1).float()
    return F.interpolate(grid_maps, size=size, mode="bilinear", align_corners=False).squeeze(1)
