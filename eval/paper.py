"""The paper's Table 1 and the one rule for showing it: only beside runs whose card, model, image
size and epochs are the paper's (ImageNet-100, ViT-B/14 at 224 px, 300 epochs). Every report
also says what was actually run, so numbers from another setting are never read as the paper's.
"""

from __future__ import annotations

from pathlib import Path

PAPER_TABLE1 = {  # ImageNet-100, clean / PGD-10 / AutoAttack, % (paper Table 1)
    "standard": (81.84, 10.24, 8.60),
    "pgd-at": (78.30, 52.32, 46.74),
    "daat-no-align": (80.32, 55.06, 51.14),
    "daat": (80.74, 56.02, 53.70),
}
PAPER_SETUP = {
    "card": "imagenet100",
    "model": "vit_base_patch14_dinov2",
    "img_size": 224,
    "patch_size": 14,
    "epochs": 300,
}
PAPER_TEXT = "ImageNet-100, ViT-B/14 at 224 px, 300 epochs"


def setup(cfg: dict) -> dict:
    """What a run config trained: card, model (with any width/depth override), image size, patch
    grid and epochs."""
    model = cfg.get("model", {})
    size, patch = int(model.get("img_size", 0)), int(model.get("patch_size", 1))
    dims = [f"{k} {model[k]}" for k in ("embed_dim", "depth", "num_heads") if model.get(k)]
    return {
        "card": Path(str(cfg.get("data", {}).get("card", ""))).stem,
        "model": str(model.get("name", "")),
        "model_overrides": ", ".join(dims),
        "img_size": size,
        "patch_size": patch,
        "grid": f"{size // patch}x{size // patch}",
        "epochs": int(cfg.get("train", {}).get("epochs", 0)),
    }


def matches_paper(cfg: dict) -> bool:
    """True only for the paper's configuration (a width/depth override is another model)."""
    facts = setup(cfg)
    return not facts["model_overrides"] and all(facts[k] == v for k, v in PAPER_SETUP.items())


def paper_row(method: str, cfg: dict) -> tuple[float, float, float] | None:
    return PAPER_TABLE1.get(method) if matches_paper(cfg) else None


def describe(configs: list[dict], seeds: list, n_text: str) -> list[str]:
    """Markdown lines: what was run (card, model, image size, epochs, seeds, n), and whether the
    paper's numbers are shown."""
    setups = []
    for cfg in configs:
        facts = setup(cfg)
        text = (
            f"card `{facts['card']}`, model `{facts['model']}`"
            + (f" ({facts['model_overrides']})" if facts["model_overrides"] else "")
            + f" at {facts['img_size']} px (patch {facts['patch_size']}, "
            f"{facts['grid']} grid), epochs {facts['epochs']}"
        )
        if text not in setups:
            setups.append(text)
    seed_text = ", ".join(str(s) for s in sorted(set(seeds), key=str)) or "—"
    lines = ["What was run: " + "; ".join(setups) + f"; seeds {seed_text}; n = {n_text}."]
    if any(matches_paper(c) for c in configs):
        lines.append(
            f"The paper's Table 1 numbers ({PAPER_TEXT}) are shown beside the runs "
            f"that have exactly that configuration, and only there."
        )
    else:
        lines.append(
            f"None of these runs has the paper's configuration ({PAPER_TEXT}), so the "
            f"paper's numbers are not shown: compare the methods with each other, not "
            f"with the paper."
        )
    return lines
