"""The one look of every daat figure: matplotlib settings, a colour map per quantity, colour bars,
run colours and labels, the ε text, and PNG + vector PDF output.

Every figure function follows the same pattern::

    with style.drawing():
        fig = style.figure(width, height)
        ...                                   # style.colorbar(...) beside every map
        style.save(fig, out / "name.png")    # writes name.png and name.pdf

matplotlib is imported inside the functions, so importing this module (for ``format_eps``) is free.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator
from pathlib import Path

from daat.artifacts import atomic_path
from daat.config import fraction_text

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "image.interpolation": "nearest",  # attention maps are patch grids: show the patches
    "pdf.fonttype": 42,  # embed TrueType, which journals ask for (Type 3 is rejected by some)
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
}
PNG_DPI = 150
CMAPS = {
    "gradcam": "jet",  # Grad-CAM's customary map, drawn half-transparent over the image
    "attention": "viridis",
    "saliency": "magma",
    "depth": "inferno",
    "difference": "RdBu_r",  # signed (adversarial − clean), always on a symmetric scale
}
METHOD_COLORS = {
    "standard": "tab:gray",
    "pgd-at": "tab:blue",
    "daat-no-align": "tab:orange",
    "daat": "tab:green",
}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def format_eps(eps: float) -> str:
    """An L∞ radius in [0, 1] pixel units as a figure writes it: ``config.fraction_text`` (the one
    '4/255' spelling) of the radius rounded to a tenth of a 1/255 step, so a typed 0.0157 reads
    '4/255'; no radius reads '0'; a radius that is no tenth of a step stays a 4-digit decimal.
    Summary keys use ``fraction_text`` itself, which never rounds."""
    steps = eps * 255
    tenths = round(steps, 1)
    if math.isclose(steps, tenths, abs_tol=0.01):
        return fraction_text(tenths / 255) if tenths else "0"
    return f"{eps:.4g}"


@contextlib.contextmanager
def drawing() -> Iterator[None]:
    """The house matplotlib settings, for building and saving one figure."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def figure(width: float, height: float):
    """A pyplot-free Figure (no GUI backend, thread-safe) with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def bare(ax) -> None:
    """An image panel: no ticks, thin frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(0.4)


def colorbar(fig, mappable, ax, label: str, location: str = "right"):
    """A labelled colour bar for ``mappable`` beside ``ax`` (an axes or a list of axes)."""
    horizontal = location in ("top", "bottom")
    bar = fig.colorbar(
        mappable, ax=ax, location=location, shrink=0.9, aspect=12 if horizontal else 14, pad=0.02
    )
    bar.set_label(label, fontsize=6)
    bar.ax.tick_params(labelsize=6, length=2)
    if not horizontal:
        bar.ax.yaxis.get_offset_text().set_fontsize(6)
    return bar


def integer_ticks(axis) -> None:
    """Whole-number ticks (epochs)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def run_style(method: str, index: int) -> dict:
    """Line style of the index-th run of ``method`` on one axes: the method's colour, and a line
    style and marker of its own, so runs of one method stay apart in print as well as colour."""
    return {
        "color": METHOD_COLORS.get(method, "black"),
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[index % len(MARKERS)],
    }


def unique_labels(labels: dict[Hashable, str], ids: dict[Hashable, str]) -> dict[Hashable, str]:
    """``labels`` with every label that more than one key shares made unique by the key's id
    (``ids[key]``): two curves never carry one name."""
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (f"{v} [{ids[k]}]" if counts[v] > 1 else v) for k, v in labels.items()}


def save(fig, png: Path) -> list[Path]:
    """Write ``png`` and the vector PDF beside it (same stem), each atomically; the PDF carries
    no creation date, so the same figure gives the same bytes."""
    png = Path(png)
    pdf = png.with_suffix(".pdf")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=PNG_DPI)
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    return [png, pdf]
