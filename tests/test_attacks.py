"""PGD: the exact iteration, projection, frozen weights, determinism, strength on a trained model,
and the gradient-masking flag evaluation relies on."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daat.attacks import PGDResult, frozen_weights, pgd, random_init

EPS, ALPHA = 8 / 255, 2 / 255


def tiny_net(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes)
    )


def batch(n=16, seed=0, classes=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    x[0] = 0.0  # pixels on both borders of [0,1] exercise the box projection
    x[1] = 1.0
    return x, torch.randint(0, classes, (n,), generator=gen)


def explicit_pgd(model, x, y, eps, alpha, steps, gen):
    """The documented iteration, written out step by step."""
    delta = (torch.rand(x.shape, generator=gen, dtype=torch.float32) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def test_matches_explicit_iteration_and_stays_in_bounds():
    model, (x, y) = tiny_net(), batch()
    result = pgd(model, x, y, EPS, ALPHA, 5, generator=torch.Generator().manual_seed(1))
    expected = explicit_pgd(model, x, y, EPS, ALPHA, 5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.x_adv, expected, atol=1e-6, rtol=0)
    assert (result.x_adv - x).abs().max() <= EPS + 1e-7
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.x_adv - x).abs().max() > EPS / 2  # it actually moved
    assert result.x_adv.dtype == torch.float32 and not result.x_adv.requires_grad


def test_random_start_formula():
    x, _ = batch()
    expected = (
        x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1) * EPS
    ).clamp(0, 1)
    torch.testing.assert_close(
        random_init(x, EPS, torch.Generator().manual_seed(7)), expected, atol=0, rtol=0
    )
    # with alpha = 0 the attack returns its starting point
    model, (x, y) = tiny_net(), batch()
    result = pgd(model, x, y, EPS, 0.0, 1, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(result.x_adv, expected, atol=0, rtol=0)


def test_deterministic_under_seeded_generator():
    model, (x, y) = tiny_net(), batch()
    runs = [
        pgd(model, x, y, EPS, ALPHA, 3, generator=torch.Generator().manual_seed(s)).x_adv
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_weights_frozen_during_attack_and_flags_restored():
    model = tiny_net()
    model[0].bias.requires_grad_(False)  # a caller's own frozen parameter stays frozen
    before = [p.requires_grad for p in model.parameters()]
    seen = []
    model.register_forward_pre_hook(
        lambda m, inp: seen.append(any(p.requires_grad for p in m.parameters()))
    )
    x, y = batch()
    pgd(model, x, y, EPS, ALPHA, 3)
    assert seen == [False, False, False]
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_flags_restored_when_model_raises():
    model = tiny_net()
    calls = []

    def fail_second(_m, _inp):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    model.register_forward_pre_hook(fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, *batch(), EPS, ALPHA, 3)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError):
        with frozen_weights(model):
            raise RuntimeError
    assert all(p.requires_grad for p in model.parameters())


def test_mode_is_left_alone_and_works_under_no_grad():
    model, (x, y) = tiny_net(), batch()
    model.eval()
    with torch.no_grad():
        result = pgd(model, x, y, EPS, ALPHA, 2)
    assert not model.training and (result.x_adv - x).abs().max() > 0
    model.train()
    pgd(model, x, y, EPS, ALPHA, 1)
    assert model.training


def test_zero_steps_is_standard_training():
    model, (x, y) = tiny_net(), batch()
    result = pgd(model, x, y, EPS, ALPHA, 0)
    assert torch.equal(result.x_adv, x)
    assert not result.fooled_any.any() and not result.zero_grad.any()


def test_fooled_any_covers_the_computed_iterates():
    model, (x, y) = tiny_net(), batch(64)
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    # no random start: iterate 0 is x itself, so every clean mistake is flagged
    result = pgd(model, x, y, EPS, ALPHA, 3, random_start=False)
    assert (result.fooled_any | ~clean_wrong).all()
    with_final = pgd(model, x, y, EPS, ALPHA, 3, random_start=False, check_final=True)
    with torch.no_grad():
        final_wrong = model(with_final.x_adv).argmax(1) != y
    assert torch.equal(with_final.fooled_any, result.fooled_any | final_wrong)
    assert with_final.fooled_any.sum() > clean_wrong.sum()


class Quantised(nn.Module):
    """Output that does not depend on the input infinitesimally: rounds the input to 1/8 steps."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        return self.net(torch.round(x * 8) / 8)


def test_zero_grad_flags_gradient_masking():
    x, y = batch()
    masked = pgd(Quantised(), x, y, EPS, ALPHA, 3)
    assert masked.zero_grad.all() and masked.zero_grad_count.item() == len(x)
    honest = pgd(tiny_net(), x, y, EPS, ALPHA, 3)
    assert not honest.zero_grad.any() and honest.zero_grad_count.item() == 0


def test_bf16_autocast_keeps_fp32_iterate():
    model, (x, y) = tiny_net(), batch()
    result = pgd(model, x, y, EPS, ALPHA, 3, amp_dtype=torch.bfloat16)
    assert result.x_adv.dtype == torch.float32
    assert (result.x_adv - x).abs().max() <= EPS + 1e-7
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_custom_loss_and_bad_arguments():
    model, (x, y) = tiny_net(), batch()
    # minimising CE (negated loss) must not raise it
    down = pgd(
        model, x, y, EPS, ALPHA, 5, loss_fn=lambda z, t: -F.cross_entropy(z, t, reduction="sum")
    )
    with torch.no_grad():
        assert F.cross_entropy(model(down.x_adv), y) < F.cross_entropy(model(x), y)
    with pytest.raises(ValueError, match="y must"):
        pgd(model, x, y[:3], EPS, ALPHA, 1)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, EPS, ALPHA, -1)


def _easy_task(n, gen):
    """Two classes: which half of the image is brighter (by 0.04 on average, under 0.2 noise): easy
    to learn, but an 8/255 perturbation per pixel (0.063 between the halves) can swap them."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 0.4 + 0.2 * torch.rand(n, 3, 8, 8, generator=gen)
    sign = (2 * y - 1).view(-1, 1, 1, 1).float()
    x[..., :4] += 0.02 * sign
    x[..., 4:] -= 0.02 * sign
    return x.clamp(0, 1), y


def test_raises_the_loss_of_a_trained_model():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        x, y = _easy_task(128, gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = _easy_task(512, gen)
    eps = 8 / 255
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
        noise = (x + eps * torch.sign(torch.randn(x.shape, generator=gen))).clamp(0, 1)
        noisy = F.cross_entropy(model(noise), y).item()
    result = pgd(model, x, y, eps, eps / 4, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adv = F.cross_entropy(model(result.x_adv), y).item()
        adv_acc = (model(result.x_adv).argmax(1) == y).float().mean().item()
    assert clean_acc > 0.95, "the tiny model did not learn the task"
    # random sign noise of the same size barely moves the loss; PGD raises it by orders of magnitude
    assert adv > 20 * clean and adv > 20 * noisy, (clean, noisy, adv)
    assert adv_acc < 0.5, (clean_acc, adv_acc)  # measured ~0.01 (clean 1.0) when written
    assert result.fooled_any.float().mean() >= 1 - adv_acc - 1e-6


def test_pgd_on_the_student_vit():
    from daat.config import ModelConfig
    from daat.models import build_student

    model = build_student(
        ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 4
    )
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    result = pgd(model, x, y, EPS, ALPHA, 2, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, PGDResult) and result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= EPS + 1e-7
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_attack_on_student():
    from daat.config import ModelConfig
    from daat.models import build_student

    model = build_student(
        ModelConfig(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4), 10
    ).cuda()
    x = torch.rand(32, 3, 64, 64, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    result = pgd(model, x, y, EPS, ALPHA, 3, generator=gen, amp_dtype=torch.bfloat16)
    assert result.x_adv.dtype == torch.float32
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert not result.zero_grad.any().item()
    out = model.forward_tapped(x, need_attention=True)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(32, device="cuda"))
