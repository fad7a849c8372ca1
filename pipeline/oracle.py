"""The synthetic card's exact depth ("oracle") on the stored image's pixel grid.

Imports only ``pipeline/images.py`` (for ``Geometry``) and ``daat/errors.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from daat.errors import DataError

if TYPE_CHECKING:
    import torch

    from daat.pipeline.images import Geometry


def oracle_depth(z: np.ndarray, geo: Geometry) -> torch.Tensor:
    """The renderer's depth as relative inverse depth (what DPT-style models predict), moved onto
    the stored image's pixel grid by the same resize + crop."""
    import torch
    import torch.nn.functional as F

    if not np.isfinite(z).all() or (z <= 0).any():
        raise DataError("synthetic renderer returned non-positive or non-finite depth")
    inv = torch.from_numpy(1.0 / z.astype(np.float32))[None, None]
    if tuple(inv.shape[-2:]) != geo.resized:
        inv = F.interpolate(
            inv, size=geo.resized, mode="bilinear", align_corners=False, antialias=True
        )
    return inv[0, 0, geo.top : geo.top + geo.height, geo.left : geo.left + geo.width].contiguous()
