"""Figures a reader can read: a colour bar for every map, depth(x) and depth(x_adv) on one scale,
class names from the card, integer epoch ticks, one label per run, one axes per data/model
setting, and a vector PDF beside every PNG (checked on the matplotlib objects, not on pixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_report import metrics_lines

from daat import config as config_mod
from daat.artifacts import create_or_open
from daat.eval import figures, report, style
from daat.models import build_student


def handmade_with(root, card: str, presets: list[str], seed: int, acc: dict, *overrides: str):
    """A run (3 epochs of metrics) and its eval like ``test_report.handmade``, for presets plus
    ``--set`` overrides; each distinct config is a distinct run."""
    cfg = config_mod.to_dict(
        config_mod.load(presets, [f"data.card={card}", f"seed={seed}", *overrides])
    )
    run = create_or_open(root, "run", cfg, config=cfg, lineage=["shards-x"])
    run.write_bytes("metrics.jsonl", metrics_lines(seed).encode())
    run.mark_complete()
    ev = create_or_open(root, "eval", {"r": run.id}, config=cfg, lineage=[run.id, "shards-x"])
    ev.write_json(
        "summary.json",
        {
            "accuracy": {**acc, "pgd-100": {"4/255": acc["pgd-10"]}},
            "lam": cfg["loss"]["lam"],
            "table_attack": "pgd-10",
            "counts": {"val": 5000, "evaluated": 5000, "autoattack": 1000},
            "sanity": {"flags": [], "checks": [{"name": "zero_input_gradients", "passed": True}]},
            "attention": None,
            "figures": [],
        },
    )
    ev.mark_complete()
    return [str(run.path), str(ev.path)]


TINY_MODEL = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
]


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure that style.save writes during the test (it still writes the files)."""
    figs = []
    real = style.save

    def keep(fig, png):
        figs.append(fig)
        return real(fig, png)

    monkeypatch.setattr(style, "save", keep)
    return figs


def scalar_images(fig):
    """The colour-mapped images of a figure (2-D data), not the RGB photographs."""
    return [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]


def colorbars(fig):
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def assert_every_map_has_a_colorbar(fig):
    bars = [
        (b.mappable.get_cmap().name, b.mappable.norm.vmin, b.mappable.norm.vmax)
        for b in colorbars(fig)
    ]
    images = scalar_images(fig)
    assert images and bars
    for im in images:
        key = (im.get_cmap().name, im.norm.vmin, im.norm.vmax)
        assert key in bars, f"a {key[0]} map on [{key[1]:.3g}, {key[2]:.3g}] has no colour bar"
    for bar in colorbars(fig):
        assert bar.ax.get_xlabel() or bar.ax.get_ylabel(), "every colour bar says what it shows"


@pytest.fixture(scope="module")
def tiny_model():
    cfg = config_mod.load(["synthetic"], TINY_MODEL)
    torch.manual_seed(0)
    return build_student(cfg.model, 10).eval()


def test_attention_figure_has_colorbars_pdf_and_card_names(tiny_model, tmp_path, drawn):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    y = torch.tensor([0, 1, 2])
    g = torch.softmax(torch.randn(3, 16), dim=1)
    names = [f"class name {i}" for i in range(10)]
    fig = figures.attention_figure(
        tmp_path / "figures/attention_eps4.png",
        tiny_model,
        x,
        x_adv,
        y,
        g,
        4 / 255,
        names,
        steps=10,
    )
    assert drawn == [fig]
    assert (tmp_path / "figures/attention_eps4.png").is_file()
    assert (tmp_path / "figures/attention_eps4.pdf").read_bytes().startswith(b"%PDF")
    assert_every_map_has_a_colorbar(fig)
    texts = " ".join(ax.get_xlabel() for ax in fig.axes)
    assert "true: class name 0" in texts and "true: class name 2" in texts
    assert "ε = 4/255" in fig._suptitle.get_text()
    # A(x) and A(x_adv) on one scale in every row
    a_maps = [im for im in scalar_images(fig) if im.get_cmap().name == style.CMAPS["attention"]]
    assert len(a_maps) == 6 and len({(im.norm.vmin, im.norm.vmax) for im in a_maps}) == 1


def test_depth_figure_shares_one_scale_for_x_and_x_adv(tiny_dpt_dir, tmp_path, drawn):
    from daat.depth import load_depth_model

    depth_model = load_depth_model(str(tiny_dpt_dir), torch.device("cpu"))
    torch.manual_seed(2)
    x = torch.rand(2, 3, 32, 32)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    fig = figures.depth_figure(tmp_path / "depth.png", depth_model, x, x_adv, 8 / 255, steps=10)
    assert (tmp_path / "depth.pdf").is_file() and (tmp_path / "depth.png").is_file()
    assert_every_map_has_a_colorbar(fig)
    depth_maps = [im for im in scalar_images(fig) if im.get_cmap().name == style.CMAPS["depth"]]
    assert len(depth_maps) == 4
    for row in (depth_maps[:2], depth_maps[2:]):  # depth(x), depth(x_adv) of one image
        ((lo, hi),) = {(im.norm.vmin, im.norm.vmax) for im in row}
        values = np.concatenate([im.get_array().ravel() for im in row])
        assert lo == pytest.approx(values.min()) and hi == pytest.approx(values.max())


def test_display_names_come_from_the_card():
    class Shards:
        classes = ["n01749939", "n02085620"]
        extra = {"card": {"class_names": {"n01749939": "green mamba"}}}

    assert figures.display_names(Shards()) == ["green mamba", "n02085620"]


def test_format_eps():
    assert style.format_eps(4 / 255) == "4/255"
    assert style.format_eps(0.0157) == "4/255"
    assert style.format_eps(0.5 / 255) == "0.5/255"
    assert style.format_eps(0.03) == "0.03"
    assert style.format_eps(0.0) == "0"


def test_unique_labels():
    got = style.unique_labels(
        {1: "DAAT (seed 0)", 2: "DAAT (seed 0)", 3: "PGD-AT (seed 0)"},
        {1: "run-aaaa", 2: "run-bbbb", 3: "run-cccc"},
    )
    assert got == {
        1: "DAAT (seed 0) [run-aaaa]",
        2: "DAAT (seed 0) [run-bbbb]",
        3: "PGD-AT (seed 0)",
    }


def test_report_curves_are_labelled_per_run_on_axes_per_setting(tmp_path, drawn):
    acc = {"clean": 0.7, "pgd-10": 0.4, "autoattack": 0.35}
    paths = handmade_with(tmp_path, "synthetic", ["daat", "synthetic"], 0, acc)
    # the same preset and seed again, differing in what the label does not show: must not merge
    paths += handmade_with(tmp_path, "synthetic", ["daat", "synthetic"], 0, acc, "train.epochs=3")
    paths += handmade_with(tmp_path, "imagenet100", ["imagenet100", "pgd-at"], 1, acc)
    out = tmp_path / "out"
    markdown = report.run(paths, str(out)).read_text()
    for name in ("fig3a", "fig3b", "fig3c"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file()
        assert f"({name}.pdf)" in markdown
    fig3a = next(f for f in drawn if "clean validation" in f._suptitle.get_text())
    axes = [ax for ax in fig3a.axes if ax.lines]
    assert len(axes) == 2  # synthetic and imagenet100 never share axes
    titles = sorted(ax.get_title(loc="left").splitlines()[0] for ax in axes)
    assert titles == ["data: imagenet100", "data: synthetic"]
    labels = [line.get_label() for ax in axes for line in ax.lines]
    assert len(labels) == 3 and len(set(labels)) == 3
    assert sum("DAAT · daat+synthetic (seed 0" in label for label in labels) == 2
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlabel() == "epoch"
    fig3c = next(f for f in drawn if "robust accuracy vs ε" in f._suptitle.get_text())
    tick_text = [t.get_text() for ax in fig3c.axes for t in ax.get_xticklabels()]
    assert "4/255" in tick_text


def test_lambda_panel_draws_each_group_and_skips_missing_metrics(tmp_path, drawn):
    paths = []
    for lam_value in (0.05, 0.2):
        paths += handmade_with(
            tmp_path,
            "synthetic",
            ["daat", "synthetic"],
            0,
            {"clean": 0.7, "pgd-10": 0.4, "autoattack": None},
            f"loss.lam={lam_value}",
        )
    report.run(paths, str(tmp_path / "out"))
    fig3d = next(f for f in drawn if "λ" in f._suptitle.get_text())
    (ax,) = [ax for ax in fig3d.axes if ax.lines]
    assert sorted(line.get_label() for line in ax.lines) == ["DAAT PGD-10", "DAAT clean"]
    assert list(ax.get_xticks()) == [0.05, 0.2]
