"""The benchmarks' goals, torch-free so ``gpu_check`` can judge figures without importing torch.

(key, comparison, goal); the GPU goals are judged only on a GPU.
"""

from __future__ import annotations

GOALS = [
    ("preprocess_e2e_over_model", ">=", 0.85),
    ("daat_cached_over_pgdat", "<=", 1.05),
    ("teacher_over_pgdat", "<=", 1.20),
    ("loader_img_per_s_per_core", ">=", 400.0),
]
GPU_GOALS = [
    ("vit_b14_224_pgdat_img_per_s", ">=", 400.0),
    ("pgdat_over_naive_speedup", ">=", 4.0),
    ("daat_online_over_pgdat", "<=", 1.30),
    ("preprocess_e2e_img_per_s", ">=", 1000.0),
]


def met(value: float | None, op: str, goal: float) -> bool:
    return value is not None and (value >= goal if op == ">=" else value <= goal)


def check_goals(result: dict, gpu: bool) -> dict:
    """``{"key op goal": met}`` for every goal that applies."""
    return {
        f"{key} {op} {goal:g}": met(result.get(key), op, goal)
        for key, op, goal in GOALS + (GPU_GOALS if gpu else [])
    }
