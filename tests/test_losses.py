"""L_align (Eq. 2), L_feat (Eq. 3) and the cosine distance against cosines worked out by hand."""

import math

import pytest
import torch

from daat.train.losses import align_loss, cosine_distance, feat_loss


def test_cosine_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [4.0, 3.0], [2.0, 4.0], [-1.0, -2.0]])
    # orthogonal -> 1; 45 degrees -> 1 - 1/sqrt(2); 3-4-5: dot 24 / (5 * 5) = 0.96 -> 0.04;
    # parallel -> 0; opposite -> 2
    expected = torch.tensor([1.0, 1.0 - 1.0 / math.sqrt(2.0), 0.04, 0.0, 2.0])
    torch.testing.assert_close(cosine_distance(a, b), expected, atol=1e-6, rtol=0)


def test_cosine_distance_flattens_per_sample():
    # [1, 2, 2] . [2, 1, -2] = 2 + 2 - 4 = 0 -> distance 1, whatever the trailing shape
    a = torch.tensor([[[1.0, 2.0, 2.0]]])
    b = torch.tensor([[[2.0, 1.0, -2.0]]])
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor([1.0]))


def test_cosine_distance_zero_vector_is_one_with_finite_gradient():
    a = torch.zeros(2, 3, requires_grad=True)
    b = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    d = cosine_distance(a, b)
    torch.testing.assert_close(d, torch.ones(2))
    d.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_cosine_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_distance(torch.ones(2, 3), torch.ones(2, 4))


def test_align_loss_hand_value():
    attention = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    target = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    # sample 0: dot 0.25, |A| |G| = sqrt(0.5) sqrt(0.5) = 0.5 -> cos 0.5 -> 0.5; sample 1: 0
    assert align_loss(attention, target).item() == pytest.approx(0.25, abs=1e-7)


def test_align_loss_accepts_grid_shaped_target_and_does_not_differentiate_it():
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    target = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]], requires_grad=True)
    loss = align_loss(attention, target)
    # dot 0.04 + 0.06 + 0.06 + 0.04 = 0.2; |A|^2 = |G|^2 = 0.3 -> cos 2/3
    assert loss.item() == pytest.approx(1.0 - 2.0 / 3.0, abs=1e-6)
    loss.backward()
    assert attention.grad is not None and attention.grad.abs().sum() > 0
    assert target.grad is None


def test_align_loss_rejects_other_grid():
    with pytest.raises(ValueError, match="patch grids"):
        align_loss(torch.ones(2, 64), torch.ones(2, 16))


def test_feat_loss_concatenates_cls_and_patch_tokens():
    # sample 0: phi_s = [1, 0, 0, 2], phi_t = [1, 0, 2, 0]: dot 1, norms sqrt5 sqrt5 -> cos 0.2
    # -> 0.8
    #   (a per-token average would give (0 + 1) / 2 = 0.5 instead)
    # sample 1: phi_s = [3, 4, 0, 0], phi_t = [4, 3, 0, 0]: cos 0.96 -> 0.04
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [0.0, 0.0]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[4.0, 3.0], [0.0, 0.0]]])
    loss = feat_loss(student, teacher)
    assert loss.item() == pytest.approx((0.8 + 0.04) / 2, abs=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_feat_loss_rejects_width_mismatch():
    with pytest.raises(ValueError, match="equal shapes"):
        feat_loss(torch.ones(2, 5, 8), torch.ones(2, 5, 16))


def test_losses_are_fp32_under_bf16_autocast():
    a = torch.rand(4, 64).bfloat16()
    b = torch.rand(4, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = align_loss(a, b)
    assert loss.dtype == torch.float32
    expected = (1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
