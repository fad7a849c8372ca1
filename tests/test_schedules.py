"""Schedules: lr (warm-up + cosine), gamma(t) (Eq. 4) and s(t) at hand-computed points."""

import math

import pytest

from daat.train.schedules import ema_decay_at, eps_scale_at, gamma_at, lr_at, s_at


@pytest.mark.parametrize(
    "epoch, expected", [(0, 1.0), (30, 0.5), (60, 0.0), (299, 0.0), (15, 0.75)]
)
def test_gamma_paper_schedule_T300(epoch, expected):
    # gamma0 * max(0, 1 - t / (0.2 * 300)) = 1 - t / 60
    assert gamma_at(epoch, 300, 1.0) == pytest.approx(expected, abs=1e-12)


def test_gamma_scales_with_gamma0_and_frac():
    assert gamma_at(10, 100, 2.0, frac=0.5) == pytest.approx(2.0 * (1 - 10 / 50))
    assert gamma_at(0, 6, 0.0) == 0.0


def test_gamma_rejects_bad_frac():
    with pytest.raises(ValueError):
        gamma_at(0, 10, 1.0, frac=0.0)


def test_lr_warmup_is_linear_and_reaches_base():
    base, low = 1e-3, 1e-5
    assert lr_at(0, 110, 10, base, low) == pytest.approx(1e-4)  # (0 + 1) / 10 of base
    assert lr_at(4, 110, 10, base, low) == pytest.approx(5e-4)
    assert lr_at(9, 110, 10, base, low) == pytest.approx(base)


def test_lr_cosine_points():
    base, low = 1e-3, 1e-5
    # p = (step - 10) / 100; lr = low + (base - low) (1 + cos(pi p)) / 2
    assert lr_at(10, 110, 10, base, low) == pytest.approx(base)
    assert lr_at(35, 110, 10, base, low) == pytest.approx(low + 9.9e-4 * (1 + math.sqrt(0.5)) / 2)
    assert lr_at(60, 110, 10, base, low) == pytest.approx(low + 9.9e-4 * 0.5)
    assert lr_at(110, 110, 10, base, low) == pytest.approx(low)
    assert lr_at(500, 110, 10, base, low) == pytest.approx(low)  # clipped past the end


def test_lr_monotone_after_warmup_and_no_warmup_starts_at_base():
    lrs = [lr_at(s, 50, 5, 1.0, 0.0) for s in range(5, 51)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, 50, 0, 1.0, 0.0) == 1.0


def test_lr_rejects_bad_arguments():
    with pytest.raises(ValueError):
        lr_at(0, 10, 20, 1.0, 0.0)
    with pytest.raises(ValueError):
        lr_at(-1, 10, 2, 1.0, 0.0)


def test_s_constant_is_one():
    assert [s_at(t, 10) for t in range(10)] == [1.0] * 10


@pytest.mark.parametrize(
    "epoch, expected", [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0), (99, 1 / 90)]
)
def test_s_warmup_anneal(epoch, expected):
    # T = 100, W = 10: ramp t / 10, then (100 - t) / 90
    assert s_at(epoch, 100, "warmup_anneal", 0.1) == pytest.approx(expected, abs=1e-12)


def test_s_warmup_anneal_stays_in_unit_interval():
    values = [s_at(t / 4, 8, "warmup_anneal", 0.25) for t in range(0, 8 * 4 + 1)]  # W = 2
    assert all(0.0 <= v <= 1.0 for v in values)
    assert max(values) == pytest.approx(1.0)


def test_s_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        s_at(0, 10, "cosine")


@pytest.mark.parametrize(
    "step, warmup, expected",
    [
        (0, 4, 0.25),
        (1, 4, 0.5),
        (2, 4, 0.75),
        (3, 4, 1.0),
        (4, 4, 1.0),
        (99, 4, 1.0),
        (0, 1, 1.0),
        (0, 0, 1.0),
        (7, 0, 1.0),
        (9, 20, 0.5),
    ],
)
def test_eps_warmup_is_linear_like_the_lr_warmup(step, warmup, expected):
    # (step + 1) / warmup before the end of the warm-up, then 1; no warm-up = always 1
    assert eps_scale_at(step, warmup) == pytest.approx(expected, abs=1e-12)


def test_eps_warmup_rejects_negative_inputs():
    with pytest.raises(ValueError):
        eps_scale_at(-1, 4)
    with pytest.raises(ValueError):
        eps_scale_at(0, -4)


@pytest.mark.parametrize(
    "step, decay, expected",
    [(0, 0.999, 0.1), (10, 0.999, 0.55), (90, 0.9, 0.9), (1000, 0.99, 0.99), (3, 0.0, 0.0)],
)
def test_ema_decay_warms_up_as_one_plus_t_over_ten_plus_t(step, decay, expected):
    assert ema_decay_at(step, decay) == pytest.approx(expected, abs=1e-12)


def test_ema_decay_rejects_bad_inputs():
    with pytest.raises(ValueError):
        ema_decay_at(-1, 0.9)
    with pytest.raises(ValueError):
        ema_decay_at(0, 1.0)
