"""The L_align target policy (``depth.target``): cached G(x) from the shards, or online G(x_adv).

- ``cached``: G(x) of the clean image, read from the shards; the depth model is never loaded.
- ``online``: G(x_adv) = N(E(g(x_adv))) from the frozen depth model on every step (paper, B.1).
- ``mixed``: online on steps that are multiples of ``depth.online_every`` (when > 0) and in the
  epochs ``[online_epochs[0], online_epochs[1])`` (when given); cached otherwise.

The depth model loads lazily, the first time a step needs it, so a policy that never goes online
never pays for it.
"""
from __future__ import annotations

from typing import Callable

import torch

from daat.config import Config, ConfigError
from daat.errors import TrainingError


def wants_online(cfg: Config, step: int, epoch: int) -> bool:
    """Whether ``step`` (global index) in ``epoch`` uses G(x_adv) from the depth model."""
    depth = cfg.depth
    if depth.target == "cached":
        return False
    if depth.target == "online":
        return True
    by_step = depth.online_every > 0 and step % depth.online_every == 0
    by_epoch = bool(depth.online_epochs) and depth.online_epochs[0] <= epoch < depth.online_epochs[1]
    return by_step or by_epoch


def check_policy(cfg: Config) -> None:
    """Fail before training starts if the policy cannot work with this config."""
    depth = cfg.depth
    if depth.target == "mixed":
        if depth.online_every < 0:
            raise ConfigError("config key 'depth.online_every' must be >= 0")
        if depth.online_epochs and (len(depth.online_epochs) != 2
                                    or depth.online_epochs[0] >= depth.online_epochs[1]):
            raise ConfigError("config key 'depth.online_epochs' must be [start, end) with "
                              f"start < end, got {depth.online_epochs}")
        if depth.online_every == 0 and not depth.online_epochs:
            raise ConfigError("depth.target=mixed needs depth.online_every > 0 or "
                              "depth.online_epochs=[start, end]")
    if depth.target != "cached" and cfg.loss.lam > 0:
        from daat.depth import is_oracle
        if is_oracle(depth.model):
            raise ConfigError(
                f"depth.target={depth.target} runs the depth model on x_adv, but depth.model="
                f"'{depth.model}' is the synthetic ground truth, which exists only for clean "
                "images; pass --use-cached-depth (depth.target=cached) or set depth.model to a "
                "real depth model (a hub id or local directory)")


class DepthTarget:
    """Gives G for a step: the batch's cached G or G(x_adv) from the lazily loaded depth model."""

    def __init__(self, cfg: Config, grid: tuple[int, int], device: torch.device,
                 loader: Callable | None = None):
        self.cfg = cfg
        self.grid = grid
        self.device = device
        self._loader = loader
        self._model = None
        self.online_calls = 0  # steps that used the depth model (for tests and the manifest)

    @property
    def model_id(self) -> str | None:
        return getattr(self._model, "model_id", None)

    def _depth_model(self):
        if self._model is None:
            loader = self._loader
            if loader is None:
                from daat.depth import load_depth_model as loader
            d = self.cfg.depth
            self._model = loader(d.model, self.device, amp=d.amp, channels_last=d.channels_last,
                                 compile=d.compile)
        return self._model

    def __call__(self, step: int, epoch: int, x_adv: torch.Tensor,
                 cached: torch.Tensor | None) -> torch.Tensor:
        if not wants_online(self.cfg, step, epoch):
            if cached is None:
                raise TrainingError(f"step {step}: depth.target=cached but the batch has no G")
            return cached
        self.online_calls += 1
        return self.online(x_adv)

    @torch.no_grad()
    def online(self, x_adv: torch.Tensor) -> torch.Tensor:
        """G(x_adv) in chunks of ``depth.batch_size`` (the depth model's own memory budget)."""
        from daat.saliency import depth_saliency

        model = self._depth_model()
        chunk = max(1, self.cfg.depth.batch_size)
        parts = [depth_saliency(model(x_adv[i:i + chunk]).float(), self.grid)
                 for i in range(0, x_adv.shape[0], chunk)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
