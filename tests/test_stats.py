"""The experiment statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daat.eval import stats


def test_mean_and_sample_std():
    mean, std = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3), abs=1e-12)
    assert stats.mean_std([0.3]) == (0.3, None)
    assert stats.mean_std([None, 2.0, 4.0]) == (3.0, pytest.approx(math.sqrt(2)))
    assert stats.mean_std([]) == (None, None)


@pytest.mark.parametrize(
    "p, df, expected",
    [  # printed t tables (to 10 digits)
        (0.975, 1, 12.7062047362),
        (0.975, 2, 4.3026527297),
        (0.975, 3, 3.1824463053),
        (0.975, 10, 2.2281388520),
        (0.975, 30, 2.0422724563),
        (0.95, 5, 2.0150483733),
        (0.025, 4, -2.7764451052),
        (0.5, 7, 0.0),
    ],
)
def test_t_quantile_matches_the_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-8)


def test_t_interval_by_hand():
    low, high = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.1824463053 * math.sqrt(5 / 3) / 2  # t_{.975,3} * s / sqrt(n)
    assert (low, high) == (pytest.approx(2.5 - half, abs=1e-8), pytest.approx(2.5 + half, abs=1e-8))
    assert stats.t_interval([0.5]) is None
    assert stats.t_interval([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.2))


def test_mcnemar_exact_by_hand():
    a = [1, 1, 1, 0, 0, 1]
    b = [0, 0, 0, 1, 0, 1]
    got = stats.mcnemar_exact(a, b)
    assert (got.b, got.c) == (3, 1)
    assert got.p == pytest.approx(2 * (1 + 4) / 16)  # 2 * P[Bin(4, 1/2) <= 1]
    assert stats.mcnemar_exact([1] * 10, [0] * 10).p == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact([1, 1, 0, 0], [0, 0, 1, 1]).p == 1.0  # b = c
    assert stats.mcnemar_exact([1, 0], [1, 0]).p == 1.0  # no discordant pair
    with pytest.raises(ValueError):
        stats.mcnemar_exact([1, 0], [1])


def reference_bootstrap(d, replicates, seed):
    """The documented procedure written out plainly: per replicate, S seed indices then N sample
    indices, the mean of the selected rows and columns; 2.5 and 97.5 percentiles."""
    d = np.asarray(d, dtype=float)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(replicates):
        rows = rng.integers(0, d.shape[0], d.shape[0])
        cols = rng.integers(0, d.shape[1], d.shape[1])
        reps.append(d[rows][:, cols].mean())
    return np.quantile(reps, [0.025, 0.975])


def test_paired_bootstrap_with_a_fixed_seed():
    d = np.array([[1, 0, 0, -1, 1, 0, 1, 1], [0, 0, 1, 1, -1, 0, 1, 0], [1, 1, 0, 0, 0, 0, 1, 0]])
    got = stats.paired_bootstrap(d, replicates=500, seed=7)
    low, high = reference_bootstrap(d, 500, 7)
    assert got.mean == pytest.approx(d.mean()) and (got.seeds, got.samples) == (3, 8)
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert stats.paired_bootstrap(d, replicates=500, seed=7) == got  # same seed, same interval
    assert stats.paired_bootstrap(d, replicates=500, seed=8) != got


def test_paired_bootstrap_exhaustive_cases():
    const = stats.paired_bootstrap(np.full((2, 5), 0.25), replicates=200, seed=0)
    assert (const.mean, const.low, const.high) == (0.25, 0.25, 0.25)
    # one seed, samples [0, 1]: a replicate mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4
    two = stats.paired_bootstrap(np.array([[0.0, 1.0]]), replicates=4000, seed=1)
    assert (two.mean, two.low, two.high) == (0.5, 0.0, 1.0)
