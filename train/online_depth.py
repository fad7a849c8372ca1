"""The L_align target policy (``depth.target``): cached G(x) from the shards, or online G(x_adv).

- ``cached``: G(x) of the clean image, read from the shards; the depth model is never loaded.
- ``online``: G(x_adv) = N(E(g(x_adv))) from the frozen depth model on every step (paper, B.1).
- ``mixed``: online on steps that are multiples of ``depth.online_every`` (when > 0) and in the
  epochs ``[online_epochs[0], online_epochs[1])`` (when given); cached otherwise.

The depth model is the shards' own unless ``depth.model`` names another (``resolve_model``); it
loads lazily, the first time a step needs it, so a policy that never goes online never pays for it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from daat.config import Config, ConfigError
from daat.depth_ref import is_oracle, same_model
from daat.errors import TrainingError

if TYPE_CHECKING:
    from daat.pipeline.shards import ShardArtifact


def wants_online(cfg: Config, step: int, epoch: int) -> bool:
    """Whether ``step`` (global index) in ``epoch`` uses G(x_adv) from the depth model."""
    depth = cfg.depth
    if depth.target == "cached":
        return False
    if depth.target == "online":
        return True
    by_step = depth.online_every > 0 and step % depth.online_every == 0
    by_epoch = (
        bool(depth.online_epochs) and depth.online_epochs[0] <= epoch < depth.online_epochs[1]
    )
    return by_step or by_epoch


def resolve_model(cfg: Config, shards: ShardArtifact) -> Config:
    """``cfg`` with ``depth.model`` filled in from the shards when it is unset (null). A model
    other than the shards' own is refused when G(x_adv) is computed online (the cached and online
    targets would come from different networks) unless ``depth.allow_other_model`` is true."""
    recorded_name = str((shards.config.get("depth") or {}).get("model") or shards.depth_model)
    recorded_id = shards.depth_model
    if cfg.depth.model is None:
        cfg = copy.deepcopy(cfg)
        cfg.depth.model = recorded_name
        return cfg
    online = cfg.depth.target != "cached" and cfg.loss.lam > 0
    if not online or cfg.depth.allow_other_model or is_oracle(cfg.depth.model):
        return cfg  # the oracle online is refused by check_policy, with its own reason
    if not same_model(cfg.depth.model, recorded_name, recorded_id):
        raise ConfigError(
            f"config key 'depth.model' = {cfg.depth.model!r} is not the depth model the shards "
            f"were made with ({recorded_id}, {shards.path}); with depth.target="
            f"{cfg.depth.target} the online G(x_adv) would come from another network than the "
            f"cached G(x). Leave depth.model unset (or pass --depth {recorded_name}) to use the "
            f"shards' model, or set depth.allow_other_model=true to train with it anyway"
        )
    return cfg


def check_policy(cfg: Config) -> None:
    """Fail before training starts if the policy cannot work with this config."""
    depth = cfg.depth
    if depth.target != "cached" and cfg.loss.lam > 0 and is_oracle(depth.model):
        raise ConfigError(
            f"depth.target={depth.target} runs the depth model on x_adv, but depth.model="
            f"'{depth.model}' is the synthetic ground truth, which exists only for clean "
            "images; pass --use-cached-depth (depth.target=cached) or set depth.model to a "
            "real depth model (a hub id or local directory)"
        )


class DepthTarget:
    """Gives G for a step: the batch's cached G or G(x_adv) from the lazily loaded depth model."""

    def __init__(
        self,
        cfg: Config,
        grid: tuple[int, int],
        device: torch.device,
        loader: Callable | None = None,
    ):
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
            self._model = loader(
                d.model, self.device, amp=d.amp, channels_last=d.channels_last, compile=d.compile
            )
        return self._model

    def __call__(
        self, step: int, epoch: int, x_adv: torch.Tensor, cached: torch.Tensor | None
    ) -> torch.Tensor:
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
        parts = [
            depth_saliency(model(x_adv[i : i + chunk]).float(), self.grid)
            for i in range(0, x_adv.shape[0], chunk)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
