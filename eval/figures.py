"""Fig. 2/4-style panels (Grad-CAM and A(x) under PGD) and Fig. 1a-style depth panels, as PNGs.

For each ε in ``eval.figure_eps`` one ``figures/attention_eps{ε×255}.png`` (eps4: ε = 4/255): a
row per fixed val image (a fixed random draw from the evaluated samples, the same for every run),
columns

    clean image (true / predicted label) | Grad-CAM(x) | x_adv (predicted label)
    | Grad-CAM(x_adv) | signed Grad-CAM difference with contours of large change
    | A(x) | A(x_adv) | A difference | G(x)

x_adv is the Table 1 PGD (eval.pgd_steps steps, α/ε as in Table 1, random start) at that ε.
Grad-CAM is taken for each input's PREDICTED class (what drives that decision), max-normalised to
[0, 1] (see attention.grad_cam); "large change" = |Grad-CAM(x_adv) − Grad-CAM(x)| ≥ CONTOUR_LEVEL.
A(x) panels share one colour scale per row; the A difference has a symmetric scale.
With ``eval.depth_model`` set, ``figures/depth_eps{ε}.png`` shows x, depth(x), x_adv,
depth(x_adv) and their signed difference (Fig. 1a).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from daat.artifacts import atomic_path
from daat.config import EvalConfig
from daat.eval import attacks_eval, attention
from daat.eval.results import eps_label, eps_tag

CONTOUR_LEVEL = 0.3  # |Δ Grad-CAM| on the [0, 1] scale drawn as a red contour
_CELL = 1.7  # inches per panel
_ATTENTION_COLUMNS = ("clean", "Grad-CAM(x)", "x_adv", "Grad-CAM(x_adv)", "Δ Grad-CAM",
                      "A(x)", "A(x_adv)", "Δ A", "G(x) depth saliency")


def figure_files(ev: EvalConfig) -> list[str]:
    if ev.n_figures <= 0:
        return []
    names = [f"figures/attention_eps{eps_tag(e)}.png" for e in ev.figure_eps]
    if ev.depth_model:
        names += [f"figures/depth_eps{eps_tag(e)}.png" for e in ev.figure_eps]
    return names


def all_present(art_path: Path, ev: EvalConfig) -> bool:
    return all((art_path / rel).is_file() for rel in figure_files(ev))


def _name(class_names: list[str], label: int) -> str:
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    return name if len(name) <= 18 else name[:17] + "…"


def _rgb(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _attack(model, x, y, ev: EvalConfig, eps: float, device) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(attacks_eval.task_seed(ev.seed, f"figure_eps{eps_tag(eps)}", 0))
    clean_ok = torch.ones_like(y, dtype=torch.bool)
    out = attacks_eval.pgd_eval(model, x, y, clean_ok, eps=eps, alpha=eps * (ev.alpha / ev.eps),
                                steps=ev.pgd_steps, generator=generator)
    return out.x_adv


def make_all(art_path: Path, model, ev: EvalConfig, samples: dict[int, tuple],
             class_names: list[str], device: torch.device) -> list[str]:
    """Draw every figure (when its samples were collected); return the relpaths that exist."""
    if samples and not all_present(art_path, ev):
        order = sorted(samples)
        x = torch.stack([samples[p][0] for p in order]).to(device)
        y = torch.tensor([samples[p][1] for p in order], device=device)
        g = torch.stack([samples[p][2] for p in order]).to(device)
        depth_model = _load_depth(ev, device)
        for eps in ev.figure_eps:
            x_adv = _attack(model, x, y, ev, eps, device)
            attention_figure(art_path / f"figures/attention_eps{eps_tag(eps)}.png", model,
                             x, x_adv, y, g, eps, class_names, ev.pgd_steps)
            if depth_model is not None:
                depth_figure(art_path / f"figures/depth_eps{eps_tag(eps)}.png", depth_model,
                             x, x_adv, eps)
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


def attention_figure(path: Path, model, x, x_adv, y, g, eps: float, class_names: list[str],
                     steps: int) -> None:
    from matplotlib.figure import Figure

    grid, size = model.grid, tuple(x.shape[-2:])
    pred, cam, a = _maps(model, x)
    pred_adv, cam_adv, a_adv = _maps(model, x_adv)
    cam_up = attention.upsample(cam, grid, size).cpu().numpy()
    cam_adv_up = attention.upsample(cam_adv, grid, size).cpu().numpy()
    cos = attention.cosine(a, a_adv).cpu().numpy()
    a_grid = attention.to_grid(a, grid).cpu().numpy()
    a_adv_grid = attention.to_grid(a_adv, grid).cpu().numpy()
    g_grid = attention.to_grid(g.float(), grid).cpu().numpy()
    n, cols = x.shape[0], len(_ATTENTION_COLUMNS)
    fig = Figure(figsize=(_CELL * cols, _CELL * n + 0.9))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        true, p, pa = int(y[i]), int(pred[i]), int(pred_adv[i])
        img, img_adv = _rgb(x[i]), _rgb(x_adv[i])
        row = axes[i]
        row[0].imshow(img)
        row[0].set_title(f"true {_name(class_names, true)}\npred {_name(class_names, p)}",
                         fontsize=7, color="black" if p == true else "red")
        row[1].imshow(img)
        row[1].imshow(cam_up[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        row[2].imshow(img_adv)
        row[2].set_title(f"ε={eps_label(eps)}\npred {_name(class_names, pa)}", fontsize=7,
                         color="black" if pa == true else "red")
        row[3].imshow(img_adv)
        row[3].imshow(cam_adv_up[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        diff = cam_adv_up[i] - cam_up[i]
        row[4].imshow(diff, cmap="RdBu_r", vmin=-1, vmax=1)
        if np.abs(diff).max() >= CONTOUR_LEVEL:
            row[4].contour(np.abs(diff), levels=[CONTOUR_LEVEL], colors="red", linewidths=0.8)
        top = max(a_grid[i].max(), a_adv_grid[i].max())
        row[5].imshow(a_grid[i], cmap="viridis", vmin=0, vmax=top)
        row[6].imshow(a_adv_grid[i], cmap="viridis", vmin=0, vmax=top)
        a_diff = a_adv_grid[i] - a_grid[i]
        lim = max(float(np.abs(a_diff).max()), 1e-12)
        row[7].imshow(a_diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
        row[7].set_title(f"max |Δ|={lim:.3g}\ncos(A, A_adv)={cos[i]:.3f}", fontsize=6)
        row[8].imshow(g_grid[i], cmap="magma")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, title in enumerate(_ATTENTION_COLUMNS):
        axes[0, j].set_xlabel(title, fontsize=7)
        axes[0, j].xaxis.set_label_position("top")
    fig.suptitle(f"PGD-{steps} at ε={eps_label(eps)}: Grad-CAM (predicted class, max-normalised) and "
                 f"attention A(x); Δ = adversarial − clean (red contour: |Δ Grad-CAM| ≥ "
                 f"{CONTOUR_LEVEL}); red label = misclassified", fontsize=8)
    _save(fig, path)


def depth_figure(path: Path, depth_model, x, x_adv, eps: float) -> None:
    from matplotlib.figure import Figure

    with torch.no_grad():
        d, d_adv = depth_model(x).cpu().numpy(), depth_model(x_adv).cpu().numpy()
    n = x.shape[0]
    fig = Figure(figsize=(_CELL * 5, _CELL * n + 0.7))
    axes = fig.subplots(n, 5, squeeze=False)
    for i in range(n):
        lo, hi = min(d[i].min(), d_adv[i].min()), max(d[i].max(), d_adv[i].max())
        diff = d_adv[i] - d[i]
        lim = max(float(np.abs(diff).max()), 1e-12)
        panels = [(_rgb(x[i]), {}), (d[i], {"cmap": "inferno", "vmin": lo, "vmax": hi}),
                  (_rgb(x_adv[i]), {}), (d_adv[i], {"cmap": "inferno", "vmin": lo, "vmax": hi}),
                  (diff, {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim})]
        for ax, (image, kw) in zip(axes[i], panels):
            ax.imshow(image, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 4].set_title(f"max |Δ|={lim:.3g}", fontsize=6)
    for j, title in enumerate(("x", "depth(x)", "x_adv", "depth(x_adv)", "Δ depth")):
        axes[0, j].set_xlabel(title, fontsize=7)
        axes[0, j].xaxis.set_label_position("top")
    fig.suptitle(f"Depth of x and x_adv (PGD at ε={eps_label(eps)}): relative inverse depth; "
                 f"Δ depth = depth(x_adv) − depth(x)", fontsize=8)
    _save(fig, path)
