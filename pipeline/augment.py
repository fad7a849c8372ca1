"""The readers' views of a sample: the training view (joint random resized crop + flip of image
and saliency) and evaluation's centre view.

One box and one coin act on the image and its saliency E together, so both stay aligned pixel for
pixel. The geometry (``rrc_box``, ``center_box``) and the resizes are here; the readers that batch
the views (``pipeline/loaders.py``) and the format that stores the samples (``pipeline/shards.py``)
are not. Imports only ``pipeline/saliency_codec.py`` (to dequantise a crop) and torch/numpy.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from daat.pipeline.saliency_codec import dequantise_saliency

if TYPE_CHECKING:
    import torch

    from daat.pipeline.shards import Sample


def rrc_box(
    rng: np.random.Generator,
    h: int,
    w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width), torchvision's algorithm: 10 tries at
    a random area share and log-uniform aspect, then the whole image at a clamped aspect."""
    area = h * w
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_lo, log_hi)))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    if w / h < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def center_box(h: int, w: int, crop_pct: float = 1.0) -> tuple[int, int, int, int]:
    """The centred square of side ``crop_pct`` x the short side (eval's resize-short + crop)."""
    side = max(1, min(h, w, int(round(min(h, w) * crop_pct))))
    return (h - side) // 2, (w - side) // 2, side, side


def crop_resize(stack: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop [C,H,W] to ``box`` and resize to size x size, bilinear with antialiasing. Image and
    saliency channels go through this together, so they stay aligned pixel for pixel."""
    import torch.nn.functional as F

    top, left, ch, cw = box
    region = stack[:, top : top + ch, left : left + cw]
    if (ch, cw) == (size, size):
        return region.clone()
    return F.interpolate(
        region[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]


def augment(
    sample: Sample,
    rng: np.random.Generator,
    *,
    image_size: int,
    rrc_scale: tuple[float, float],
    hflip: bool,
) -> torch.Tensor:
    """Joint random resized crop + horizontal flip: one box and one coin for image and saliency.
    Returns [4,S,S]: RGB in [0,1] (channels 0-2) and the saliency E (channel 3).

    The image is cropped while still uint8 and resized by torch's vectorised uint8 kernel (the same
    antialiased bilinear as the saliency's float path, so both stay aligned pixel for pixel); only
    the S x S result becomes float: ~20-30% more img/s than resizing a float [4,H,W] stack, pixels
    within 1/255 of it (benchmarks/loader.py). The training reader draws the same view and makes
    the same image, but pools the saliency without this S x S map (``pooled_view``)."""
    import torch

    h, w = sample.saliency.shape
    box, flip = draw_view(rng, h, w, rrc_scale, hflip)
    image = image_view(torch.from_numpy(sample.image).permute(2, 0, 1), box, image_size, flip)
    top, left, ch, cw = box
    sal = torch.from_numpy(np.ascontiguousarray(sample.saliency[top : top + ch, left : left + cw]))
    sal = _resize_square(sal[None, None], image_size)[0]
    return torch.cat([image.float().div_(255), sal.flip(-1) if flip else sal])


def draw_view(
    rng: np.random.Generator, h: int, w: int, rrc_scale: tuple[float, float], hflip: bool
) -> tuple[tuple[int, int, int, int], bool]:
    """The random view of an h x w sample: crop box (top, left, height, width), then the flip
    coin (drawn only when ``hflip``)."""
    box = rrc_box(rng, h, w, rrc_scale)
    return box, bool(hflip and rng.random() < 0.5)


def image_view(
    image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """uint8 [3,H,W] (any strides) -> the view's uint8 [3,S,S]: crop, resize, flip. Flipping the
    uint8 result gives the same values as flipping after the float conversion, at 1/4 the bytes."""
    top, left, ch, cw = box
    out = _resize_square(image[None, :, top : top + ch, left : left + cw], size)[0]
    return out.flip(-1) if flip else out


def pooled_view(
    q: np.ndarray,
    scale: float,
    box: tuple[int, int, int, int],
    size: int,
    grid: tuple[int, int],
    flip: bool,
) -> torch.Tensor:
    """pool_to_grid(the view's resized, flipped E) [gh,gw] straight from the quantised map, never
    making the S x S float map: resize and pooling are linear and act on rows and columns
    separately, so pool(resize(crop)) = A_h @ crop @ A_w^T (``_pool_weights``), ~5x cheaper than
    resizing the float crop. Equal to pooling ``augment``'s channel 3 up to float32 rounding
    (tests/test_shards.py)."""
    import torch

    top, left, ch, cw = box
    e = torch.from_numpy(dequantise_saliency(q[top : top + ch, left : left + cw], scale))
    pooled = _pool_weights(ch, size, grid[0]) @ e @ _pool_weights(cw, size, grid[1]).T
    return pooled.flip(-1) if flip else pooled


@functools.lru_cache(maxsize=4096)
def _pool_weights(n: int, size: int, cells: int) -> torch.Tensor:
    """float32 [cells, n]: an axis of n pixels resized to ``size`` as ``_resize_square`` does, then
    average-pooled onto ``cells`` bins as ``pool_to_grid`` does, as one matrix. Both factors are
    read off torch's own kernels (their responses to unit impulses), so they are whatever weights
    torch uses; crop sizes repeat, hence the cache."""
    import torch
    import torch.nn.functional as F

    if n == size:
        resize = torch.eye(n, dtype=torch.float64)
    elif n == 1:  # one pixel resizes to a constant (and torch 2.14 mis-resizes width-1 inputs)
        resize = torch.ones(size, 1, dtype=torch.float64)
    else:  # column j of the n x n identity is the impulse at pixel j; the width stays n
        impulses = torch.eye(n)[None, None]  # float32: the weights of the float32 saliency path
        resize = F.interpolate(
            impulses, size=(size, n), mode="bilinear", align_corners=False, antialias=True
        )[0, 0].double()
    pool = F.adaptive_avg_pool1d(torch.eye(size, dtype=torch.float64)[None], cells)[0].T
    return (pool @ resize).float()


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """[1,C,h,w] -> [1,C,size,size], bilinear, antialiased, align_corners=False (uint8 or float)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def center_view(sample: Sample, *, image_size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Evaluation's deterministic view: centre square (crop_pct of the short side) -> [4,S,S]."""
    h, w = sample.saliency.shape
    return crop_resize(_to_stack(sample), center_box(h, w, crop_pct), image_size)


def _to_stack(sample: Sample) -> torch.Tensor:
    """[4,H,W] float: RGB in [0,1] and the saliency as the 4th channel, for joint geometry."""
    import torch

    image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float() / 255
    return torch.cat([image, torch.from_numpy(sample.saliency)[None]], dim=0)
