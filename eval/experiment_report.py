"""``daat experiment collect``: the experiment artifact from whatever cells have finished.

Files (recorded in the manifest; the artifact is complete once every cell is evaluated; its
lineage names every shard, run and eval artifact it aggregates):
- ``results.csv``: one row per evaluated cell: cell, card, method, seed, one column per grid
  axis, run and eval ids, then every number of the evaluation's summary.json (accuracies, the
  same-sample table, counts, attention numbers, cue-conflict numbers, the count of sanity flags)
  as ``section.key`` columns. Nothing time- or machine-dependent goes in, so the same cells give
  the same file however they were run.
- ``report.md`` + ``figures/*.png``: Table 1 as mean ± std over seeds with 95% t intervals; the
  paired difference of each method against the baseline on the same val samples (per seed:
  McNemar exact p; pooled over seeds x samples: bootstrap interval); accuracy vs ε with bands over
  seeds (Fig. 3c); the λ sweep when ``loss.lam`` is a grid axis (Fig. 3d); per method the
  attention numbers and, on a card with a cue-conflict split, shape vs texture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daat.artifacts import Artifact, atomic_write_text
from daat.eval import experiment_figures, paper, stats
from daat.eval.experiment import Spec, Step, experiment_artifact, finished, record_relpath
from daat.eval.experiment_results import Result, gather, results_csv
from daat.eval.report_rows import METHOD_NAMES

CUE_TEXT = (
    "shape of class i, texture that the spurious train set ties to class j ≠ i; shape "
    "bias = shape / (shape + texture), Geirhos et al. 2019"
)


# -- markdown helpers --------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """The runs that differ only in their seed: one row of each table."""

    card: str
    method: str
    grid: tuple
    show_card: bool = False  # an experiment over several cards names the card in labels

    @property
    def label(self) -> str:
        name = METHOD_NAMES.get(Path(self.method).stem, Path(self.method).stem)
        return (
            name
            + "".join(f", {k}={v}" for k, v in self.grid)
            + (f" [{Path(self.card).stem}]" if self.show_card else "")
        )


def _fmt(values, scale: float = 100.0, digits: int = 2) -> str:
    """mean ± std [95% CI] (n) of the non-missing values, scaled (100: percent)."""
    values = [scale * v for v in values if v is not None]
    mean, std = stats.mean_std(values)
    if mean is None:
        return "—"
    if std is None:
        return f"{mean:.{digits}f} (1 seed)"
    low, high = stats.t_interval(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def grouped(rows: list[Result]) -> dict[Group, list[Result]]:
    """Rows by (card, method, grid values), in row order."""
    several = len({r.cell.card for r in rows}) > 1
    groups: dict[Group, list[Result]] = {}
    for r in rows:
        groups.setdefault(Group(*r.key, several), []).append(r)
    return groups


def pgd_key(summary: dict) -> str:
    """The summary key of the evaluation's Table 1 PGD."""
    return summary.get("table_attack") or next(
        k
        for k, v in summary["accuracy"].items()
        if k.startswith("pgd-") and not isinstance(v, dict)
    )


def table1(groups: dict[Group, list[Result]]) -> list[str]:
    show_paper = any(paper.matches_paper(r.run.config) for rs in groups.values() for r in rs)
    first = next(r for rs in groups.values() for r in rs)
    head = ["method", "seeds", "clean", pgd_key(first.summary).upper(), "AutoAttack"] + (
        ["paper clean / PGD-10 / AA"] if show_paper else []
    )
    body = []
    for group, rs in groups.items():
        acc = [r.summary["accuracy"] for r in rs]
        row = [
            group.label,
            str(len(rs)),
            _fmt(a.get("clean") for a in acc),
            _fmt(a.get(pgd_key(r.summary)) for a, r in zip(acc, rs)),
            _fmt(a.get("autoattack") for a in acc),
        ]
        if show_paper:
            from daat.eval.report_figures import method

            refs = {paper.paper_row(method(r.run.config), r.run.config) for r in rs}
            ref = refs.pop() if len(refs) == 1 else None
            row.append(" / ".join(f"{v:.2f}" for v in ref) if ref else "—")
        body.append(row)
    return _table(head, body)


def _aligned(a: dict, b: dict, metric: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Correctness of two evaluations on the samples both evaluated (and, for AutoAttack, both
    attacked), matched by sample key."""

    def pick(s):
        mask = s.get(f"{metric}_mask", np.ones(len(s["key"]), dtype=bool))
        return {k: bool(c) for k, c, m in zip(s["key"], s[metric], mask) if m}

    pa, pb = pick(a), pick(b)
    keys = sorted(set(pa) & set(pb))
    return (
        np.array([pa[k] for k in keys], dtype=bool),
        np.array([pb[k] for k in keys], dtype=bool),
        keys,
    )


def paired_section(spec: Spec, groups: dict[Group, list[Result]]) -> list[str]:
    body = []
    cache: dict[str, dict] = {}

    def samples(r: Result) -> dict:
        return cache.setdefault(r.eval.id, r.samples())

    for group, rs in groups.items():
        base = groups.get(
            Group(
                group.card,
                spec.baseline,
                group.grid if spec.baseline in spec.grid_methods else (),
                group.show_card,
            )
        )
        if group.method == spec.baseline or not base:
            continue
        by_seed = {r.cell.seed: r for r in base}
        pairs = [(r, by_seed[r.cell.seed]) for r in rs if r.cell.seed in by_seed]
        for metric, name in (("clean", "clean"), ("pgd", "PGD"), ("autoattack", "AutoAttack")):
            if not pairs or any(metric not in samples(r) for p in pairs for r in p):
                continue
            per_seed, diffs = [], []
            for r, b in pairs:
                a, c, keys = _aligned(samples(r), samples(b), metric)
                if not keys:
                    continue
                test = stats.mcnemar_exact(a, c)
                per_seed.append(
                    f"s{r.cell.seed}: {100 * (a.mean() - c.mean()):+.2f} "
                    f"(p={test.p:.3g}, n={len(keys)})"
                )
                diffs.append((keys, a.astype(int) - c.astype(int)))
            common = sorted(set.intersection(*(set(k) for k, _ in diffs))) if diffs else []
            pooled = "—"
            if common:
                matrix = np.stack([d[np.searchsorted(k, common)] for k, d in diffs])
                boot = stats.paired_bootstrap(matrix, spec.replicates, spec.bootstrap_seed)
                pooled = (
                    f"{100 * boot.mean:+.2f} [{100 * boot.low:+.2f}, {100 * boot.high:+.2f}]"
                    f" ({boot.seeds} seeds x {boot.samples} samples)"
                )
            body.append([group.label, name, "; ".join(per_seed) or "—", pooled])
    if not body:
        return [
            f"*No paired differences: the baseline `{spec.baseline}` has no evaluated cell "
            f"with the same seed (and grid values) as another method.*"
        ]
    return _table(
        [
            f"method vs {Path(spec.baseline).stem}",
            "metric",
            "per seed: Δ accuracy (pp), McNemar exact p",
            "pooled Δ (pp) [95% bootstrap]",
        ],
        body,
    )


def attention_section(groups: dict[Group, list[Result]]) -> list[str]:
    fields = [
        ("cos_attention_saliency_clean", "cos(A(x), G)"),
        ("top20_mass_clean", "A mass on top-20% G, clean"),
        ("top20_mass_adv", "A mass on top-20% G, adv"),
        ("cos_clean_adv", "drift: cos(A(x), A(x_adv))"),
        ("js_clean_adv", "drift: JS [nats]"),
    ]
    body = []
    for group, rs in groups.items():
        att = [r.summary.get("attention") or {} for r in rs]
        body.append([group.label] + [_fmt((a.get(f) for a in att), 1.0, 3) for f, _ in fields])
    uniform = next(
        (
            r.summary["attention"].get("top20_uniform_baseline")
            for rs in groups.values()
            for r in rs
            if r.summary.get("attention")
        ),
        None,
    )
    note = (
        f"Uniform attention puts {uniform:.3f} of its mass on the top-20% patches."
        if uniform is not None
        else ""
    )
    return _table(["method"] + [h for _, h in fields], body) + ["", note]


def cue_section(groups: dict[Group, list[Result]]) -> list[str]:
    body = []
    for group, rs in groups.items():
        cues = [r.summary.get("cue_conflict") for r in rs]
        if not all(cues):
            continue
        for key in (k for k, v in cues[0].items() if isinstance(v, dict)):
            body.append(
                [group.label, key]
                + [
                    _fmt(
                        (c[key][f] for c in cues), *((100.0, 2) if f != "shape_bias" else (1.0, 3))
                    )
                    for f in ("shape", "texture", "shape_bias")
                ]
                + [str(cues[0][key]["n"])]
            )
    return (
        _table(["method", "input", "shape acc (%)", "texture acc (%)", "shape bias", "n"], body)
        if body
        else []
    )


def render(spec: Spec, rows: list[Result], missing: list[str], figures: dict) -> str:
    groups = grouped(rows)
    counts = {(r.summary["counts"]["evaluated"], r.summary["counts"]["autoattack"]) for r in rows}
    n_text = "; ".join(f"{e} val images (AutoAttack on {a})" for e, a in sorted(counts)) or "—"
    md = [
        f"# Experiment `{spec.name}`",
        "",
        f"Spec: `{spec.path}`. "
        f"{len(rows)} of {len(rows) + len(missing)} cells evaluated"
        + (
            f"; still missing: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''} "
            f"(rerun `daat experiment` to finish them)."
            if missing
            else "."
        ),
        "",
    ]
    md += paper.describe([r.run.config for r in rows], [r.cell.seed for r in rows], n_text)
    attack = rows[0].summary.get("attention", {}).get("attack", "") if rows else ""
    md += [
        "",
        "## Table 1: accuracy (%) over seeds",
        "",
        "mean ± sample std [95% t interval of the mean]; one value per seed.",
        "",
    ]
    md += table1(groups) if rows else ["*No cell has been evaluated yet.*"]
    md += [
        "",
        f"PGD: the evaluation's Table 1 attack ({attack}); AutoAttack on a fixed subset, "
        f"the same for every run.",
    ]
    md += [
        "",
        f"## Paired differences against {Group('', spec.baseline, ()).label}",
        "",
        "Same val samples (matched by key) for both runs of a seed. Per seed: the accuracy "
        "difference and the exact McNemar p; pooled: the mean difference over seeds x samples "
        f"with a percentile bootstrap interval ({spec.replicates} replicates resampling seeds "
        f"and samples, bootstrap seed {spec.bootstrap_seed}).",
        "",
    ]
    md += paired_section(spec, groups)
    md += ["", "## Figures", ""]
    for rel, caption in figures.values():
        md += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    if "3d" not in figures:
        md += ["*Fig. 3d (λ sweep) not drawn: `loss.lam` is not a grid axis of this spec.*", ""]
    md += [
        "## Attention (per method, mean ± std over seeds)",
        "",
        f"A: the student's attention map; G: the depth saliency; adv: under {attack}.",
        "",
    ]
    md += attention_section(groups)
    cue = cue_section(groups)
    if cue:
        md += ["", "## Shape vs texture (cue-conflict split)", "", CUE_TEXT + ".", ""] + cue
    flagged = [r for r in rows if r.summary.get("sanity", {}).get("flags")]
    names = [
        "{} ({})".format(r.cell.name, ", ".join(f["name"] for f in r.summary["sanity"]["flags"]))
        for r in flagged
    ]
    md += [
        "",
        "## Sanity checks",
        "",
        f"{len(flagged)} of {len(rows)} evaluations raised sanity flags"
        + (
            ": " + "; ".join(names)
            if flagged
            else " (no sign of a weak attack or gradient masking)"
        )
        + ". Per-cell numbers: `results.csv`.",
    ]
    return "\n".join(md) + "\n"


def eps_curves(groups: dict[Group, list[Result]]) -> list[tuple[str, str, list, list, list]]:
    """(label, method, ε fractions, mean %, std %) of each group's accuracy under the long PGD
    (the summary's ε grid, eval.pgd_long_steps steps)."""
    from daat.eval.report_figures import radius_of_key

    curves = []
    for group, rs in groups.items():
        long = [
            next((v for v in r.summary["accuracy"].values() if isinstance(v, dict)), {}) for r in rs
        ]
        labels = sorted({e for d in long for e in d}, key=lambda e: radius_of_key(e, rs[0].summary))
        if not labels:
            continue
        means, stds = zip(
            *(stats.mean_std([100 * d[e] for d in long if d.get(e) is not None]) for e in labels)
        )
        curves.append(
            (
                group.label,
                Path(group.method).stem,
                [radius_of_key(e, rs[0].summary) for e in labels],
                list(means),
                list(stds),
            )
        )
    return curves


def collect(spec: Spec, steps: list[Step], out: str) -> Artifact:
    """Write the experiment artifact's files from the finished cells; complete when all are."""
    art = experiment_artifact(spec, out, lock=True)
    if art.complete:
        return art  # every cell was in it: nothing new to aggregate
    try:
        return _write(spec, steps, out, art)
    finally:
        art.unlock()


def _write(spec: Spec, steps: list[Step], out: str, art: Artifact) -> Artifact:
    rows, missing = gather(spec, steps, out, art)
    groups = grouped(rows)
    long_key = next(
        (k for r in rows for k, v in r.summary["accuracy"].items() if isinstance(v, dict)), "pgd"
    )
    figures = experiment_figures.draw(art.path, spec, groups, eps_curves(groups), long_key)
    art.write_bytes("results.csv", results_csv(spec, rows).encode())
    atomic_write_text(art.path / "report.md", render(spec, rows, missing, figures))
    art.record_file("report.md")
    for rel, _ in figures.values():
        art.record_file(rel)
        art.record_file(str(Path(rel).with_suffix(".pdf")))
    made = []
    for step in steps:
        if (art.path / record_relpath(step.name)).is_file():
            art.record_file(record_relpath(step.name))
            found = finished(art, step.name, out)
            made += [found.id] if found is not None else []
    # The key comes from the spec alone; the lineage names what it aggregates, so `daat artifacts
    # gc --keep` keeps those artifacts and `rm` refuses to remove them while this one stays.
    art.manifest["lineage"] = sorted(set(made))
    art.extra.update(
        {"cells": len(rows) + len(missing), "evaluated": len(rows), "missing": missing}
    )
    if missing:
        art.mark_incomplete()
    else:
        art.mark_complete()
    return art
