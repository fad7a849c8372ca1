"""The alignment losses of Eq. 2 and Eq. 3 (CE is plain ``F.cross_entropy``).

Both are 1 - cosine similarity of per-sample flattened vectors, averaged over the batch. They are
computed in fp32 whatever the autocast dtype, since a cosine of long bf16 vectors loses digits.
"""

from __future__ import annotations

import torch

NORM_FLOOR = 1e-8  # norms below this count as this: a zero vector has cosine 0 (distance 1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample: 1 - <a, b> / (max(|a|, 1e-8) * max(|b|, 1e-8)) over the flattened non-batch
    dims; [B]. In [0, 2]. A zero vector (either side) has distance exactly 1 with finite gradients
    instead of NaN."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_distance: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"cosine_distance: expected a batch [B, ...], got shape {tuple(a.shape)}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        a, b = a.flatten(1).float(), b.flatten(1).float()
        dot = (a * b).sum(dim=1)
        norms = a.norm(dim=1).clamp_min(NORM_FLOOR) * b.norm(dim=1).clamp_min(NORM_FLOOR)
        return 1.0 - dot / norms


def align_loss(attention: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over the batch of 1 - cos(vec A(x_adv), vec G). ``attention`` [B, h*w] from the
    student's tap; ``target`` [B, h*w] (or [B, h, w]) is G, a constant: no gradient flows into
    it."""
    if attention.dim() != 2:
        raise ValueError(f"align_loss: attention must be [B, h*w], got {tuple(attention.shape)}")
    target = target.detach().reshape(target.shape[0], -1)
    if target.shape != attention.shape:
        raise ValueError(
            f"align_loss: target {tuple(target.shape)} does not match attention "
            f"{tuple(attention.shape)} (different patch grids?)"
        )
    return cosine_distance(attention, target).mean()


def feat_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean over the batch of 1 - cos(phi_student, phi_teacher), phi = the final-norm CLS and
    patch tokens [B, 1+N, D] concatenated into one vector per sample (student tokens already
    projected to the teacher's width). The teacher side is a constant."""
    if student_tokens.dim() != 3 or student_tokens.shape != teacher_tokens.shape:
        raise ValueError(
            f"feat_loss: student tokens {tuple(student_tokens.shape)} and teacher tokens "
            f"{tuple(teacher_tokens.shape)} must both be [B, 1+N, D] with equal shapes"
        )
    return cosine_distance(student_tokens, teacher_tokens.detach()).mean()
