"""Attention-under-attack metrics and Grad-CAM against hand-computed values."""

import math

import pytest
import torch

from daat.config import ModelConfig
from daat.eval import attention
from daat.models import build_student


def test_cosine_hand_values():
    a = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 1.0], [-3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: dot 4, |a| 3, |b| sqrt(5) -> 4 / (3 sqrt 5); row 1: opposite -> -1;
    # row 2: a zero map has no direction -> 0
    expected = torch.tensor([4 / (3 * math.sqrt(5)), -1.0, 0.0])
    torch.testing.assert_close(attention.cosine(a, b), expected)


def test_js_divergence_hand_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [2.0, 2.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0], [0.3, 0.7]])
    # disjoint supports: m = (.5, .5), each KL = ln 2 -> JS = ln 2 (its maximum)
    # (.5,.5) vs (1,0): m = (.75,.25); KL(p|m) = .5 ln(4/3) ; KL(q|m) = ln(4/3) -> JS = .75 ln(4/3)
    # row 2 is row 1 before renormalisation; identical maps -> 0
    expected = torch.tensor([math.log(2), 0.75 * math.log(4 / 3), 0.75 * math.log(4 / 3), 0.0])
    got = attention.js_divergence(p, q)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(attention.js_divergence(q, p), got)  # symmetric
    with pytest.raises(ValueError):
        attention.js_divergence(torch.tensor([[-1.0, 2.0]]), torch.tensor([[1.0, 1.0]]))


def test_top_mass_hand_values():
    # 10 patches, top 20% = ceil(2.0) = 2 patches: where G is largest, indices 1 and 3
    g = torch.tensor([[0.10, 0.50, 0.05, 0.30, 0.0, 0.0, 0.01, 0.02, 0.01, 0.01]])
    a = torch.tensor([[0.1, 0.2, 0.1, 0.3, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]])
    torch.testing.assert_close(attention.top_mass(a, g), torch.tensor([0.5]))
    # unnormalised attention is renormalised: mass 2 * (0.2 + 0.3) / 2
    torch.testing.assert_close(attention.top_mass(2 * a, g), torch.tensor([0.5]))
    assert attention.top_k_count(64, 0.2) == 13  # 8x8 grid: ceil(12.8)
    assert attention.top_k_count(256, 0.2) == 52  # 16x16 grid: ceil(51.2)
    assert attention.top_k_count(10, 0.2) == 2
    uniform = torch.full((1, 64), 1 / 64)
    torch.testing.assert_close(
        attention.top_mass(uniform, torch.rand(1, 64)), torch.tensor([13 / 64])
    )


def tiny_vit(seed=0, classes=5):
    torch.manual_seed(seed)
    cfg = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    return build_student(cfg, classes).eval()


def _tokens_into_last_block(model, x):
    vit = model.vit
    t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(model.normalize(x)))))
    for block in vit.blocks[:-1]:
        t = block(t)
    return t


def test_grad_cam_matches_the_formula_and_leaves_weights_alone():
    model = tiny_vit()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3, 1])
    cam, logits = attention.grad_cam(model, x, target)
    torch.testing.assert_close(logits, model(x).detach())
    assert all(p.grad is None for p in model.parameters())
    # by hand: T entering the last block, alpha_d = mean_i dy/dT_id, ReLU(sum_d alpha_d T_id) / max
    t = _tokens_into_last_block(model, x).detach().requires_grad_(True)
    vit = model.vit
    out = vit.forward_head(vit.norm(vit.blocks[-1](t)))
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), t)
    feats, g = t.detach()[:, 1:], grad[:, 1:]
    raw = torch.relu((feats * g.mean(dim=1, keepdim=True)).sum(-1))
    expected = raw / raw.amax(dim=1, keepdim=True)
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    assert cam.shape == (3, 16) and cam.max() <= 1 + 1e-6 and cam.min() >= 0


def test_last_block_output_patches_do_not_reach_a_cls_classifier():
    """Why Grad-CAM reads the tokens ENTERING the last block: the patch outputs get zero grad."""
    model = tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    vit = model.vit
    t = vit.blocks[-1](_tokens_into_last_block(model, x)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(vit.forward_head(vit.norm(t))[:, 0].sum(), t)
    assert grad[:, 1:].abs().max() == 0 and grad[:, 0].abs().max() > 0


def test_attention_map_is_unit_mass_and_upsample_shape():
    model = tiny_vit()
    a, logits = attention.attention_map(model, torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2))
    assert attention.upsample(a, model.grid, (32, 32)).shape == (2, 32, 32)
    grid = attention.to_grid(torch.arange(8.0).view(1, 8), (2, 4))
    assert grid[0, 1, 0] == 4  # row-major
