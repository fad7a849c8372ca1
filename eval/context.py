"""What one evaluation is of, passed as one typed object from the set-up in ``evaluate.py`` to the
summary: the run, the checkpoint, the shards and the model's patch grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShardSource:
    """The shards evaluated: their artifact and whether they are the run's own."""

    id: str
    path: Path
    content_digest: str
    own: bool  # the run's lineage; False: ``--shards`` given on purpose

    def to_dict(self) -> dict:
        """The ``shards`` entry of summary.json."""
        return {
            "id": self.id,
            "path": str(self.path),
            "content_digest": self.content_digest,
            "source": "run lineage" if self.own else "--shards (not the run's own)",
        }


@dataclass(frozen=True)
class EvalContext:
    """The inputs of one evaluation, fixed before any sample is attacked."""

    run_id: str
    checkpoint: Path
    checkpoint_sha256: str
    shards: ShardSource
    num_classes: int
    grid: tuple[int, int]  # the model's patch grid (h, w)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict:
        """The leading entries of summary.json, in their order."""
        return {
            "run": self.run_id,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "shards": self.shards.to_dict(),
        }


@dataclass(frozen=True)
class RankWork:
    """What one rank did in this invocation; every rank's is gathered for summary.json."""

    computed: dict[str, int]  # task name -> chunks computed now
    reused: int  # chunk-tasks an earlier invocation had already done
    seconds: dict[str, float]  # task name -> compute seconds now
