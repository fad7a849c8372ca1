"""``daat report``: Table 1 and Figure 3 (markdown + PNG) over run and eval artifacts.

Inputs are run and/or eval artifact directories (or directories holding artifacts). Each eval is
paired with its run through its lineage ([run id, shard id]); a run given without an eval gets a
row without test numbers; an eval whose run was not given is paired with the run of that id found
beside it (same parent directory) when there is one (the gathering is ``report_rows.py``).

Outputs in ``out``: ``report.md`` with
- Table 1 (clean / PGD-10 / AutoAttack per evaluation, method, preset, seed, λ, sample counts;
  for ImageNet-100 runs the paper's numbers beside ours),
- Fig. 3a/3b: clean and PGD validation accuracy per epoch (the run's ``metrics.jsonl``),
- Fig. 3c: robust accuracy vs ε (PGD-100 from each eval),
- Fig. 3d: clean / PGD-10 / AutoAttack vs λ, when ≥ 2 runs differ only in ``loss.lam``,
- attention-under-attack numbers, sanity flags, and each eval's Grad-CAM figures (copied in).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from daat.artifacts import atomic_write_text
from daat.config import fraction_text
from daat.errors import DaatError
from daat.eval import paper, report_figures
from daat.eval.report_figures import lam, method, radius_of_key
from daat.eval.report_rows import METHOD_NAMES, Row, gather

CUE_TEXT = (
    "Each image shows the shape of class i with the texture that the spurious training "
    "set ties to class j ≠ i; accuracies are the share of predictions equal to i (shape) "
    "and to j (texture); shape bias = shape / (shape + texture) (Geirhos et al. 2019)."
)


# -- markdown --------------------------------------------------------------------------------
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def table_attack(r: Row) -> str:
    """The summary key of the PGD the evaluation put in Table 1 (pgd-10 unless configured)."""
    return r.summary.get("table_attack", "pgd-10")


def table1(rows: list[Row]) -> list[str]:
    show_paper = any(paper.matches_paper(r.config) for r in rows)
    attacks = sorted({table_attack(r) for r in rows if r.summary}) or ["pgd-10"]
    head = [
        "method",
        "preset",
        "seed",
        "λ",
        "clean",
        " / ".join(a.upper() for a in attacks),
        "AutoAttack",
        "n (clean / AA)",
        "run",
        "eval",
    ]
    if show_paper:
        head.append("paper clean / PGD-10 / AA")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = r.summary.get("accuracy", {})
        counts = r.summary.get("counts", {})
        cells = [
            METHOD_NAMES[method(r.config)],
            f"`{r.config.get('preset') or '-'}`",
            str(r.config.get("seed")),
            f"{lam(r.config):g}",
            _pct(acc.get("clean")),
            _pct(acc.get(table_attack(r))),
            _pct(acc.get("autoattack")),
            f"{counts.get('evaluated', '—')} / {counts.get('autoattack', '—')}",
            f"`{r.run.id}`" if r.run else "—",
            f"`{r.eval.id}`" if r.eval else "not evaluated",
        ]
        if show_paper:
            ref = paper.paper_row(method(r.config), r.config)
            cells.append(" / ".join(f"{v:.2f}" for v in ref) if ref else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def same_samples_table(rows: list[Row]) -> list[str]:
    """Every attack on the AutoAttack subset itself, so the attacks compare on the same images."""
    keys = sorted(
        {
            k
            for r in rows
            for k in r.summary.get("accuracy_on_same_samples", {}).get("autoattack_subset", {})
        },
        key=lambda k: (k == "autoattack", k != "clean", "@" in k, k),
    )  # weakest first
    if not keys:
        return []
    lines = ["| run | " + " | ".join(keys) + " | n |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        same = r.summary.get("accuracy_on_same_samples", {}).get("autoattack_subset")
        if same:
            lines.append(
                f"| {r.label} | "
                + " | ".join(_pct(same.get(k)) for k in keys)
                + f" | {r.summary['counts']['autoattack']} |"
            )
    return lines


def _num(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def robust_vs_eps_table(rows: list[Row]) -> list[str]:
    """Fig. 3c's numbers: PGD-100 accuracy (%) at each ε of each evaluation."""
    grids = [
        (r, k, v)
        for r in rows
        for k, v in r.summary.get("accuracy", {}).items()
        if isinstance(v, dict)
    ]
    if not grids:
        return []
    radii = [{radius_of_key(e, r.summary): a for e, a in values.items()} for r, _, values in grids]
    eps = sorted({e for by_radius in radii for e in by_radius})
    lines = [
        "| run | attack | " + " | ".join(f"ε={fraction_text(e)}" for e in eps) + " | n |",
        "|---|---|" + "---|" * (len(eps) + 1),
    ]
    for (r, key, _), by_radius in zip(grids, radii):
        lines.append(
            f"| {r.label} | {key} | "
            + " | ".join(_pct(by_radius.get(e)) for e in eps)
            + f" | {r.summary.get('counts', {}).get('pgd_long', '—')} |"
        )
    return lines


def attention_table(rows: list[Row]) -> list[str]:
    lines = [
        "| run | attack | cos(A(x), G) | cos(A(x_adv), G) | cos(A(x), A(x_adv)) | "
        "JS(A(x) ‖ A(x_adv)) [nats] | top-20% G mass, clean | top-20% G mass, adv | "
        "uniform baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        att = r.summary.get("attention")
        if not att:
            continue
        lines.append(
            f"| {r.label} | {att['attack']} | "
            f"{_num(att.get('cos_attention_saliency_clean'))} | "
            f"{_num(att.get('cos_attention_saliency_adv'))} | "
            f"{_num(att['cos_clean_adv'])} | "
            f"{_num(att['js_clean_adv'])} | {_num(att['top20_mass_clean'])} | "
            f"{_num(att['top20_mass_adv'])} | {_num(att['top20_uniform_baseline'])} |"
        )
    return lines


def cue_conflict_table(rows: list[Row]) -> list[str]:
    """Shape / texture accuracy and shape bias on the cue-conflict split, clean and attacked."""
    lines = [
        "| run | input | shape acc | texture acc | shape bias | n |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cue = r.summary.get("cue_conflict") or {}
        for key, d in ((k, v) for k, v in cue.items() if isinstance(v, dict)):
            lines.append(
                f"| {r.label} | {key} | {_pct(d['shape'])} | {_pct(d['texture'])} | "
                f"{_num(d['shape_bias'])} | {d['n']} |"
            )
    return lines if len(lines) > 2 else []


def sanity_lines(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        if not r.eval:
            continue
        flags = r.summary.get("sanity", {}).get("flags", [])
        if flags:
            lines.append(
                f"- **{r.label}: {len(flags)} flag(s)** — the model or the attacks look "
                f"broken; do not trust its robust numbers until each is explained:"
            )
            lines += [f"  - `{f['name']}`: {f['message']}" for f in flags]
        else:
            lines.append(
                f"- {r.label}: all sanity checks passed "
                f"({', '.join(c['name'] for c in r.summary['sanity']['checks'])})."
            )
    return lines


def copy_eval_figures(rows: list[Row], out: Path) -> list[str]:
    """Copy each eval's figure files (PNG and PDF) under ``out/figures/<eval id>/``; markdown
    showing each PNG with a link to its PDF."""
    lines = []
    for r in rows:
        for rel in r.summary.get("figures", []):
            src = r.eval.path / rel
            if not src.is_file():
                continue
            dst = out / "figures" / r.eval.id / Path(rel).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            if dst.suffix != ".png":
                continue
            pdf = dst.with_suffix(".pdf")
            link = (
                f" ([PDF]({pdf.relative_to(out).as_posix()}))"
                if (src.with_suffix(".pdf").is_file())
                else ""
            )
            lines += [
                f"**{r.label}** — `{Path(rel).name}`{link}",
                "",
                f"![{r.label} {Path(rel).stem}]({dst.relative_to(out).as_posix()})",
                "",
            ]
    return lines


def attack_text(rows: list[Row]) -> str:
    """The PGD settings the evaluations used, from their summaries."""
    seen = []
    for r in rows:
        for key, facts in r.summary.get("attacks", {}).items():
            if key.startswith("pgd-") and isinstance(facts, dict):
                alpha = facts.get("alpha")
                step = f"α = {fraction_text(alpha)}" if isinstance(alpha, float) else f"α = {alpha}"
                eps = facts.get("eps")
                radius = (
                    f"ε = {fraction_text(eps)}"
                    if isinstance(eps, float)
                    else "ε = " + ", ".join(map(fraction_text, eps))
                    if eps
                    else ""
                )
                text = f"{key}: {facts.get('steps')} steps, {radius}, {step}"
                if text not in seen:
                    seen.append(text)
    return "; ".join(seen) or "settings not recorded"


def autoattack_eps_text(rows: list[Row]) -> str:
    """The AutoAttack radii the evaluations used, from their summaries."""
    radii = sorted(
        {
            r.summary["attacks"]["autoattack"]["eps"]
            for r in rows
            if r.summary.get("attacks", {}).get("autoattack", {}).get("eps") is not None
        }
    )
    return "ε = " + " / ".join(map(fraction_text, radii)) if radii else "ε not recorded"


def table1_section(rows: list[Row]) -> list[str]:
    md = ["## Table 1: clean / PGD / AutoAttack accuracy (%)", ""] + table1(rows)
    subsets = sorted(
        {
            (
                r.summary["counts"]["evaluated"],
                r.summary["counts"]["autoattack"],
                r.summary["counts"]["val"],
            )
            for r in rows
            if r.summary
        }
    )
    md += [
        "",
        "Accuracies are on the val split: clean and PGD-10 on the evaluated samples, "
        f"AutoAttack (pyautoattack `standard`: APGD-CE, APGD-T, FAB-T, Square; L∞, "
        f"{autoattack_eps_text(rows)}) on a fixed random subset of them, the same for every run — "
        + "; ".join(f"{e} evaluated of {v} val samples, AutoAttack on {a}" for e, a, v in subsets)
        + ".",
        "PGD accuracies are worst case over iterates (random start; " + attack_text(rows) + ").",
    ]
    n_text = "; ".join(f"{e} val images evaluated (AutoAttack on {a})" for e, a, _ in subsets)
    md += [""] + paper.describe(
        [r.config for r in rows], [r.config.get("seed") for r in rows], n_text or "not evaluated"
    )
    if any(paper.matches_paper(r.config) for r in rows):
        md += ["The last column is the paper's Table 1 for the same method."]
    same = same_samples_table(rows)
    if same:
        md += [
            "",
            "The same attacks on the AutoAttack subset only (accuracy %, identical images "
            "for every attack, so AA ≤ PGD-100 ≤ PGD-10 ≤ clean is expected):",
            "",
        ] + same
    return md


def figure3_section(rows: list[Row], out: Path) -> list[str]:
    figs = report_figures.draw_all(rows, out)
    md = ["## Figure 3", ""]
    for key, caption in report_figures.CAPTIONS.items():
        if key in figs:
            pdf = Path(figs[key]).with_suffix(".pdf").as_posix()
            md += [f"**{caption}** ([PDF]({pdf}))", "", f"![{caption}]({figs[key]})", ""]
        else:
            md += [f"*{caption}: not drawn ({report_figures.MISSING[key]}).*", ""]
    return md + ["Fig. 3c in numbers (PGD-100 accuracy, %):", ""] + robust_vs_eps_table(rows)


def render(rows: list[Row], out: Path) -> str:
    md = ["# DAAT report", ""] + table1_section(rows) + [""] + figure3_section(rows, out)
    md += ["", "## Attention under attack", ""] + attention_table(rows)
    md += [
        "",
        "A(x): the student's CLS→patch attention (unit mass); cos(A, G): its cosine with "
        "the depth saliency G(x) (1 − L_align); JS in nats (max ln 2); "
        "top-20% G mass: share of A on the 20% patches with the highest depth saliency G(x).",
        "",
        "## Sanity checks",
        "",
    ] + sanity_lines(rows)
    cue = cue_conflict_table(rows)
    if cue:
        md += ["", "## Shape vs texture (cue-conflict split)", "", CUE_TEXT, ""] + cue
    figures = copy_eval_figures(rows, out)
    if figures:
        md += ["", "## Grad-CAM and attention under attack (Fig. 2/4 style)", ""] + figures
    return "\n".join(md) + "\n"


def run(paths: list[str], out: str) -> Path:
    rows = gather(list(paths))
    if not rows:
        raise DaatError("report: no run or eval artifacts given")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    atomic_write_text(path, render(rows, out_dir))
    return path
