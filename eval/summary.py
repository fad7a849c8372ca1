"""``summary.json`` from the per-sample store: accuracies (also on the same samples), the attacks
as run, attention under attack, the sanity checks' outcome (``sanity.py``) and what this
invocation computed.

Every accuracy is a share of samples in [0, 1]. PGD accuracies are worst case over iterates (see
attacks_eval). Comparisons between attacks are made on the SAME samples (the smaller subset).
Radii are fractions of the [0, 1] pixel range; keys and messages write them as ``4/255``.
"""

from __future__ import annotations

import sys

import numpy as np

from daat.config import Config, fraction_text
from daat.eval import attention, results
from daat.eval.context import EvalContext, RankWork
from daat.eval.results import Store, accuracy_keys
from daat.eval.sanity import Evidence, gather, sanity
from daat.eval.sanity import accuracy as _acc
from daat.eval.sanity import pct as _pct

NOTE = (
    "PGD accuracies are worst case over iterates: a sample counts as robust only if it is "
    "classified correctly clean, at every PGD iterate and at the final point. AutoAttack "
    "(pyautoattack, version standard: APGD-CE, APGD-T, FAB-T, Square) starts from clean "
    "correctness too."
)


def _same_samples(ev: Evidence, cfg: Config) -> dict:
    """Every attack's accuracy on the AutoAttack subset and on the PGD-100 subset."""
    short_key, long_key = accuracy_keys(cfg)
    aa_mask, long_mask = ev.aa_mask, ev.long_mask
    same = {
        "autoattack_subset": {
            "clean": _acc(ev.clean, aa_mask),
            short_key: _acc(ev.table, aa_mask),
            "autoattack": _acc(ev.aa, aa_mask),
        },
        "pgd_long_subset": {
            "clean": _acc(ev.clean, long_mask),
            short_key: _acc(ev.table, long_mask),
            **{f"{long_key}@{e}": _acc(c, long_mask) for e, c in ev.longs.items()},
        },
    }
    eps_key = fraction_text(cfg.eval.eps)
    if eps_key in ev.longs and not (aa_mask & ~long_mask).any():  # AA subset inside PGD-100's
        same["autoattack_subset"][f"{long_key}@{eps_key}"] = _acc(ev.longs[eps_key], aa_mask)
    return same


def build(
    store: Store, cfg: Config, context: EvalContext, work: list[RankWork], figure_files: list[str]
) -> dict:
    """summary.json of a finished evaluation (every chunk done) from its store; ``work`` holds
    every rank's share of this invocation."""
    ev = cfg.eval
    num_classes = context.num_classes
    short_key, long_key = accuracy_keys(cfg)
    evidence = gather(store, cfg, num_classes)
    flags, checks = sanity(cfg, evidence)
    return {
        **context.to_dict(),
        "preset": cfg.preset,
        "seed": cfg.seed,
        "lam": cfg.loss.lam,
        "card": cfg.data.card,
        "num_classes": num_classes,
        "table_attack": short_key,
        "accuracy": {
            "clean": _acc(evidence.clean),
            short_key: _acc(evidence.table),
            "autoattack": _acc(evidence.aa, evidence.aa_mask),
            long_key: {e: _acc(c, evidence.long_mask) for e, c in evidence.longs.items()},
        },
        "accuracy_on_same_samples": _same_samples(evidence, cfg),
        "counts": {
            "val": int(store.group.attrs["n_val"]),
            "evaluated": store.n,
            "pgd_long": int(evidence.long_mask.sum()),
            "autoattack": int(evidence.aa_mask.sum()),
            "chunk_size": store.chunk_size,
            "chunks": {g: store.n_chunks(g) for g in results.GROUPS},
        },
        "attacks": attack_facts(cfg),
        "attention": attention_summary(store, context.n_patches, short_key, ev.eps),
        "sanity": {"flags": flags, "checks": checks},
        "resume": {
            "chunks_computed": _sum(w.computed for w in work),
            "chunk_tasks_computed": sum(sum(w.computed.values()) for w in work),
            "chunk_tasks_reused": sum(w.reused for w in work),
        },
        # this invocation's compute time per task, summed over ranks (earlier runs' chunks: 0)
        "compute_seconds": {k: round(v, 1) for k, v in _sum(w.seconds for w in work).items()},
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
    """The attacks as run: radii and steps as fractions (``eps``) and as text (``eps_text``)."""
    ev = cfg.eval
    short_key, long_key = accuracy_keys(cfg)
    label = fraction_text
    return {
        short_key: {
            "eps": ev.eps,
            "eps_text": label(ev.eps),
            "alpha": ev.alpha,
            "alpha_text": label(ev.alpha),
            "steps": ev.pgd_steps,
            "random_start": True,
            "worst_case_over_iterates": True,
        },
        long_key: {
            "eps": list(ev.eps_grid),
            "eps_text": [label(e) for e in ev.eps_grid],
            "alpha": f"{ev.pgd_long_alpha_frac:g} x eps",
            "steps": ev.pgd_long_steps,
            "random_start": True,
            "worst_case_over_iterates": True,
        },
        "autoattack": {
            "eps": ev.eps,
            "eps_text": label(ev.eps),
            "norm": "Linf",
            "version": ev.autoattack_version,
            "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
            "package": "pyautoattack",
        },
        "seed": ev.seed,
    }


def attention_summary(store: Store, n_patches: int, attack_key: str, eps: float) -> dict:
    def mean(name: str) -> float | None:
        values = store.read(f"{results.ATTENTION}/{name}")
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    k = attention.top_k_count(n_patches, attention.TOP_MASS_FRAC)
    return {
        "attack": f"{attack_key} at eps {fraction_text(eps)}",
        "cos_clean_adv": mean("cos"),
        "js_clean_adv": mean("js"),
        "top20_mass_clean": mean("top_clean"),
        "top20_mass_adv": mean("top_adv"),
        "cos_attention_saliency_clean": mean("cos_g_clean"),
        "cos_attention_saliency_adv": mean("cos_g_adv"),
        "top20_patches": k,
        "top20_uniform_baseline": k / n_patches,
        "js_unit": "nats (max ln 2 = 0.693)",
    }


def print_table(data: dict) -> None:
    acc = data["accuracy"]
    parts = []
    for key, value in acc.items():
        if isinstance(value, dict):
            parts.append(f"{key}: " + " ".join(f"{e}={_pct(v)}" for e, v in value.items()))
        else:
            parts.append(f"{key}: {_pct(value)}")
    att = data["attention"]
    if att["cos_clean_adv"] is not None:
        parts.append(
            f"attention ({att['attack']}) cos(A(x),A(x_adv))={att['cos_clean_adv']:.3f} "
            f"JS={att['js_clean_adv']:.4f} top-20% mass clean/adv="
            f"{att['top20_mass_clean']:.3f}/{att['top20_mass_adv']:.3f} "
            f"(uniform {att['top20_uniform_baseline']:.3f})"
        )
    for key, d in (
        (k, v) for k, v in (data.get("cue_conflict") or {}).items() if isinstance(v, dict)
    ):
        bias = "n/a" if d["shape_bias"] is None else f"{d['shape_bias']:.3f}"
        parts.append(
            f"cue-conflict {key}: shape {_pct(d['shape'])} texture "
            f"{_pct(d['texture'])} shape bias {bias} (n={d['n']})"
        )
    print("[evaluate] " + "\n[evaluate] ".join(parts), file=sys.stderr, flush=True)
