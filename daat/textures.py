"""Procedural solid textures of the synthetic scenes: ten families, each a pure function of 3-D
(object or wall) coordinates that blends two colours.

``sample_texture`` draws one texture's parameters from a generator; ``albedo`` evaluates it at
points. The families are what the ``synthetic-spurious`` card ties to classes (family = class id in
train) and what its cue-conflict split sets against the shape (see ``daat.synthetic.items``).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

TEXTURES: tuple[str, ...] = (
    "stripes",
    "checker",
    "dots",
    "blotches",
    "rings",
    "grid",
    "zigzag",
    "plain",
    "gradient",
    "speckle",
)


@dataclass(frozen=True)
class Texture:
    family: int
    colour0: tuple[float, float, float]  # sRGB in [0,1]
    colour1: tuple[float, float, float]
    freq: float  # pattern frequency, cycles per unit length
    offset: tuple[float, float, float]
    dirs: tuple[float, ...]  # three unit vectors (9 floats) that orient directional patterns


def _len(*c: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(v * v for v in c))


# each family returns the blend weight between colour0 and colour1
def _texture_weight(tex: Texture, x, y, z) -> np.ndarray:
    f = tex.freq
    px, py, pz = x - tex.offset[0], y - tex.offset[1], z - tex.offset[2]
    d = tex.dirs
    along = px * d[0] + py * d[1] + pz * d[2]
    name = TEXTURES[tex.family]
    if name == "stripes":
        return np.clip(0.5 + 2 * np.sin(2 * np.pi * f * along), 0, 1)
    if name == "checker":
        return (np.floor(f * px) + np.floor(f * py) + np.floor(f * pz)) % 2
    if name == "dots":
        r = _len(*(f * c - np.floor(f * c) - 0.5 for c in (px, py, pz)))
        return np.clip((0.32 - r) * 12 + 0.5, 0, 1)
    if name == "blotches":
        n = sum(
            np.sin(2 * np.pi * f * (px * d[i] + py * d[i + 1] + pz * d[i + 2]) + i)
            for i in (0, 3, 6)
        )
        return np.clip(0.5 + 1.5 * n, 0, 1)
    if name == "rings":
        return np.clip(0.5 + 2 * np.sin(2 * np.pi * f * _len(px, py, pz)), 0, 1)
    if name == "grid":  # thin lines where any coordinate crosses a lattice plane
        near = np.minimum(
            np.minimum(np.abs(f * px - np.round(f * px)), np.abs(f * py - np.round(f * py))),
            np.abs(f * pz - np.round(f * pz)),
        )
        return np.clip((0.09 - near) * 20 + 0.5, 0, 1)
    if name == "zigzag":
        across = px * d[3] + py * d[4] + pz * d[5]
        tri = np.abs(2 * (f * across - np.floor(f * across + 0.5)))
        return np.clip(0.5 + 2 * np.sin(2 * np.pi * f * (along + 0.35 * tri)), 0, 1)
    if name == "plain":
        return np.zeros_like(px)
    if name == "gradient":
        return np.clip(0.5 + 0.6 * along, 0, 1)
    cell = np.floor(f * px) * 12.9898 + np.floor(f * py) * 78.233 + np.floor(f * pz) * 37.719
    return (np.sin(cell) * 43758.5453) % 1.0  # speckle: one pseudo-random shade per cell


_FREQ = {
    "stripes": (1.3, 2.6),
    "checker": (1.8, 3.2),
    "dots": (2.2, 3.5),
    "blotches": (0.6, 1.1),
    "rings": (1.4, 2.6),
    "grid": (1.8, 3.0),
    "zigzag": (1.2, 2.2),
    "plain": (1.0, 1.0),
    "gradient": (1.0, 1.0),
    "speckle": (4.0, 6.0),
}


def _colour(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def sample_texture(
    rng: np.random.Generator, family: int, freq_scale: float, vivid: float
) -> Texture:
    """``vivid`` in (0,1] scales saturation and contrast: walls are duller than objects."""
    lo, hi = _FREQ[TEXTURES[family]]
    freq = float(rng.uniform(lo, hi)) * freq_scale
    hue, value = float(rng.random()), float(rng.uniform(0.6, 1.0))
    colour0 = _colour(hue, vivid * rng.uniform(0.35, 0.9), value)
    colour1 = _colour(
        hue + rng.uniform(0.25, 0.75),
        vivid * rng.uniform(0.2, 0.9),
        value - vivid * rng.uniform(0.3, 0.6),
    )
    offset = tuple(float(v) for v in rng.uniform(-1, 1, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Texture(family, colour0, colour1, freq, offset, tuple(float(v) for v in q.T.ravel()))


def albedo(tex: Texture, x, y, z) -> np.ndarray:
    w = _texture_weight(tex, x, y, z)[:, None]
    linear0, linear1 = np.array(tex.colour0) ** 2.2, np.array(tex.colour1) ** 2.2
    return linear0 * (1 - w) + linear1 * w
