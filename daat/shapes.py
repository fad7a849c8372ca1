"""The ten object shapes of the synthetic scenes as signed distance functions (object units; the
shape's axis is local y), in class order, with the radius of a sphere about the local origin that
encloses each one (it bounds the sphere tracing in ``daat.synthetic``).
"""

from __future__ import annotations

import numpy as np


def _len(*c: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(v * v for v in c))


def _sphere(x, y, z):
    return _len(x, y, z) - 0.8


def _cube(x, y, z):  # box of half-side 0.52 with edges rounded by 0.05
    qx, qy, qz = np.abs(x) - 0.47, np.abs(y) - 0.47, np.abs(z) - 0.47
    outside = _len(np.maximum(qx, 0), np.maximum(qy, 0), np.maximum(qz, 0))
    return outside + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0) - 0.05


def _cylinder(x, y, z):
    dr, dy = _len(x, z) - 0.5, np.abs(y) - 0.62
    return np.minimum(np.maximum(dr, dy), 0) + _len(np.maximum(dr, 0), np.maximum(dy, 0))


def _cone(x, y, z, h=0.7, r=0.62):  # exact capped cone (tip radius 0), base at y=-h, tip at y=+h
    qx = _len(x, z)
    cax = qx - np.minimum(qx, np.where(y < 0, r, 0.0))
    cay = np.abs(y) - h
    t = np.clip((-qx * -r + (h - y) * 2 * h) / (r * r + 4 * h * h), 0, 1)
    cbx, cby = qx - r * t, y - h + 2 * h * t
    sign = np.where((cbx < 0) & (cay < 0), -1.0, 1.0)
    return sign * np.sqrt(np.minimum(cax * cax + cay * cay, cbx * cbx + cby * cby))


def _torus(x, y, z):
    return _len(_len(x, z) - 0.58, y) - 0.24


def _pyramid(x, y, z, a=0.58, top=0.68, bottom=-0.5):
    # intersection of half-spaces: a lower bound of the distance, which is all tracing needs
    h = top - bottom
    side = (h * np.maximum(np.abs(x), np.abs(z)) + a * (y - top)) / np.hypot(h, a)
    return np.maximum(side, bottom - y)


def _capsule(x, y, z):
    return _len(x, y - np.clip(y, -0.45, 0.45), z) - 0.36


_ELLIPSOID = (0.9, 0.45, 0.6)


def _ellipsoid(x, y, z):  # (|p/r| - 1) * min(r) is 1-Lipschitz, hence a safe distance bound
    a, b, c = _ELLIPSOID
    return (_len(x / a, y / b, z / c) - 1) * min(_ELLIPSOID)


def _prism(x, y, z, w=0.55, top=0.55, bottom=-0.4, half=0.72):  # a tent lying along local x
    h = top - bottom
    side = (h * np.abs(z) + w * (y - top)) / np.hypot(h, w)
    return np.maximum(np.maximum(side, bottom - y), np.abs(x) - half)


def _octahedron(x, y, z):
    return (np.abs(x) + np.abs(y) + np.abs(z) - 0.9) / np.sqrt(3.0)


SDFS = (
    _sphere,
    _cube,
    _cylinder,
    _cone,
    _torus,
    _pyramid,
    _capsule,
    _ellipsoid,
    _prism,
    _octahedron,
)
BOUNDS = (
    0.8,
    0.52 * 3**0.5,
    float(np.hypot(0.5, 0.62)),
    float(np.hypot(0.62, 0.7)),
    0.82,
    float(np.sqrt(2 * 0.58**2 + 0.5**2)),
    0.81,
    0.9,
    float(np.sqrt(0.72**2 + 0.4**2 + 0.55**2)),
    0.9,
)
