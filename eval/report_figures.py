"""Figure 3 panels for ``daat report`` (matplotlib, Agg, one PNG per panel).

3a/3b: clean and PGD validation accuracy per epoch from each run's ``metrics.jsonl`` (the numbers
training logs after every epoch, on ``train.val_samples`` val images); 3c: robust accuracy vs ε
from each evaluation's PGD-100; 3d: clean / PGD-10 / AutoAttack vs λ for runs that differ only in
``loss.lam`` (PGD-AT rows, when given, as dashed horizontal baselines, as in the paper).
"""
from __future__ import annotations

import json
from pathlib import Path

from daat.artifacts import atomic_path
from daat.config import fraction_text, fraction_value

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
COLORS = {"standard": "tab:gray", "pgd-at": "tab:blue", "daat-no-align": "tab:orange",
          "daat": "tab:green"}
_KEYS = {"clean": "val_clean_acc", "pgd": "val_pgd_acc"}  # train/loop.py's epoch records
# Config keys that do not change what a run learns (or label it): ignored when grouping for 3d.
_IGNORED = {"": ("preset", "device", "eval"),
            "data": ("num_workers",),
            "train": ("log_every_steps", "ckpt_every_steps", "keep_step_checkpoints",
                      "keep_epoch_checkpoints", "compile"),
            "depth": ("batch_size", "channels_last", "compile"),
            "loss": ("lam",)}


def lam(cfg: dict) -> float:
    return float(cfg.get("loss", {}).get("lam", 0.0))


def method(cfg: dict) -> str:
    """The Table 1 method a config trains, from what it does (not from its preset's name)."""
    if int(cfg.get("attack", {}).get("steps", 0)) == 0:
        return "standard"
    if lam(cfg) == 0:
        return "daat-no-align" if float(cfg.get("loss", {}).get("gamma0", 0.0)) > 0 else "pgd-at"
    return "daat"


def _series(metrics: list[dict], which: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in metrics:
        if rec.get(_KEYS[which]) is not None:
            xs.append(int(rec["epoch"]) + 1)
            ys.append(100 * float(rec[_KEYS[which]]))
    return xs, ys


def _pgd_label(metrics: list[dict]) -> str:
    steps = {r.get("val_pgd_steps") for r in metrics} - {None}
    eps = {float(r["val_eps"]) for r in metrics if r.get("val_eps") is not None}
    return (f"PGD-{'/'.join(map(str, sorted(steps)))}" if steps else "PGD") + (
        f" at ε={', '.join(fraction_text(e) for e in sorted(eps))}" if eps else "")


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _axes(title: str, xlabel: str, ylabel: str = "accuracy (%)"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _per_epoch(rows, out: Path, which: str, key: str) -> str | None:
    title = CAPTIONS[key].split(": ", 1)[1]
    if which == "pgd":
        title += f" ({_pgd_label([m for r in rows for m in r.metrics])})"
    fig, ax = _axes(title, "epoch")
    seen = set()
    for r in rows:
        if r.run is None or r.run.id in seen:
            continue
        seen.add(r.run.id)
        xs, ys = _series(r.metrics, which)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=r.label, color=COLORS[method(r.config)])
    if not ax.lines:
        return None
    ax.legend(fontsize=6)
    name = f"fig{key}.png"
    _save(fig, out / name)
    return name


def _vs_eps(rows, out: Path) -> str | None:
    fig, ax = _axes(CAPTIONS["3c"].split(": ", 1)[1], "ε (×1/255)")
    for r in rows:
        long_key = next((k for k, v in r.summary.get("accuracy", {}).items()
                         if isinstance(v, dict)), None)
        if long_key is None:
            continue
        points = sorted((255 * fraction_value(e), 100 * a)
                        for e, a in r.summary["accuracy"][long_key].items() if a is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                label=f"{r.label} ({long_key})", color=COLORS[method(r.config)])
    if not ax.lines:
        return None
    ax.legend(fontsize=6)
    _save(fig, out / "fig3c.png")
    return "fig3c.png"


def lam_group_key(cfg: dict) -> str:
    reduced = json.loads(json.dumps(cfg))
    for section, keys in _IGNORED.items():
        target = reduced if section == "" else reduced.get(section, {})
        for k in keys:
            target.pop(k, None)
    return json.dumps(reduced, sort_keys=True)


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
    radii = sorted({r.summary["attacks"]["autoattack"]["eps"] for g in groups for r in g
                    if r.summary.get("attacks", {}).get("autoattack", {}).get("eps") is not None})
    title = CAPTIONS["3d"].split(": ", 1)[1] + (
        f" (attacks at ε={', '.join(map(fraction_text, radii))})" if radii else "")
    fig, ax = _axes(title, "λ")
    table = sorted({r.summary.get("table_attack", "pgd-10") for g in groups for r in g})
    styles = {"clean": "tab:blue", **{t: "tab:red" for t in table}, "autoattack": "tab:purple"}
    for gi, group in enumerate(groups):
        group = sorted(group, key=lambda r: lam(r.config))
        for metric, color in styles.items():
            xs = [lam(r.config) for r in group]
            ys = [100 * (r.summary["accuracy"].get(metric) or 0.0) for r in group]
            ax.plot(xs, ys, marker="o", ms=3, color=color,
                    label=f"{metric}" + (f" (group {gi + 1})" if len(groups) > 1 else ""))
    for r in rows:
        if r.summary and method(r.config) == "pgd-at":
            for metric in (r.summary.get("table_attack", "pgd-10"), "autoattack"):
                value = r.summary["accuracy"].get(metric)
                if value is not None:
                    ax.axhline(100 * value, ls="--", lw=0.8, color=styles.get(metric, "tab:red"),
                               label=f"PGD-AT {metric}")
    ax.legend(fontsize=6)
    _save(fig, out / "fig3d.png")
    return "fig3d.png"


def draw_all(rows, out: Path) -> dict[str, str]:
    """Draw every panel that the given artifacts support; {panel: relpath} of those drawn."""
    drawn = {"3a": _per_epoch(rows, out, "clean", "3a"), "3b": _per_epoch(rows, out, "pgd", "3b"),
             "3c": _vs_eps(rows, out), "3d": _vs_lam(rows, out)}
    return {k: v for k, v in drawn.items() if v}
