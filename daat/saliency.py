"""Depth saliency G(x) = N(pool(E(g(x)))) (paper Eq. 1), in pure torch.

- ``sobel_magnitude`` is E: the Sobel gradient magnitude of a depth map at image resolution.
- ``pool_to_grid`` averages E onto the ViT patch grid (the grid of A(x)).
- ``unit_mass`` is N: divide each sample by its sum; a map with (almost) no edges becomes the
  uniform field instead of 0/0.
- ``unit_mass_of_rows`` is the same normalisation for rows that cannot overflow (attention
  probabilities, the maps compared in evaluation): each row over its plain sum, an all-zero row
  uniform. It is the one renormaliser of A(x) and of the evaluation metrics.

Every function is batched, runs on whatever device its input lives on and works with or without
autograd (a flat region gives a zero gradient, never NaN). Inputs must be finite; E and G are
non-negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNIFORM_EPS = 1e-8  # a map whose mass is below this has no edges: N gives the uniform field


def _check_maps(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B,H,W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def sobel_magnitude(depth: torch.Tensor) -> torch.Tensor:
    """E = sqrt(Gx^2 + Gy^2) with the unnormalised 3x3 Sobel kernels (cross-correlation):
    Gx = [[-1,0,1],[-2,0,2],[-1,0,1]] (right minus left) and Gy its transpose (bottom minus top).

    Scale: there is no 1/8 factor, so a linear ramp of slope ``s`` per pixel gives E = 8*s in
    the interior (a unit step gives 4 on the two columns beside it). N in Eq. 1 removes the scale
    anyway; it only matters for the stored E. Borders use replicate padding, so the output has
    the input's size, a constant map gives exactly 0 everywhere, and a ramp's border pixels see
    half the interior difference (4*s across the border).

    depth: [B,H,W] float. Returns [B,H,W] in the same dtype.
    """
    _check_maps(depth, "depth")
    p = F.pad(depth.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)  # [B,H+2,W+2]
    # Separable form (central difference, then 1-2-1 smoothing across it) instead of conv2d:
    # differences of equal values are exactly 0, so a constant map gives exactly 0, whereas a
    # conv's accumulation order leaves ~1e-7 residues.
    dx = p[:, :, 2:] - p[:, :, :-2]  # [B,H+2,W]
    dy = p[:, 2:, :] - p[:, :-2, :]  # [B,H,W+2]
    gx = dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]
    gy = dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]
    if torch.is_grad_enabled() and depth.requires_grad:
        return _magnitude(gx, gy)
    return torch.hypot(gx, gy)  # same values in one kernel (preprocess: ~3x faster on CPU)


def _magnitude(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    # Factor out the larger component so squaring cannot overflow for huge depth values, and
    # keep an exact 0 (with a zero, not NaN, gradient) where both components vanish.
    big = torch.maximum(gx.abs(), gy.abs())
    small = torch.minimum(gx.abs(), gy.abs())
    nonzero = big > 0
    safe_big = torch.where(nonzero, big, torch.ones_like(big))
    ratio = small / safe_big
    return torch.where(nonzero, safe_big * torch.sqrt(1 + ratio * ratio), torch.zeros_like(big))


def pool_to_grid(e: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool [B,H,W] maps onto a (h, w) patch grid: [B,h,w].

    Adaptive average pooling: when H and W are multiples of h and w every cell is the exact mean
    of its (H/h x W/w) block; otherwise cells are torch's adaptive bins
    (rows floor(i*H/h) .. ceil((i+1)*H/h)), which may overlap by one pixel.
    """
    _check_maps(e, "e")
    h, w = _check_grid(grid)
    if h > e.shape[1] or w > e.shape[2]:
        raise ValueError(f"grid {h}x{w} is finer than the map {e.shape[1]}x{e.shape[2]}")
    return F.adaptive_avg_pool2d(e.unsqueeze(1), (h, w)).squeeze(1)


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g <= 0 for g in grid):
        raise ValueError(f"grid must be two positive ints (h, w), got {grid!r}")
    return int(grid[0]), int(grid[1])


def unit_mass(x: torch.Tensor, eps: float = UNIFORM_EPS) -> torch.Tensor:
    """N: divide each sample (dim 0) by its sum over all other dims.

    A sample whose sum is below ``eps`` (no edges) becomes the uniform field 1/n, so the result
    is never NaN. Expects non-negative, finite input; computed in at least float32 and returned
    in the input's dtype.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(
            f"unit_mass expects a floating tensor [B,...], got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    work = x.float() if x.element_size() < 4 else x
    flat = work.reshape(work.shape[0], -1)
    # Divide by the per-sample maximum first so the sum cannot overflow for huge values.
    peak = flat.amax(dim=1, keepdim=True)
    positive = peak > 0
    scaled = flat / torch.where(positive, peak, torch.ones_like(peak))
    scaled_sum = scaled.sum(dim=1, keepdim=True)
    mass = scaled_sum * torch.where(positive, peak, torch.zeros_like(peak))
    empty = ~(mass >= eps)
    safe_sum = torch.where(empty, torch.ones_like(scaled_sum), scaled_sum)
    uniform = torch.full_like(scaled, 1.0 / flat.shape[1])
    out = torch.where(empty, uniform, scaled / safe_sum)
    return out.reshape(x.shape).to(x.dtype)


def unit_mass_of_rows(p: torch.Tensor) -> torch.Tensor:
    """Each row of a non-negative [B, N] map divided by its sum (an all-zero row -> 1/N), in
    p's dtype. Unlike ``unit_mass`` it divides by the plain sum, without first scaling by the
    row's peak: exact for rows of probabilities, which is what A(x) has always been
    renormalised with; ``unit_mass`` keeps the overflow guard edge maps of any scale need."""
    total = p.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(p, 1.0 / p.shape[-1])
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), uniform)


def saliency_from_edges(e: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """N(pool(E)) flattened row-major: the L_align target from an already computed E [B,H,W]
    (e.g. the stored, augmented saliency map). Returns [B, h*w]."""
    return unit_mass(pool_to_grid(e, grid)).flatten(1)


def depth_saliency(depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """G(x) = N(pool(E(depth))) (Eq. 1): [B,H,W] depth -> [B, h*w], each row sums to 1."""
    return saliency_from_edges(sobel_magnitude(depth), grid)
