"""The experiment report's figures (matplotlib, Agg, one PNG each, under ``figures/``):

- ``fig3c_bands.png``: long-PGD (eval.pgd_long_steps) accuracy vs ε per method, mean over seeds
  with a ±1 std band;
- ``fig3d_lambda.png``: clean / PGD / AutoAttack accuracy vs λ (when ``loss.lam`` is a grid axis),
  mean ± std error bars over seeds, methods off the grid as dashed horizontal lines;
- ``shape_bias.png``: shape bias on the cue-conflict split per method, clean and attacked.
ε axes are labelled with the ε actually used (k/255).
"""
from __future__ import annotations

from pathlib import Path

from daat.artifacts import atomic_path
from daat.eval import eps, stats
from daat.eval.report_figures import COLORS

LAMBDA = "loss.lam"


def _figure(**kwargs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(**kwargs)


def _save(plt, fig, root: Path, rel: str) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(root / rel) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return rel


def eps_bands(root: Path, curves, attack: str) -> str:
    plt, fig, ax = _figure(figsize=(6, 4))
    ticks = sorted({x for _, _, xs, _, _ in curves for x in xs})
    for label, method, xs, means, stds in curves:
        colour = COLORS.get(method)
        ax.plot([255 * x for x in xs], means, marker="o", label=label, color=colour)
        if all(s is not None for s in stds):
            ax.fill_between([255 * x for x in xs], [m - s for m, s in zip(means, stds)],
                            [m + s for m, s in zip(means, stds)], alpha=0.2, color=colour)
    ax.set_xticks([255 * t for t in ticks], [eps.label(t) for t in ticks])
    ax.set(xlabel="ε (L∞)", ylabel=f"{attack.upper()} accuracy (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, root, "figures/fig3c_bands.png")


def _metric(summary: dict, name: str):
    acc = summary["accuracy"]
    if name == "PGD":
        return next(v for k, v in acc.items() if k.startswith("pgd-") and not isinstance(v, dict))
    return acc.get(name)


def lambda_sweep(root: Path, groups: dict) -> str:
    plt, fig, axes = _figure(ncols=3, figsize=(12, 3.8))
    lines: dict[tuple, list] = {}
    flat = []
    for group, rs in groups.items():
        values = dict(group.grid)
        if LAMBDA in values:
            rest = tuple((k, v) for k, v in group.grid if k != LAMBDA)
            key = (group.method, rest + ((("card", Path(group.card).stem),) if group.show_card
                                        else ()))
            lines.setdefault(key, []).append((float(values[LAMBDA]), rs))
        else:
            flat.append((group, rs))
    for ax, name in zip(axes, ("clean", "PGD", "autoattack")):
        for (method, rest), points in lines.items():
            points.sort(key=lambda p: p[0])
            summaries = [stats.mean_std([100 * v for v in (_metric(r.summary, name) for r in rs)
                                         if v is not None]) for _, rs in points]
            label = Path(method).stem + "".join(f", {k}={v}" for k, v in rest)
            ax.errorbar([p[0] for p in points], [m if m is not None else float("nan")
                                                 for m, _ in summaries],
                        yerr=[s or 0.0 for _, s in summaries], marker="o", capsize=3,
                        label=label, color=COLORS.get(Path(method).stem))
        for group, rs in flat:
            mean, _ = stats.mean_std([100 * v for v in (_metric(r.summary, name) for r in rs)
                                      if v is not None])
            if mean is not None:
                ax.axhline(mean, linestyle="--", color=COLORS.get(Path(group.method).stem, "k"),
                           label=f"{group.label} (mean)")
        ax.set(xlabel="λ", ylabel=f"{name} accuracy (%)", title=name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(plt, fig, root, "figures/fig3d_lambda.png")


def shape_bias(root: Path, groups: dict) -> str:
    plt, fig, ax = _figure(figsize=(6, 3.8))
    names = list(groups)
    keys = [k for k, v in next(r.summary["cue_conflict"] for rs in groups.values()
                               for r in rs).items() if isinstance(v, dict)]
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        means, stds = zip(*(stats.mean_std([r.summary["cue_conflict"][key]["shape_bias"]
                                            for r in groups[g]]) for g in names))
        ax.bar([j + i * width for j in range(len(names))],
               [m if m is not None else 0.0 for m in means], width,
               yerr=[s or 0.0 for s in stds], capsize=3, label=key)
    ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(names))],
                  [g.label for g in names], rotation=20, fontsize=8)
    ax.set(ylabel="shape bias", ylim=(0, 1))
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.legend(fontsize=8)
    return _save(plt, fig, root, "figures/shape_bias.png")


def draw(root: Path, spec, groups: dict, curves, long_attack: str) -> dict[str, tuple[str, str]]:
    """key -> (path relative to root, caption) of every figure there is data for."""
    figures = {}
    if curves:
        figures["3c"] = (eps_bands(root, curves, long_attack),
                         f"Fig. 3c: {long_attack.upper()} accuracy vs ε, mean over seeds, "
                         f"band ±1 std")
    if any(k == LAMBDA for k, _ in spec.grid) and groups:
        figures["3d"] = (lambda_sweep(root, groups), "Fig. 3d: accuracy vs λ, mean ± std over "
                                                     "seeds (dashed: methods off the λ grid)")
    cue_groups = {g: rs for g, rs in groups.items()
                  if all(r.summary.get("cue_conflict") for r in rs)}
    if cue_groups:
        figures["cue"] = (shape_bias(root, cue_groups),
                          "Shape bias on the cue-conflict split, mean ± std over seeds "
                          "(0.5: no preference)")
    return figures
