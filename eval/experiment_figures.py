"""The experiment report's figures (in the house style of ``style.py``: PNG + vector PDF each,
under ``figures/``):

- ``fig3c_bands.png``: long-PGD (eval.pgd_long_steps) accuracy vs ε per method, mean over seeds
  with a ±1 std band;
- ``fig3d_lambda.png``: clean / PGD / AutoAttack accuracy vs λ (when ``loss.lam`` is a grid axis),
  mean ± std error bars over seeds, methods off the grid as dashed horizontal lines;
- ``shape_bias.png``: shape bias on the cue-conflict split per method, clean and attacked.
ε axes are labelled with the ε actually used (k/255).
"""

from __future__ import annotations

from pathlib import Path

from daat.eval import stats, style

LAMBDA = "loss.lam"
COLORS = style.METHOD_COLORS


def _save(fig, root: Path, rel: str) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    style.save(fig, root / rel)
    return rel


def eps_bands(root: Path, curves, attack: str) -> str:
    with style.drawing():
        fig = style.figure(4.5, 3.2)
        _eps_bands(fig.add_subplot(), curves, attack)
        return _save(fig, root, "figures/fig3c_bands.png")


def _eps_bands(ax, curves, attack: str) -> None:
    ticks = sorted({x for _, _, xs, _, _ in curves for x in xs})
    for label, method, xs, means, stds in curves:
        colour = COLORS.get(method)
        ax.plot([255 * x for x in xs], means, marker="o", label=label, color=colour)
        if all(s is not None for s in stds):
            ax.fill_between(
                [255 * x for x in xs],
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                alpha=0.2,
                color=colour,
            )
    ax.set_xticks([255 * t for t in ticks], [style.format_eps(t) for t in ticks])
    ax.set(xlabel="ε (L∞)", ylabel=f"{attack.upper()} accuracy (%)", ylim=(0, 100))
    ax.grid(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)


def _metric(summary: dict, name: str):
    acc = summary["accuracy"]
    if name == "PGD":
        return next(v for k, v in acc.items() if k.startswith("pgd-") and not isinstance(v, dict))
    return acc.get(name)


def lambda_sweep(root: Path, groups: dict) -> str:
    with style.drawing():
        fig = style.figure(9, 3.2)
        _lambda_sweep(fig.subplots(1, 3), groups)
        return _save(fig, root, "figures/fig3d_lambda.png")


def _lambda_sweep(axes, groups: dict) -> None:
    lines: dict[tuple, list] = {}
    flat = []
    for group, rs in groups.items():
        values = dict(group.grid)
        if LAMBDA in values:
            rest = tuple((k, v) for k, v in group.grid if k != LAMBDA)
            key = (
                group.method,
                rest + ((("card", Path(group.card).stem),) if group.show_card else ()),
            )
            lines.setdefault(key, []).append((float(values[LAMBDA]), rs))
        else:
            flat.append((group, rs))
    for ax, name in zip(axes, ("clean", "PGD", "autoattack")):
        for (method, rest), points in lines.items():
            points.sort(key=lambda p: p[0])
            summaries = [
                stats.mean_std(
                    [100 * v for v in (_metric(r.summary, name) for r in rs) if v is not None]
                )
                for _, rs in points
            ]
            label = Path(method).stem + "".join(f", {k}={v}" for k, v in rest)
            ax.errorbar(
                [p[0] for p in points],
                [m if m is not None else float("nan") for m, _ in summaries],
                yerr=[s or 0.0 for _, s in summaries],
                marker="o",
                capsize=3,
                label=label,
                color=COLORS.get(Path(method).stem),
            )
        for group, rs in flat:
            mean, _ = stats.mean_std(
                [100 * v for v in (_metric(r.summary, name) for r in rs) if v is not None]
            )
            if mean is not None:
                ax.axhline(
                    mean,
                    linestyle="--",
                    color=COLORS.get(Path(group.method).stem, "k"),
                    label=f"{group.label} (mean)",
                )
        ax.set(xlabel="λ", ylabel=f"{name} accuracy (%)", title=name)
        ax.grid(True)
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))


def shape_bias(root: Path, groups: dict) -> str:
    with style.drawing():
        fig = style.figure(4.5, 3.2)
        _shape_bias(fig.add_subplot(), groups)
        return _save(fig, root, "figures/shape_bias.png")


def _shape_bias(ax, groups: dict) -> None:
    names = list(groups)
    keys = [
        k
        for k, v in next(r.summary["cue_conflict"] for rs in groups.values() for r in rs).items()
        if isinstance(v, dict)
    ]
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        means, stds = zip(
            *(
                stats.mean_std([r.summary["cue_conflict"][key]["shape_bias"] for r in groups[g]])
                for g in names
            )
        )
        ax.bar(
            [j + i * width for j in range(len(names))],
            [m if m is not None else 0.0 for m in means],
            width,
            yerr=[s or 0.0 for s in stds],
            capsize=3,
            label=key,
        )
    ax.set_xticks(
        [j + width * (len(keys) - 1) / 2 for j in range(len(names))],
        [g.label for g in names],
        rotation=20,
    )
    ax.set(ylabel="shape bias", ylim=(0, 1))
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.legend()


def draw(root: Path, spec, groups: dict, curves, long_attack: str) -> dict[str, tuple[str, str]]:
    """key -> (path relative to root, caption) of every figure there is data for."""
    figures = {}
    if curves:
        figures["3c"] = (
            eps_bands(root, curves, long_attack),
            f"Fig. 3c: {long_attack.upper()} accuracy vs ε, mean over seeds, band ±1 std",
        )
    if any(k == LAMBDA for k, _ in spec.grid) and groups:
        figures["3d"] = (
            lambda_sweep(root, groups),
            "Fig. 3d: accuracy vs λ, mean ± std over seeds (dashed: methods off the λ grid)",
        )
    cue_groups = {
        g: rs for g, rs in groups.items() if all(r.summary.get("cue_conflict") for r in rs)
    }
    if cue_groups:
        figures["cue"] = (
            shape_bias(root, cue_groups),
            "Shape bias on the cue-conflict split, mean ± std over seeds (0.5: no preference)",
        )
    return figures
