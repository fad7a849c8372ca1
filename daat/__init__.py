"""daat: Depth-Aware Adversarial Training for robust image classification.

The Python API (each name is imported on first use, so ``import daat`` stays light)::

    model = daat.load_model("my-model")       # a run directory or a `daat export` folder
    logits = model(images)                    # images [B, 3, H, W] in [0,1]
    a = daat.attention_map(model, images)     # A(x) [B, h, w]
    run = daat.load_run("artifacts/run-...")  # config, metrics (list of dicts), checkpoints
    art = daat.open_artifact("artifacts/shards-...")
    g = daat.depth_saliency(depth, grid=(14, 14))  # G(x) from depth maps [B, H, W]
"""

__version__ = "0.1.0"
__all__ = ["load_model", "load_run", "open_artifact", "depth_saliency", "attention_map", "Run"]


def __getattr__(name: str):
    if name in __all__:
        from daat import api

        return getattr(api, name)
    raise AttributeError(f"module 'daat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
