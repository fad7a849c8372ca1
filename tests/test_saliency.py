"""E (Sobel magnitude), patch pooling and N (unit mass) against hand-computed values."""

import math

import pytest
import torch

from daat.saliency import (
    UNIFORM_EPS,
    depth_saliency,
    pool_to_grid,
    saliency_from_edges,
    sobel_magnitude,
    unit_mass,
)


def vertical_step(height: int, width: int, column: int, jump: float) -> torch.Tensor:
    """0 left of ``column``, ``jump`` from ``column`` on: [H,W]."""
    depth = torch.zeros(height, width)
    depth[:, column:] = jump
    return depth


# ---------------------------------------------------------------- Sobel E


def test_vertical_step_is_4h_on_the_two_columns_beside_the_edge():
    # Gx(i,j) = sum_{di} (1,2,1)[di] * (d[i+di, j+1] - d[i+di, j-1]); across a step of height h
    # this is (1+2+1)*h = 4h at j = k-1 and j = k, and 0 elsewhere; Gy = 0 (rows are equal, and
    # replicate padding keeps the top and bottom rows equal too).
    h, k = 2.5, 3
    e = sobel_magnitude(vertical_step(5, 7, k, h)[None])[0]
    assert e.shape == (5, 7)
    expected = torch.zeros(5, 7)
    expected[:, k - 1] = 4 * h
    expected[:, k] = 4 * h
    torch.testing.assert_close(e, expected, rtol=0, atol=1e-6)


def test_step_at_the_border_uses_replicate_padding():
    # Step between columns 0 and 1: column 0 sees d[1] - d[-1] with d[-1] := d[0] -> 4h.
    # Step between the last two columns: the last column sees d[W] := d[W-1] -> 4h as well.
    h = 1.5
    left = sobel_magnitude(vertical_step(4, 6, 1, h)[None])[0]
    assert left[:, 0].tolist() == [4 * h] * 4 and left[:, 1].tolist() == [4 * h] * 4
    assert left[:, 2:].abs().max() == 0
    right = sobel_magnitude(vertical_step(4, 6, 5, h)[None])[0]
    assert right[:, 4].tolist() == [4 * h] * 4 and right[:, 5].tolist() == [4 * h] * 4
    assert right[:, :4].abs().max() == 0


def test_horizontal_step_is_the_transpose():
    h, k = 3.0, 2
    e = sobel_magnitude(vertical_step(6, 5, k, h).T.contiguous()[None])[0]  # [5,6], rows step
    expected = torch.zeros(5, 6)
    expected[k - 1, :] = 4 * h
    expected[k, :] = 4 * h
    torch.testing.assert_close(e, expected, rtol=0, atol=1e-6)


def test_linear_ramp_is_8_slope_inside_and_4_slope_on_the_border_columns():
    # d = a*j: interior Gx = 4 * (a(j+1) - a(j-1)) = 8a. Border column 0: 4 * (a*1 - a*0) = 4a
    # (replicated neighbour), same for the last column. Gy = 0 everywhere.
    a = 0.75
    width = 6
    depth = (a * torch.arange(width, dtype=torch.float32)).expand(5, width)
    e = sobel_magnitude(depth[None].contiguous())[0]
    assert torch.allclose(e[:, 1:-1], torch.full((5, width - 2), 8 * a))
    assert torch.allclose(e[:, 0], torch.full((5,), 4 * a))
    assert torch.allclose(e[:, -1], torch.full((5,), 4 * a))


def test_diagonal_ramp_interior_edges_and_corners():
    # d = a*i + b*j with a=3, b=4.
    # interior: Gx = 8b = 32, Gy = 8a = 24 -> 40
    # corner: Gx = 4b, Gy = 4a -> 20
    # left/right border (not a corner): Gx = 4b = 16, Gy = 8a = 24 -> sqrt(832)
    # top/bottom border (not a corner): Gx = 8b = 32, Gy = 4a = 12 -> sqrt(1168)
    a, b = 3.0, 4.0
    i = torch.arange(5, dtype=torch.float32)[:, None]
    j = torch.arange(6, dtype=torch.float32)[None, :]
    e = sobel_magnitude((a * i + b * j)[None])[0]
    assert torch.allclose(e[1:-1, 1:-1], torch.tensor(40.0).expand(3, 4))
    for corner in (e[0, 0], e[0, -1], e[-1, 0], e[-1, -1]):
        assert corner.item() == pytest.approx(20.0)
    assert torch.allclose(e[1:-1, 0], torch.tensor(math.sqrt(832)).expand(3))
    assert torch.allclose(e[1:-1, -1], torch.tensor(math.sqrt(832)).expand(3))
    assert torch.allclose(e[0, 1:-1], torch.tensor(math.sqrt(1168)).expand(4))
    assert torch.allclose(e[-1, 1:-1], torch.tensor(math.sqrt(1168)).expand(4))


def test_impulse_response():
    # Unit impulse at (2,2): its 4-neighbours see one weight-2 tap of one kernel (E = 2), its
    # diagonal neighbours one weight-1 tap of each kernel (E = sqrt 2); the centre sees 0.
    depth = torch.zeros(1, 5, 5)
    depth[0, 2, 2] = 1.0
    e = sobel_magnitude(depth)[0]
    expected = torch.zeros(5, 5)
    for r, c in ((1, 2), (3, 2), (2, 1), (2, 3)):
        expected[r, c] = 2.0
    for r, c in ((1, 1), (1, 3), (3, 1), (3, 3)):
        expected[r, c] = math.sqrt(2.0)
    torch.testing.assert_close(e, expected, rtol=0, atol=1e-6)


def test_constant_map_gives_exactly_zero_and_zero_gradient():
    depth = torch.full((2, 7, 9), 3.7, requires_grad=True)
    e = sobel_magnitude(depth)
    assert e.shape == (2, 7, 9)
    assert torch.count_nonzero(e) == 0
    e.sum().backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().max() == 0


def test_no_grad_path_equals_the_autograd_path_and_keeps_flat_zeros():
    depth = torch.rand(3, 17, 19, dtype=torch.float64) * 1e3
    depth[:, :6, :6] = 2.0  # a flat patch: exactly 0 in both paths
    with torch.no_grad():
        fast = sobel_magnitude(depth)
    slow = sobel_magnitude(depth.clone().requires_grad_(True))
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-15, atol=0)
    assert torch.count_nonzero(fast[:, :5, :5]) == 0 and torch.count_nonzero(fast) > 0


def test_batch_samples_are_independent():
    first = vertical_step(4, 5, 2, 1.0)
    second = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    both = sobel_magnitude(torch.stack([first, second]))
    torch.testing.assert_close(both[0], sobel_magnitude(first[None])[0])
    torch.testing.assert_close(both[1], sobel_magnitude(second[None])[0])


def test_sobel_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        sobel_magnitude(torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        sobel_magnitude(torch.zeros(1, 4, 4, dtype=torch.int64))


# ---------------------------------------------------------------- pooling


def test_pool_exact_blocks():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    # blocks: {0,1,4,5} -> 2.5, {2,3,6,7} -> 4.5, {8,9,12,13} -> 10.5, {10,11,14,15} -> 12.5
    torch.testing.assert_close(pool_to_grid(x, (2, 2)), torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))


def test_pool_non_multiple_uses_adaptive_bins():
    # 5 rows onto 2 cells: bins rows [0,3) and [2,5) -> means of row indices 1 and 3.
    x = torch.arange(5, dtype=torch.float32)[:, None].expand(5, 3).contiguous()[None]
    torch.testing.assert_close(pool_to_grid(x, (2, 1)), torch.tensor([[[1.0], [3.0]]]))


def test_pool_rejects_a_grid_finer_than_the_map_and_bad_grids():
    with pytest.raises(ValueError, match="finer"):
        pool_to_grid(torch.zeros(1, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="grid"):
        pool_to_grid(torch.zeros(1, 4, 4), (0, 2))
    with pytest.raises(ValueError, match="grid"):
        pool_to_grid(torch.zeros(1, 4, 4), (2.0, 2))


# ---------------------------------------------------------------- unit mass


def test_unit_mass_divides_each_sample_by_its_sum():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 5.0], [0.0, 15.0]]])
    out = unit_mass(x)
    torch.testing.assert_close(
        out, torch.tensor([[[0.1, 0.2], [0.3, 0.4]], [[0.0, 0.25], [0.0, 0.75]]])
    )


def test_unit_mass_empty_sample_becomes_uniform_not_nan():
    x = torch.zeros(3, 2, 3)
    x[1, 0, 0] = 2.0
    x[2] = 0.5e-9  # mass 3e-9 < 1e-8
    out = unit_mass(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.full((2, 3), 1 / 6))
    torch.testing.assert_close(out[2], torch.full((2, 3), 1 / 6))
    assert out[1, 0, 0] == 1.0 and out[1].sum() == 1.0
    # the same tiny sample is kept when the threshold is lower
    torch.testing.assert_close(unit_mass(x[2:], eps=1e-10)[0], torch.full((2, 3), 1 / 6))
    spiky = x[2:].clone()
    spiky[0, 0, 0] = 1e-9
    assert not torch.allclose(unit_mass(spiky, eps=1e-10), unit_mass(spiky))


def test_unit_mass_huge_values_do_not_overflow():
    x = torch.tensor([[3e38, 3e38, 0.0, 3e38]])
    torch.testing.assert_close(unit_mass(x), torch.tensor([[1 / 3, 1 / 3, 0.0, 1 / 3]]))


def test_unit_mass_keeps_dtype_and_rejects_bad_input():
    x = torch.tensor([[1.0, 3.0]], dtype=torch.bfloat16)
    out = unit_mass(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([[0.25, 0.75]]))
    with pytest.raises(ValueError):
        unit_mass(torch.ones(4))
    with pytest.raises(ValueError):
        unit_mass(torch.ones(2, 2, dtype=torch.int32))


# ---------------------------------------------------------------- G (Eq. 1)


def test_depth_saliency_row_major_on_steps():
    # 8x8 with 2x2 cells of 4x4. A vertical step between columns 1 and 2 puts E = 4h on
    # columns 1 and 2 -> only the left cells have mass, equally: G = [0.5, 0, 0.5, 0].
    # The transposed (horizontal) step puts it in the top cells: G = [0.5, 0.5, 0, 0].
    vertical = vertical_step(8, 8, 2, 5.0)
    g = depth_saliency(torch.stack([vertical, vertical.T.contiguous()]), (2, 2))
    assert g.shape == (2, 4)
    torch.testing.assert_close(g[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(g[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_depth_saliency_equals_its_parts():
    depth = torch.rand(3, 12, 18)
    expected = unit_mass(pool_to_grid(sobel_magnitude(depth), (3, 2))).reshape(3, 6)
    torch.testing.assert_close(depth_saliency(depth, (3, 2)), expected)
    torch.testing.assert_close(saliency_from_edges(sobel_magnitude(depth), (3, 2)), expected)
    assert torch.allclose(expected.sum(1), torch.ones(3))


@pytest.mark.parametrize("value", [0.0, 1.0, -4.0, 1e30])
def test_flat_depth_gives_the_uniform_field(value):
    g = depth_saliency(torch.full((2, 16, 16), value), (4, 4))
    torch.testing.assert_close(g, torch.full((2, 16), 1 / 16))


def test_saliency_is_scale_invariant_and_finite_for_huge_and_tiny_depth():
    depth = torch.rand(2, 16, 16)
    g = depth_saliency(depth, (4, 4))
    huge = depth_saliency(depth * 1e30, (4, 4))
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge, g, rtol=1e-4, atol=1e-6)
    # So faint that the pooled mass is below UNIFORM_EPS: the documented uniform fallback.
    tiny = depth_saliency(depth * (UNIFORM_EPS * 1e-4), (4, 4))
    torch.testing.assert_close(tiny, torch.full((2, 16), 1 / 16))


def test_gradient_through_g_is_finite_on_flat_and_textured_maps():
    depth = torch.zeros(2, 8, 8)
    depth[1] = torch.rand(8, 8)
    depth.requires_grad_(True)
    target = torch.rand(2, 4)
    loss = (depth_saliency(depth, (2, 2)) * target).sum()
    loss.backward()
    assert torch.isfinite(depth.grad).all()
    assert depth.grad[1].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    depth = torch.rand(4, 64, 64)
    torch.testing.assert_close(
        depth_saliency(depth.cuda(), (16, 16)).cpu(),
        depth_saliency(depth, (16, 16)),
        rtol=1e-5,
        atol=1e-7,
    )


def test_matches_a_conv2d_sobel_reference_on_random_maps():
    # Independent reference: the textbook kernels applied with conv2d (cross-correlation).
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    weight = torch.stack([kx, kx.T])[:, None]
    depth = torch.rand(3, 11, 13, dtype=torch.float64)
    padded = torch.nn.functional.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(padded, weight.double())
    reference = torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2)
    torch.testing.assert_close(sobel_magnitude(depth), reference)
