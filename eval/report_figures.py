"""Figure 3 panels for ``daat report``: one PNG + vector PDF per panel, in ``style.py``'s look.

3a/3b: clean and PGD validation accuracy per epoch from each run's ``metrics.jsonl`` (the numbers
training logs after every epoch, on ``train.val_samples`` val images); 3c: robust accuracy vs ε
from each evaluation's PGD-100; 3d: clean / PGD-10 / AutoAttack vs λ for runs that differ only in
``loss.lam`` (PGD-AT rows of the same data and model, when given, as dashed horizontal baselines,
as in the paper).

Runs of different data cards or student models never share axes: each such group gets its own
panel, titled by card and model. Every curve is labelled by its run (method, preset, seed, λ);
two curves that would share a label get their artifact id added. Colour = method; runs of one
method differ in line style and marker.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from daat import keys
from daat.config import fraction_value
from daat.eval import style

CAPTIONS = {
    "3a": "Fig. 3a: clean validation accuracy per epoch (training-time val subset)",
    "3b": "Fig. 3b: PGD validation accuracy per epoch (training-time val subset)",
    "3c": "Fig. 3c: robust accuracy vs ε (PGD-100, worst case over iterates)",
    "3d": "Fig. 3d: accuracy vs λ (runs that differ only in loss.lam)",
}
MISSING = {
    "3a": "no run with per-epoch metrics was given",
    "3b": "no run with per-epoch PGD metrics was given",
    "3c": "no evaluation with PGD-100 results was given",
    "3d": "fewer than two evaluated runs differ only in loss.lam",
}
COLORS = style.METHOD_COLORS
_KEYS = {"clean": "val_clean_acc", "pgd": "val_pgd_acc"}  # train/loop.py's epoch records
_PANEL = (4.2, 3.2)  # inches per axes
_ID_CHARS = 12  # 'run-01234567': enough of an artifact id to tell two runs apart


def lam(cfg: dict) -> float:
    return float(cfg.get("loss", {}).get("lam", 0.0))


def method(cfg: dict) -> str:
    """The Table 1 method a config trains, from what it does (not from its preset's name)."""
    if int(cfg.get("attack", {}).get("steps", 0)) == 0:
        return "standard"
    if lam(cfg) == 0:
        return "daat-no-align" if float(cfg.get("loss", {}).get("gamma0", 0.0)) > 0 else "pgd-at"
    return "daat"


def setting(cfg: dict) -> tuple[str, str]:
    """(card, student model) of a run: curves of different settings never share axes."""
    card = Path(str(cfg.get("data", {}).get("card", "?"))).stem
    m = cfg.get("model", {})
    model = f"{m.get('name', '?')} {m.get('img_size', '?')} px, patch {m.get('patch_size', '?')}"
    sizes = [f"{k} {m[k]}" for k in ("embed_dim", "depth", "num_heads") if m.get(k) is not None]
    return card, model + (f" ({', '.join(sizes)})" if sizes else "")


def _title(key: tuple[str, str]) -> str:
    return (
        textwrap.fill(f"data: {key[0]}", 60)
        + "\n"
        + textwrap.fill(f"model: {key[1]}", 60, subsequent_indent="    ")
    )


def _series(metrics: list[dict], which: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in metrics:
        if rec.get(_KEYS[which]) is not None:
            xs.append(int(rec["epoch"]) + 1)
            ys.append(100 * float(rec[_KEYS[which]]))
    return xs, ys


def _pgd_label(metrics: list[dict]) -> str:
    steps = {r.get("val_pgd_steps") for r in metrics} - {None}
    eps = sorted({r["val_eps"] for r in metrics if r.get("val_eps") is not None})
    return (f"PGD-{'/'.join(map(str, sorted(steps)))}" if steps else "PGD") + (
        f" at ε = {', '.join(style.format_eps(e) for e in eps)}" if eps else ""
    )


def _grouped(items: list, config_of) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for item in items:
        groups.setdefault(setting(config_of(item)), []).append(item)
    return groups


def _panels(n: int, title: str):
    """A figure of n axes side by side under one title."""
    fig = style.figure(_PANEL[0] * n, _PANEL[1] + 0.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True)
    return fig, axes


def _draw(
    rows_by_axes: dict,
    curves,
    out: Path,
    name: str,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy (%)",
    integer_x: bool = False,
) -> str | None:
    """One axes per setting; ``curves(ax, items)`` plots them; None if nothing was plotted."""
    if not rows_by_axes:
        return None
    with style.drawing():
        fig, axes = _panels(len(rows_by_axes), title)
        for ax, (key, items) in zip(axes, rows_by_axes.items()):
            ax.set_title(_title(key), fontsize=7, loc="left")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            curves(ax, items)
            if integer_x:
                style.integer_ticks(ax.xaxis)
            if ax.lines:  # under the axes: a legend inside hides curves
                ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=1)
        if not any(ax.lines for ax in axes):
            return None
        style.save(fig, out / f"{name}.png")
    return f"{name}.png"


def run_labels(rows, of: str = "run") -> dict[str, str]:
    """{artifact id: legend label} for each row's run (``of="run"``) or evaluation, unique: a label
    two of them would share gets the artifact's id."""
    labels, ids = {}, {}
    for r in rows:
        art = r.run if of == "run" else r.eval
        if art is not None and art.id not in labels:
            labels[art.id], ids[art.id] = r.base_label, art.id[:_ID_CHARS]
    return style.unique_labels(labels, ids)


def _per_epoch(rows, out: Path, which: str, key: str) -> str | None:
    runs: dict = {}  # one row per run, in the report's (method) order
    for r in rows:
        if r.run is not None and _series(r.metrics, which)[0]:
            runs.setdefault(r.run.id, r)
    labels = run_labels(list(runs.values()))
    title = CAPTIONS[key].split(": ", 1)[1]
    if which == "pgd":
        title += f", {_pgd_label([m for r in runs.values() for m in r.metrics])}"

    def curves(ax, group):
        per_method: dict[str, int] = {}
        for r in group:
            m = method(r.config)
            xs, ys = _series(r.metrics, which)
            ax.plot(xs, ys, label=labels[r.run.id], **style.run_style(m, per_method.get(m, 0)))
            per_method[m] = per_method.get(m, 0) + 1

    return _draw(
        _grouped(list(runs.values()), lambda r: r.config),
        curves,
        out,
        f"fig{key}",
        title,
        "epoch",
        integer_x=True,
    )


def _long_key(r) -> str | None:
    return next((k for k, v in r.summary.get("accuracy", {}).items() if isinstance(v, dict)), None)


def radius_of_key(key: str, data: dict) -> float:
    """The radius (a fraction) of a Fig. 3c accuracy key of summary ``data``: '4/255' now; a
    summary without ``table_attack`` was written when the keys counted in 1/255 ('4')."""
    return fraction_value(key) if "table_attack" in data else float(key) / 255


def _vs_eps(rows, out: Path) -> str | None:
    evals = [r for r in rows if r.eval is not None and _long_key(r)]
    labels = run_labels(evals, of="eval")
    attacks = {_long_key(r) for r in evals}

    def curves(ax, group):
        per_method: dict[str, int] = {}
        ticks = set()
        for r in group:
            long_key, m = _long_key(r), method(r.config)
            points = sorted(
                (radius_of_key(e, r.summary), 100 * a)
                for e, a in r.summary["accuracy"][long_key].items()
                if a is not None
            )
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                label=labels[r.eval.id] + (f" ({long_key})" if len(attacks) > 1 else ""),
                **style.run_style(m, per_method.get(m, 0)),
            )
            per_method[m] = per_method.get(m, 0) + 1
            ticks.update(p[0] for p in points)
        ax.set_xticks(sorted(ticks), [style.format_eps(e) for e in sorted(ticks)])

    title = CAPTIONS["3c"].split(": ", 1)[1]
    if len(attacks) == 1:
        title = title.replace("PGD-100", next(iter(attacks)).upper())
    return _draw(_grouped(evals, lambda r: r.config), curves, out, "fig3c", title, "ε (L∞ radius)")


def lam_group_key(cfg: dict) -> str:
    """Equal for runs that would be one run (same shards key, same run key) but for loss.lam."""
    any_lam = json.loads(json.dumps(cfg))
    any_lam["loss"]["lam"] = 1.0  # nonzero, so the settings λ = 0 switches off stay in the key
    return json.dumps(
        {"shards": keys.determining("shards", cfg), "run": keys.determining("run", any_lam)},
        sort_keys=True,
    )


def lam_groups(rows) -> list[list]:
    """Groups of evaluated rows whose configs differ only in loss.lam, with ≥ 2 distinct λ."""
    groups: dict[str, list] = {}
    for r in rows:
        if r.summary:
            groups.setdefault(lam_group_key(r.config), []).append(r)
    return [g for g in groups.values() if len({lam(r.config) for r in g}) >= 2]


def _vs_lam(rows, out: Path) -> str | None:
    groups = lam_groups(rows)
    if not groups:
        return None
    # (summary key, legend name, colour, marker): markers tell coinciding curves apart
    table = sorted({r.summary.get("table_attack", "pgd-10") for g in groups for r in g})[0]
    metrics = (
        ("clean", "clean", "tab:blue", "o"),
        (table, table.upper(), "tab:red", "s"),
        ("autoattack", "AutoAttack", "tab:purple", "^"),
    )
    radii = sorted(
        {
            r.summary["attacks"]["autoattack"]["eps"]
            for g in groups
            for r in g
            if r.summary.get("attacks", {}).get("autoattack", {}).get("eps") is not None
        }
    )
    by_axes = {(*setting(g[0].config), i): g for i, g in enumerate(groups)}

    def curves(ax, group):
        group = sorted(group, key=lambda r: lam(r.config))
        trained = group[0].base_label.split(" · ")[0]  # the method name, e.g. "DAAT"
        for key, name, color, marker in metrics:
            points = [
                (lam(r.config), 100 * r.summary["accuracy"][key])
                for r in group
                if r.summary["accuracy"].get(key) is not None
            ]  # e.g. AutoAttack off
            if points:
                ax.plot(*zip(*points), marker=marker, color=color, label=f"{trained} {name}")
        for r in rows:
            if (
                r.summary
                and method(r.config) == "pgd-at"
                and setting(r.config) == setting(group[0].config)
            ):
                for key, name, color, _ in metrics[1:]:
                    value = r.summary["accuracy"].get(key)
                    if value is not None:
                        ax.axhline(
                            100 * value,
                            ls="--",
                            lw=0.8,
                            color=color,
                            label=f"PGD-AT {name} (seed {r.config.get('seed')})",
                        )
        ax.set_xticks(sorted({lam(r.config) for r in group}))

    titled = {
        key[:2] if len(by_axes) == 1 else (key[0], f"{key[1]} · group {key[2] + 1}"): g
        for key, g in by_axes.items()
    }
    title = CAPTIONS["3d"].split(": ", 1)[1] + (
        f" (attacks at ε = {', '.join(map(style.format_eps, radii))})" if radii else ""
    )
    return _draw(titled, curves, out, "fig3d", title, "λ (loss.lam)")


def draw_all(rows, out: Path) -> dict[str, str]:
    """Draw every panel that the given artifacts support; {panel: PNG relpath} of those drawn
    (each with its PDF beside it)."""
    drawn = {
        "3a": _per_epoch(rows, out, "clean", "3a"),
        "3b": _per_epoch(rows, out, "pgd", "3b"),
        "3c": _vs_eps(rows, out),
        "3d": _vs_lam(rows, out),
    }
    return {k: v for k, v in drawn.items() if v}
