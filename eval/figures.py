"""Fig. 2/4-style panels (Grad-CAM and A(x) under PGD) and Fig. 1a-style depth panels, as PNG +
vector PDF (the look is ``style.py``'s).

For each ε in ``eval.figure_eps`` one ``figures/attention_eps{ε×255}.png`` (and ``.pdf``; eps4:
ε = 4/255): a row per
fixed val image (a fixed random draw from the evaluated samples, the same for every run), columns

    clean image (true / predicted class) | Grad-CAM(x) | x_adv (predicted class)
    | Grad-CAM(x_adv) | signed Grad-CAM difference with contours of large change
    | A(x) | A(x_adv) | A difference | G(x)

x_adv is the Table 1 PGD (eval.pgd_steps steps, α/ε as in Table 1, random start) at that ε.
Grad-CAM is taken for each input's PREDICTED class (what drives that decision), max-normalised to
[0, 1] (see attention.grad_cam); "large change" = |Grad-CAM(x_adv) − Grad-CAM(x)| ≥ CONTOUR_LEVEL.
Every map column has ONE colour scale for all rows and its colour bar under it (A(x) and A(x_adv)
share theirs; differences are symmetric about 0), so rows and columns compare by colour.
Class names are the data card's display names.

With ``eval.depth_model`` set, ``figures/depth_eps{ε}.png`` shows x, depth(x), x_adv,
depth(x_adv) and their signed difference (Fig. 1a). The depth model's output is relative inverse
depth, whose scale differs between images, so each ROW has one scale for depth(x) and
depth(x_adv) (one colour bar for both) and its own symmetric scale for the difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daat.config import EvalConfig
from daat.eval import attacks_eval, attention, style
from daat.eval.results import eps_tag

CONTOUR_LEVEL = 0.3  # |Δ Grad-CAM| on the [0, 1] scale drawn as a red contour
_CELL = 1.25  # inches per image panel
_NAME_CHARS = 18  # class names longer than this are cut (with an ellipsis) in panel titles
_ATTENTION_COLUMNS = (
    "x (clean)",
    "Grad-CAM(x)",
    "x_adv",
    "Grad-CAM(x_adv)",
    "Δ Grad-CAM",
    "A(x)",
    "A(x_adv)",
    "Δ A",
    "G(x) depth saliency",
)
_DEPTH_COLUMNS = ("x", "depth(x)", "x_adv", "depth(x_adv)", "Δ depth")


def figure_files(ev: EvalConfig) -> list[str]:
    """Every file the figures of ``ev`` make: each PNG followed by its PDF."""
    if ev.n_figures <= 0:
        return []
    stems = [f"figures/attention_eps{eps_tag(e)}" for e in ev.figure_eps]
    if ev.depth_model:
        stems += [f"figures/depth_eps{eps_tag(e)}" for e in ev.figure_eps]
    return [f"{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]


def all_present(art_path: Path, ev: EvalConfig) -> bool:
    return all((art_path / rel).is_file() for rel in figure_files(ev))


def display_names(shard_art) -> list[str]:
    """The card's display name of each class in label order (an ImageNet wnid becomes its name),
    falling back to the class id where the shards' card gives none."""
    names = shard_art.extra.get("card", {}).get("class_names") or {}
    return [names.get(c, c) for c in shard_art.classes]


def _name(class_names: list[str], label: int) -> str:
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def _rgb(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _attack(model, x, y, ev: EvalConfig, eps: float, device) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(attacks_eval.task_seed(ev.seed, f"figure_eps{eps_tag(eps)}", 0))
    clean_ok = torch.ones_like(y, dtype=torch.bool)
    out = attacks_eval.pgd_eval(
        model,
        x,
        y,
        clean_ok,
        eps=eps,
        alpha=eps * ev.alpha / ev.eps,
        steps=ev.pgd_steps,
        generator=generator,
    )
    return out.x_adv


def make_all(
    art_path: Path,
    model,
    ev: EvalConfig,
    samples: dict[int, tuple],
    class_names: list[str],
    device: torch.device,
) -> list[str]:
    """Draw every figure (when its samples were collected); return the relpaths that exist."""
    if samples and not all_present(art_path, ev):
        order = sorted(samples)
        x = torch.stack([samples[p][0] for p in order]).to(device)
        y = torch.tensor([samples[p][1] for p in order], device=device)
        g = torch.stack([samples[p][2] for p in order]).to(device)
        depth_model = _load_depth(ev, device)
        for eps in ev.figure_eps:
            x_adv = _attack(model, x, y, ev, eps, device)
            attention_figure(
                art_path / f"figures/attention_eps{eps_tag(eps)}.png",
                model,
                x,
                x_adv,
                y,
                g,
                eps,
                class_names,
                ev.pgd_steps,
            )
            if depth_model is not None:
                depth_figure(
                    art_path / f"figures/depth_eps{eps_tag(eps)}.png",
                    depth_model,
                    x,
                    x_adv,
                    eps,
                    ev.pgd_steps,
                )
    return [rel for rel in figure_files(ev) if (art_path / rel).is_file()]


def _load_depth(ev: EvalConfig, device):
    if not ev.depth_model:
        return None
    from daat.depth import load_depth_model

    return load_depth_model(ev.depth_model, device)


def _maps(model, x: torch.Tensor):
    a, logits = attention.attention_map(model, x)
    pred = logits.argmax(dim=1)
    cam, _ = attention.grad_cam(model, x, pred)
    return pred, cam, a


def _symmetric(values: np.ndarray) -> float:
    return max(float(np.abs(values).max()), 1e-12)


def attention_figure(
    path: Path, model, x, x_adv, y, g, eps: float, class_names: list[str], steps: int
):
    """Draw the Grad-CAM / attention panels for images ``x`` and their PGD-``steps``
    ``x_adv`` at radius ``eps`` (in [0, 1] units) to ``path`` (+ PDF); returns the Figure."""
    grid, size = model.grid, tuple(x.shape[-2:])
    pred, cam, a = _maps(model, x)
    pred_adv, cam_adv, a_adv = _maps(model, x_adv)
    cam_up = attention.upsample(cam, grid, size).cpu().numpy()
    cam_adv_up = attention.upsample(cam_adv, grid, size).cpu().numpy()
    cos = attention.cosine(a, a_adv).cpu().numpy()
    a_grid = attention.to_grid(a, grid).cpu().numpy()
    a_adv_grid = attention.to_grid(a_adv, grid).cpu().numpy()
    g_grid = attention.to_grid(g.float(), grid).cpu().numpy()
    cam_diff, a_diff = cam_adv_up - cam_up, a_adv_grid - a_grid
    a_top = max(float(a_grid.max()), float(a_adv_grid.max()), 1e-12)
    cam_lim, a_lim = _symmetric(cam_diff), _symmetric(a_diff)
    n, cols, text = x.shape[0], len(_ATTENTION_COLUMNS), style.format_eps(eps)
    with style.drawing():
        fig = style.figure(_CELL * cols + 0.3, _CELL * n + 1.6)
        axes = fig.subplots(n, cols, squeeze=False)
        shown = {}
        for i in range(n):
            true, p, pa = int(y[i]), int(pred[i]), int(pred_adv[i])
            img, img_adv = _rgb(x[i]), _rgb(x_adv[i])
            row = axes[i]
            row[0].imshow(img)
            row[0].set_xlabel(
                f"true: {_name(class_names, true)}\npred: {_name(class_names, p)}",
                fontsize=6.5,
                color="black" if p == true else "red",
            )
            row[1].imshow(img)
            shown["cam"] = row[1].imshow(
                cam_up[i], cmap=style.CMAPS["gradcam"], alpha=0.5, vmin=0, vmax=1
            )
            row[2].imshow(img_adv)
            row[2].set_xlabel(
                f"pred: {_name(class_names, pa)}",
                fontsize=6.5,
                color="black" if pa == true else "red",
            )
            row[3].imshow(img_adv)
            shown["cam_adv"] = row[3].imshow(
                cam_adv_up[i], cmap=style.CMAPS["gradcam"], alpha=0.5, vmin=0, vmax=1
            )
            shown["cam_diff"] = row[4].imshow(
                cam_diff[i], cmap=style.CMAPS["difference"], vmin=-cam_lim, vmax=cam_lim
            )
            if np.abs(cam_diff[i]).max() >= CONTOUR_LEVEL:
                row[4].contour(
                    np.abs(cam_diff[i]), levels=[CONTOUR_LEVEL], colors="red", linewidths=0.8
                )
            shown["a"] = row[5].imshow(a_grid[i], cmap=style.CMAPS["attention"], vmin=0, vmax=a_top)
            shown["a_adv"] = row[6].imshow(
                a_adv_grid[i], cmap=style.CMAPS["attention"], vmin=0, vmax=a_top
            )
            shown["a_diff"] = row[7].imshow(
                a_diff[i], cmap=style.CMAPS["difference"], vmin=-a_lim, vmax=a_lim
            )
            row[7].set_xlabel(f"cos(A(x), A(x_adv)) = {cos[i]:.3f}", fontsize=6.5)
            shown["g"] = row[8].imshow(
                g_grid[i], cmap=style.CMAPS["saliency"], vmin=0, vmax=float(g_grid.max()) or 1.0
            )
            for ax in row:
                style.bare(ax)
        for j, header in enumerate(_ATTENTION_COLUMNS):
            axes[0, j].set_title(header, fontsize=7.5, fontweight="bold")
        bars = {
            1: ("cam", "max-normalised"),
            3: ("cam_adv", "max-normalised"),
            4: ("cam_diff", "adversarial − clean"),
            5: ("a", "share of CLS attention"),
            6: ("a_adv", "share of CLS attention"),
            7: ("a_diff", "adversarial − clean"),
            8: ("g", "share of depth saliency"),
        }
        for j, (key, label) in bars.items():
            style.colorbar(fig, shown[key], axes[:, j], label, location="bottom")
        fig.suptitle(
            f"Grad-CAM and attention A(x) under PGD-{steps} at ε = {text}: clean x vs "
            f"adversarial x_adv\nGrad-CAM for the predicted class; Δ = adversarial − clean; "
            f"red contour: |Δ Grad-CAM| ≥ {CONTOUR_LEVEL}; red class name = misclassified; "
            f"A and G sum to 1 over the {grid[0]}×{grid[1]} patches"
        )
        style.save(fig, path)
    return fig


def depth_figure(path: Path, depth_model, x, x_adv, eps: float, steps: int):
    """Draw depth(x) and depth(x_adv) (Fig. 1a) for radius ``eps`` (in [0, 1] units) to ``path``
    (+ PDF); returns the Figure."""
    with torch.no_grad():
        d, d_adv = depth_model(x).cpu().numpy(), depth_model(x_adv).cpu().numpy()
    n = x.shape[0]
    with style.drawing():
        fig = style.figure(_CELL * 5 + 1.6, _CELL * n + 1.0)
        axes = fig.subplots(n, 5, squeeze=False)
        for i in range(n):
            lo, hi = min(d[i].min(), d_adv[i].min()), max(d[i].max(), d_adv[i].max())
            diff = d_adv[i] - d[i]
            lim = _symmetric(diff)
            row = axes[i]
            row[0].imshow(_rgb(x[i]))
            row[1].imshow(d[i], cmap=style.CMAPS["depth"], vmin=lo, vmax=hi)
            row[2].imshow(_rgb(x_adv[i]))
            depth = row[3].imshow(d_adv[i], cmap=style.CMAPS["depth"], vmin=lo, vmax=hi)
            delta = row[4].imshow(diff, cmap=style.CMAPS["difference"], vmin=-lim, vmax=lim)
            for ax in row:
                style.bare(ax)
            style.colorbar(fig, depth, row[3], "relative inverse depth")
            style.colorbar(fig, delta, row[4], "adversarial − clean")
        for j, header in enumerate(_DEPTH_COLUMNS):
            axes[0, j].set_title(header, fontsize=7.5, fontweight="bold")
        fig.suptitle(
            f"Depth of x and x_adv (PGD-{steps}, ε = {style.format_eps(eps)}): relative "
            f"inverse depth (brighter = nearer),\none colour scale per row for depth(x) "
            f"and depth(x_adv); Δ = adversarial − clean"
        )
        style.save(fig, path)
    return fig
