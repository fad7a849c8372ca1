"""What the per-sample results say about the model and the attacks: ``Evidence`` (every array
the checks read, gathered once from the store) and the sanity checks for broken models and for
weak attacks / masking.

Every accuracy is a share of samples in [0, 1]; comparisons between attacks are made on the SAME
samples.

Sanity checks (each failing one is a flag, printed loudly on stderr with its numbers):
- ``autoattack_above_pgd``: AutoAttack accuracy > PGD-10 accuracy (AA should be the stronger).
- ``long_pgd_above_pgd``: PGD-100 accuracy > PGD-10 accuracy at the same ε.
- ``accuracy_rises_with_eps``: PGD-100 accuracy at a larger ε > at a smaller ε.
- ``robust_flat_in_eps``: PGD-100 accuracy at the largest ε of eval.eps_grid is not below the one
  at the smallest (1/255 -> 10/255 by default), though above 0: nothing an attack does hurts it.
- ``robust_to_autoattack_broken_by_pgd``: samples AutoAttack left correct but a PGD broke at the
  same ε.
- ``zero_input_gradients``: samples whose input gradient was exactly zero during PGD.
- ``near_chance``: clean accuracy within 2 points of chance (1 / number of classes) or below.
- ``one_class_dominates``: one class gets more than 30% of the clean predictions (and more than
  twice its share of the true labels).
- ``clean_below_robust``: an attack's adversarial points are classified correctly more often than
  the clean images (on the same samples).
The first six are signs of a weak attack or of gradient masking, the last three of a model that
has learned nothing or is broken; there is no tolerance: a single sample is reported, so read the
numbers before trusting the robust accuracies.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from daat.config import Config, fraction_text
from daat.eval import results
from daat.eval.results import Store, accuracy_keys

CHANCE_MARGIN = 0.02  # near_chance: clean accuracy <= 1/C + this
DOMINANT_SHARE = 0.30  # one_class_dominates: a class's share of the clean predictions above this


@dataclass(frozen=True)
class Evidence:
    """What the sanity checks read, each array over all n evaluated samples (``read_full``:
    outside a task's subset its fill value). ``longs``/``long_preds`` are keyed by eps label in
    increasing ε."""

    labels: np.ndarray
    clean: np.ndarray  # bool, clean correct
    clean_pred: np.ndarray
    table: np.ndarray  # bool, robust under the Table 1 PGD
    table_pred: np.ndarray  # prediction at its adversarial point
    aa: np.ndarray
    aa_pred: np.ndarray
    aa_mask: np.ndarray  # bool, the AutoAttack subset (all False without AutoAttack)
    longs: dict
    long_preds: dict
    long_mask: np.ndarray
    zero_grad: np.ndarray
    num_classes: int


def accuracy(correct: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """The share of True in ``correct`` (within ``mask``); None when no sample is counted."""
    values = correct if mask is None else correct[mask]
    return float(np.mean(values)) if values.size else None


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def gather(store: Store, cfg: Config, num_classes: int) -> Evidence:
    """Every array the checks and the summary read, from the store, in one pass."""
    ev = cfg.eval
    by_name = {t.name: t for t in store.tasks}
    aa_task = by_name.get(results.autoattack_task_name(ev))  # None: eval.autoattack=false
    none = np.zeros(store.n, dtype=bool)
    table = by_name[results.table_task_name(ev)]
    longs = {fraction_text(e): by_name[results.long_task_name(ev, e)] for e in ev.eps_grid}
    zero_grad = none.copy()
    for task in (t for t in store.tasks if t.kind == "pgd"):
        zero_grad |= store.read_full(task, "zero_grad")
    return Evidence(
        labels=store.read("label").astype(np.int64),
        clean=store.read_full(by_name["clean"], "correct"),
        clean_pred=store.read_full(by_name["clean"], "pred"),
        table=store.read_full(table, "correct"),
        table_pred=store.read_full(table, "pred"),
        aa=store.read_full(aa_task, "correct") if aa_task else none,
        aa_pred=store.read_full(aa_task, "pred") if aa_task else np.full(store.n, -1),
        aa_mask=store.member("autoattack") if aa_task else none,
        longs={e: store.read_full(t, "correct") for e, t in longs.items()},
        long_preds={e: store.read_full(t, "pred") for e, t in longs.items()},
        long_mask=store.member("long"),
        zero_grad=zero_grad,
        num_classes=num_classes,
    )


def _flag(name: str, message: str, **numbers) -> dict:
    return {"name": name, "message": message, "numbers": numbers}


class _Checks:
    """Collects every check's outcome; the failed ones also become flags."""

    def __init__(self):
        self.flags: list[dict] = []
        self.checks: list[dict] = []

    def __call__(self, name: str, failed: bool, message: str, **numbers) -> None:
        self.checks.append({"name": name, "passed": not failed, "numbers": numbers})
        if failed:
            self.flags.append(_flag(name, message, **numbers))


def sanity(cfg: Config, ev: Evidence) -> tuple[list[dict], list[dict]]:
    """(flags, checks): every check with its numbers; flags are the failed ones."""
    check = _Checks()
    _attack_checks(cfg, ev, check)
    _model_checks(cfg, ev, check)
    return check.flags, check.checks


def _attack_checks(cfg: Config, ev: Evidence, check: _Checks) -> None:
    short_key, long_key = accuracy_keys(cfg)
    eps_key = fraction_text(cfg.eval.eps)
    aa_mask, long_mask, longs = ev.aa_mask, ev.long_mask, ev.longs
    n_aa, n_long = int(aa_mask.sum()), int(long_mask.sum())
    if n_aa:
        acc_aa, acc_pgd = accuracy(ev.aa, aa_mask), accuracy(ev.table, aa_mask)
        check(
            "autoattack_above_pgd",
            acc_aa > acc_pgd,
            f"AutoAttack accuracy {pct(acc_aa)} is ABOVE {short_key} accuracy {pct(acc_pgd)} "
            f"on the same {n_aa} samples: AutoAttack should be the stronger attack",
            autoattack=acc_aa,
            pgd=acc_pgd,
            samples=n_aa,
        )
    if eps_key in longs and n_long:
        acc_long, acc_short = accuracy(longs[eps_key], long_mask), accuracy(ev.table, long_mask)
        check(
            "long_pgd_above_pgd",
            acc_long > acc_short,
            f"{long_key} accuracy {pct(acc_long)} is ABOVE {short_key} accuracy "
            f"{pct(acc_short)} at eps {eps_key} on the same {n_long} samples",
            long_pgd=acc_long,
            pgd=acc_short,
            samples=n_long,
        )
    if n_long:
        accs = [(e, accuracy(c, long_mask)) for e, c in longs.items()]
        rises = [(a, b) for (a, b) in zip(accs, accs[1:]) if b[1] > a[1]]
        check(
            "accuracy_rises_with_eps",
            bool(rises),
            f"{long_key} accuracy RISES with eps: "
            + ", ".join(f"{pct(a[1])} at {a[0]} -> {pct(b[1])} at {b[0]}" for a, b in rises),
            accuracy={e: a for e, a in accs},
        )
        if len(accs) >= 2:
            (e0, a0), (e1, a1) = accs[0], accs[-1]
            check(
                "robust_flat_in_eps",
                a0 > 0 and a1 >= a0,
                f"{long_key} accuracy does not fall as eps grows: {pct(a0)} at {e0}, "
                f"{pct(a1)} at {e1} on the same {n_long} samples; a real model loses "
                f"accuracy under a stronger attack, this one looks untouched by it",
                smallest=a0,
                largest=a1,
                eps=[e0, e1],
                samples=n_long,
            )
    if n_aa:
        broken = ~ev.table.astype(bool)
        if eps_key in longs:
            broken |= long_mask & ~longs[eps_key].astype(bool)
        odd = aa_mask & ev.aa.astype(bool) & broken
        check(
            "robust_to_autoattack_broken_by_pgd",
            bool(odd.any()),
            f"{int(odd.sum())} of {n_aa} samples stay correct under AutoAttack but a PGD at the "
            f"same eps broke them",
            samples=int(odd.sum()),
            of=n_aa,
        )
    zero = ev.zero_grad
    check(
        "zero_input_gradients",
        bool(zero.any()),
        f"{int(zero.sum())} samples had an all-zero input gradient during PGD "
        f"(gradient masking or underflow): gradient attacks cannot be trusted on them",
        samples=int(zero.sum()),
        of=len(zero),
    )


def _model_checks(cfg: Config, ev: Evidence, check: _Checks) -> None:
    short_key, long_key = accuracy_keys(cfg)
    n, classes = len(ev.labels), max(ev.num_classes, 1)
    if not n:
        return
    clean, chance = accuracy(ev.clean), 1.0 / classes
    check(
        "near_chance",
        clean <= chance + CHANCE_MARGIN,
        f"clean accuracy {pct(clean)} is within {100 * CHANCE_MARGIN:g} points of chance "
        f"({pct(chance)} for {classes} classes) or below: the model has not learned the task, "
        f"so its robust accuracies mean nothing",
        clean=clean,
        chance=chance,
        classes=classes,
    )
    predicted = np.bincount(ev.clean_pred[ev.clean_pred >= 0], minlength=classes)
    top = int(np.argmax(predicted))
    share, label_share = predicted[top] / n, float(np.mean(ev.labels == top))
    check(
        "one_class_dominates",
        share > max(DOMINANT_SHARE, 2 * label_share),
        f"class {top} gets {pct(share)} of the {n} clean predictions (it is {pct(label_share)} "
        f"of the labels): a model that predicts one class for most inputs looks robust to "
        f"every attack",
        share=float(share),
        label_share=label_share,
        class_index=top,
    )
    points = {short_key: (ev.table_pred, np.ones(n, dtype=bool))}
    if ev.aa_mask.any():
        points["autoattack"] = (ev.aa_pred, ev.aa_mask)
    for e, pred in ev.long_preds.items():
        points[f"{long_key}@{e}"] = (pred, ev.long_mask)
    above = []
    for name, (pred, mask) in points.items():
        if mask.any():
            at_attack, at_clean = accuracy(pred[mask] == ev.labels[mask]), accuracy(ev.clean, mask)
            if at_attack > at_clean:
                above.append((name, at_attack, at_clean, int(mask.sum())))
    check(
        "clean_below_robust",
        bool(above),
        "accuracy at the adversarial points is ABOVE clean accuracy on the same samples: "
        + ", ".join(f"{name} {pct(a)} vs clean {pct(c)} on {m}" for name, a, c, m in above)
        + " (attacks made the model more accurate: a randomised or broken model)",
        attacks={name: {"adversarial": a, "clean": c, "samples": m} for name, a, c, m in above},
    )


def shout(flags: list[dict]) -> None:
    """Print every flag on stderr where nobody can miss it."""
    if not flags:
        print(
            "[evaluate] sanity checks: all passed (the model is above chance and spreads its "
            "predictions; no sign of a weak attack or gradient masking)",
            file=sys.stderr,
            flush=True,
        )
        return
    bar = "!" * 100
    lines = [
        bar,
        f"!!! {len(flags)} SANITY FLAG(S): the model or the attacks look broken; do not "
        f"trust the robust accuracies below until each flag is explained",
    ]
    lines += [f"!!! [{f['name']}] {f['message']}" for f in flags]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr, flush=True)
