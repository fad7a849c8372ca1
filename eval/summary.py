"""``summary.json`` from the per-sample store, and the sanity checks for weak attacks / masking.

Every accuracy is a share of samples in [0, 1]. PGD accuracies are worst case over iterates (see
attacks_eval). Comparisons between attacks are made on the SAME samples (the smaller subset).

Sanity checks (each failing one is a flag, printed loudly on stderr with its numbers):
- ``autoattack_above_pgd``: AutoAttack accuracy > PGD-10 accuracy (AA should be the stronger).
- ``long_pgd_above_pgd``: PGD-100 accuracy > PGD-10 accuracy at the same ε.
- ``accuracy_rises_with_eps``: PGD-100 accuracy at a larger ε > at a smaller ε.
- ``robust_to_autoattack_broken_by_pgd``: samples AutoAttack left correct but a PGD broke at the
  same ε.
- ``zero_input_gradients``: samples whose input gradient was exactly zero during PGD.
Any of these is a sign of a weak attack or of gradient masking; there is no tolerance: a single
sample is reported, so read the numbers before trusting the robust accuracies.
"""
from __future__ import annotations

import sys

import numpy as np

from daat.config import Config
from daat.eval import attention, results
from daat.eval.results import Store

NOTE = ("PGD accuracies are worst case over iterates: a sample counts as robust only if it is "
        "classified correctly clean, at every PGD iterate and at the final point. AutoAttack "
        "(pyautoattack, version standard: APGD-CE, APGD-T, FAB-T, Square) starts from clean "
        "correctness too.")


def _acc(correct: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    values = correct if mask is None else correct[mask]
    return float(np.mean(values)) if values.size else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def accuracy_keys(cfg: Config) -> tuple[str, str]:
    return f"pgd-{cfg.eval.pgd_steps}", f"pgd-{cfg.eval.pgd_long_steps}"


def _same_samples(clean, table, aa, aa_mask, longs: dict, long_mask, cfg: Config) -> dict:
    """Every attack's accuracy on the AutoAttack subset and on the PGD-100 subset."""
    short_key, long_key = accuracy_keys(cfg)
    same = {"autoattack_subset": {"clean": _acc(clean, aa_mask), short_key: _acc(table, aa_mask),
                                  "autoattack": _acc(aa, aa_mask)},
            "pgd_long_subset": {"clean": _acc(clean, long_mask), short_key: _acc(table, long_mask),
                                **{f"{long_key}@{e}": _acc(c, long_mask)
                                   for e, c in longs.items()}}}
    eps_key = results.eps_label(cfg.eval.eps)
    if eps_key in longs and not (aa_mask & ~long_mask).any():  # AA subset inside PGD-100's
        same["autoattack_subset"][f"{long_key}@{eps_key}"] = _acc(longs[eps_key], aa_mask)
    return same


def build(store: Store, cfg: Config, facts: dict, counts: list[dict], figure_files: list[str]
          ) -> dict:
    ev = cfg.eval
    short_key, long_key = accuracy_keys(cfg)
    by_name = {t.name: t for t in store.tasks}
    clean = store.read_full(by_name["clean"], "correct")
    table = store.read_full(by_name[results.table_task_name(ev)], "correct")
    aa_task = by_name.get(results.autoattack_task_name(ev))  # None: eval.autoattack=false
    aa = store.read_full(aa_task, "correct") if aa_task else np.zeros(store.n, dtype=bool)
    aa_mask = store.member("autoattack") if aa_task else np.zeros(store.n, dtype=bool)
    long_mask = store.member("long")
    longs = {results.eps_label(e): store.read_full(by_name[results.long_task_name(ev, e)],
                                                   "correct") for e in ev.eps_grid}
    zero_grad = np.zeros(store.n, dtype=bool)
    for task in (t for t in store.tasks if t.kind == "pgd"):
        zero_grad |= store.read_full(task, "zero_grad")
    flags, checks = sanity(cfg, clean, table, aa, aa_mask, longs, long_mask, zero_grad)
    grid = facts.get("grid", (1, 1))
    return {
        **{k: v for k, v in facts.items() if k != "grid"},
        "preset": cfg.preset, "seed": cfg.seed, "lam": cfg.loss.lam, "card": cfg.data.card,
        "accuracy": {"clean": _acc(clean), short_key: _acc(table),
                     "autoattack": _acc(aa, aa_mask),
                     long_key: {e: _acc(c, long_mask) for e, c in longs.items()}},
        "accuracy_on_same_samples": _same_samples(clean, table, aa, aa_mask, longs, long_mask,
                                                  cfg),
        "counts": {"val": int(store.group.attrs["n_val"]), "evaluated": store.n,
                   "pgd_long": int(long_mask.sum()), "autoattack": int(aa_mask.sum()),
                   "chunk_size": store.chunk_size,
                   "chunks": {g: store.n_chunks(g) for g in results.GROUPS}},
        "attacks": attack_facts(cfg),
        "attention": attention_summary(store, int(grid[0] * grid[1]), short_key, ev.eps),
        "sanity": {"flags": flags, "checks": checks},
        "resume": {"chunks_computed": _sum(c["computed"] for c in counts),
                   "chunk_tasks_computed": sum(sum(c["computed"].values()) for c in counts),
                   "chunk_tasks_reused": sum(c["reused"] for c in counts)},
        # this invocation's compute time per task, summed over ranks (earlier runs' chunks: 0)
        "compute_seconds": {k: round(v, 1) for k, v in
                            _sum(c.get("seconds", {}) for c in counts).items()},
        "figures": figure_files,
        "note": NOTE,
    }


def _sum(dicts):
    """Key-wise sum of per-rank dicts."""
    total: dict = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def attack_facts(cfg: Config) -> dict:
    ev = cfg.eval
    short_key, long_key = accuracy_keys(cfg)
    return {
        short_key: {"eps": ev.eps / 255, "eps_255": ev.eps, "alpha": ev.alpha / 255,
                    "steps": ev.pgd_steps, "random_start": True, "worst_case_over_iterates": True},
        long_key: {"eps_255": list(ev.eps_grid), "alpha": f"{ev.pgd_long_alpha_frac:g} x eps",
                   "steps": ev.pgd_long_steps, "random_start": True,
                   "worst_case_over_iterates": True},
        "autoattack": {"eps": ev.eps / 255, "eps_255": ev.eps, "norm": "Linf",
                       "version": ev.autoattack_version,
                       "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
                       "package": "pyautoattack"},
        "seed": ev.seed,
    }


def attention_summary(store: Store, n_patches: int, attack_key: str, eps255: float) -> dict:
    def mean(name: str) -> float | None:
        values = store.read(f"{results.ATTENTION}/{name}")
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    k = attention.top_k_count(n_patches, 0.2)
    return {"attack": f"{attack_key} at eps {eps255:g}/255",
            "cos_clean_adv": mean("cos"), "js_clean_adv": mean("js"),
            "top20_mass_clean": mean("top_clean"), "top20_mass_adv": mean("top_adv"),
            "cos_attention_saliency_clean": mean("cos_g_clean"),
            "cos_attention_saliency_adv": mean("cos_g_adv"),
            "top20_patches": k, "top20_uniform_baseline": k / n_patches,
            "js_unit": "nats (max ln 2 = 0.693)"}


def _flag(name: str, message: str, **numbers) -> dict:
    return {"name": name, "message": message, "numbers": numbers}


def sanity(cfg: Config, clean, table, aa, aa_mask, longs: dict, long_mask, zero_grad
           ) -> tuple[list[dict], list[dict]]:
    ev = cfg.eval
    short_key, long_key = accuracy_keys(cfg)
    eps_key = results.eps_label(ev.eps)
    checks = []

    def check(name: str, failed: bool, message: str, **numbers) -> None:
        checks.append({"name": name, "passed": not failed, "numbers": numbers})
        if failed:
            flags.append(_flag(name, message, **numbers))

    flags: list[dict] = []
    n_aa = int(aa_mask.sum())
    if n_aa:
        acc_aa, acc_pgd = _acc(aa, aa_mask), _acc(table, aa_mask)
        check("autoattack_above_pgd", acc_aa > acc_pgd,
              f"AutoAttack accuracy {_pct(acc_aa)} is ABOVE {short_key} accuracy {_pct(acc_pgd)} "
              f"on the same {n_aa} samples: AutoAttack should be the stronger attack",
              autoattack=acc_aa, pgd=acc_pgd, samples=n_aa)
    if eps_key in longs and long_mask.any():
        acc_long, acc_short = _acc(longs[eps_key], long_mask), _acc(table, long_mask)
        check("long_pgd_above_pgd", acc_long > acc_short,
              f"{long_key} accuracy {_pct(acc_long)} is ABOVE {short_key} accuracy "
              f"{_pct(acc_short)} at eps {eps_key}/255 on the same {int(long_mask.sum())} samples",
              long_pgd=acc_long, pgd=acc_short, samples=int(long_mask.sum()))
    if long_mask.any():
        accs = [(e, _acc(c, long_mask)) for e, c in longs.items()]
        rises = [(a, b) for (a, b) in zip(accs, accs[1:]) if b[1] > a[1]]
        check("accuracy_rises_with_eps", bool(rises),
              f"{long_key} accuracy RISES with eps: " + ", ".join(
                  f"{_pct(a[1])} at {a[0]}/255 -> {_pct(b[1])} at {b[0]}/255" for a, b in rises),
              accuracy={e: a for e, a in accs})
    if n_aa:
        broken = ~table.astype(bool)
        if eps_key in longs:
            broken |= long_mask & ~longs[eps_key].astype(bool)
        odd = aa_mask & aa.astype(bool) & broken
        check("robust_to_autoattack_broken_by_pgd", bool(odd.any()),
              f"{int(odd.sum())} of {n_aa} samples stay correct under AutoAttack but a PGD at the "
              f"same eps broke them", samples=int(odd.sum()), of=n_aa)
    check("zero_input_gradients", bool(zero_grad.any()),
          f"{int(zero_grad.sum())} samples had an all-zero input gradient during PGD "
          f"(gradient masking or underflow): gradient attacks cannot be trusted on them",
          samples=int(zero_grad.sum()), of=len(zero_grad))
    return flags, checks


def shout(flags: list[dict]) -> None:
    """Print every flag on stderr where nobody can miss it."""
    if not flags:
        print("[evaluate] sanity checks: all passed (no sign of a weak attack or gradient "
              "masking)", file=sys.stderr, flush=True)
        return
    bar = "!" * 100
    lines = [bar, f"!!! {len(flags)} SANITY FLAG(S): the robust accuracies below may be "
                  f"OVERESTIMATED (weak attack or gradient masking)"]
    lines += [f"!!! [{f['name']}] {f['message']}" for f in flags]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr, flush=True)


def print_table(data: dict) -> None:
    acc = data["accuracy"]
    parts = []
    for key, value in acc.items():
        if isinstance(value, dict):
            parts.append(f"{key}: " + " ".join(f"{e}/255={_pct(v)}" for e, v in value.items()))
        else:
            parts.append(f"{key}: {_pct(value)}")
    att = data["attention"]
    if att["cos_clean_adv"] is not None:
        parts.append(f"attention cos(A(x),A(x_adv))={att['cos_clean_adv']:.3f} "
                     f"JS={att['js_clean_adv']:.4f} top-20% mass clean/adv="
                     f"{att['top20_mass_clean']:.3f}/{att['top20_mass_adv']:.3f} "
                     f"(uniform {att['top20_uniform_baseline']:.3f})")
    for key, d in ((k, v) for k, v in (data.get("cue_conflict") or {}).items()
                   if isinstance(v, dict)):
        bias = "n/a" if d["shape_bias"] is None else f"{d['shape_bias']:.3f}"
        parts.append(f"cue-conflict {key}: shape {_pct(d['shape'])} texture "
                     f"{_pct(d['texture'])} shape bias {bias} (n={d['n']})")
    print("[evaluate] " + "\n[evaluate] ".join(parts), file=sys.stderr, flush=True)
