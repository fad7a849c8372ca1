"""The one reader of the ε (and PGD step) values that the ``eval`` section and ``summary.json``
state: ``eval.eps``, ``eval.alpha``, ``eval.eps_grid``, ``eval.figure_eps`` and the PGD-100 keys
of ``summary.json`` are in 1/255 units. Code that needs an ε as a fraction of the [0, 1] pixel
range, or a label for one, goes through here, so a change of unit is a change to ``to_fraction``.
"""
from __future__ import annotations


def to_fraction(value: float | str) -> float:
    """An ε as the eval section / summary.json states it -> a fraction of the pixel range."""
    return float(value) / 255.0


def label(fraction: float) -> str:
    """0.0156862… -> '4/255' (how figures and reports name the ε actually used)."""
    return f"{round(fraction * 255, 4):g}/255"
