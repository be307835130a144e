"""The toy world's statistics (bench/toyworld/stats.py), checked against computations made here
independently: the Wilson interval by inverting the score test numerically, the bootstrap by its
coverage of a known mean, the detectable effect from the standard library's normal quantiles."""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

import numpy as np
import pytest
from conftest import REPO

if str(REPO) not in sys.path:  # the bench package, imported from the repository root
    sys.path.append(str(REPO))

from bench.toyworld.report import Claim, Pool, _verdict
from bench.toyworld.stats import Z95, Estimate, bootstrap, detectable, wilson

Z = NormalDist().inv_cdf(0.975)


def _score_bound(k: int, n: int, upper: bool) -> float:
    """The end of the Wilson interval found by bisection: the p (on one side of k/n) where the
    score statistic |k/n − p| / √(p(1−p)/n) equals z."""
    p_hat = k / n

    def outside(p: float) -> bool:
        return abs(p_hat - p) > Z * math.sqrt(p * (1 - p) / n)

    lo, hi = (p_hat, 1.0) if upper else (0.0, p_hat)
    if upper and not outside(1.0 - 1e-15):
        return 1.0
    if not upper and not outside(1e-15):
        return 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        # moving away from p̂, the statistic grows: find where it crosses z
        if outside(mid) == upper:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (8, 20), (20, 20), (47, 240), (1, 3)])
def test_wilson_inverts_the_score_test(k: int, n: int) -> None:
    interval = wilson(k, n)
    assert interval.mean == pytest.approx(k / n)
    assert interval.n == n
    assert interval.low == pytest.approx(_score_bound(k, n, upper=False), abs=1e-9)
    assert interval.high == pytest.approx(_score_bound(k, n, upper=True), abs=1e-9)


def test_wilson_for_no_successes_has_the_closed_form_upper_end() -> None:
    # k = 0: the score test's upper root is z² / (n + z²)
    for n in (5, 20, 60):
        assert wilson(0, n).high == pytest.approx(Z * Z / (n + Z * Z), rel=1e-12)
        assert wilson(0, n).low == 0.0
        assert wilson(n, n).low == pytest.approx(n / (n + Z * Z), rel=1e-12)
    assert pytest.approx(Z, rel=1e-12) == Z95
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)
    with pytest.raises(ValueError, match="at least one trial"):
        wilson(0, 0)


def test_bootstrap_of_one_sample_matches_the_normal_interval() -> None:
    """One cluster: the percentile interval of the mean is about mean ± z·s/√n."""
    values = np.random.default_rng(7).normal(5.0, 2.0, size=400)
    estimate = bootstrap([values], resamples=4000, seed=1)
    assert estimate.mean == pytest.approx(values.mean())
    half = Z * values.std(ddof=1) / math.sqrt(values.size)
    assert (estimate.high - estimate.low) / 2 == pytest.approx(half, rel=0.1)
    assert estimate.low < values.mean() < estimate.high


def test_the_two_stage_bootstrap_covers_a_known_mean() -> None:
    """Clusters with their own offsets (as concepts trained with different seeds): the interval
    holds the true mean in about 95 % of experiments, and is wider than one that ignores the
    clusters."""
    rng = np.random.default_rng(2026)
    experiments, covered, widths, naive = 150, 0, [], []
    for k in range(experiments):
        offsets = rng.normal(0.0, 0.5, size=12)
        clusters = [offset + rng.normal(0.0, 1.0, size=15) for offset in offsets]
        estimate = bootstrap(clusters, resamples=300, seed=k)
        covered += estimate.low <= 0.0 <= estimate.high
        widths.append(estimate.high - estimate.low)
        pooled = np.concatenate(clusters)
        naive.append(2 * Z * pooled.std(ddof=1) / math.sqrt(pooled.size))
    assert 0.85 <= covered / experiments <= 0.99
    assert np.mean(widths) > 1.3 * np.mean(naive)


def test_paired_differences_and_verdicts() -> None:
    """Pool.difference pairs the images of one cell; a constant shift has a zero-width
    interval; the verdict follows the interval's side of zero."""
    rng = np.random.default_rng(3)
    measured = {}
    for seed in (0, 1):
        for replicate in (0, 1, 2):
            base = rng.random(10)
            measured[(seed, replicate)] = {"a": list(base + 0.1), "b": list(base)}
    pool = Pool(measured, resamples=300)
    shift = pool.difference(lambda s: s["a"], lambda s: s["b"])
    assert shift.mean == pytest.approx(0.1)
    assert shift.low == pytest.approx(0.1) and shift.high == pytest.approx(0.1)
    only = pool.difference(lambda s: s["a"], lambda s: s["b"], seed=1)
    assert only.n == 30
    claim = Claim("a beats b", "a − b", lambda s: s["a"], lambda s: s["b"])
    assert _verdict(pool.difference(claim.first, claim.second), claim.expected) == "reproduced"
    assert _verdict(Estimate(-0.2, -0.3, -0.1, 10), 1) == "reversed"
    assert _verdict(Estimate(0.05, -0.01, 0.11, 10), 1) == "not resolved at this sample size"
    assert _verdict(Estimate(0.05, -0.01, 0.11, 10), 0) == "consistent with no difference"
    assert _verdict(Estimate(0.05, 0.01, 0.11, 10), 0) == "differs (higher)"
    with pytest.raises(ValueError, match="unpaired"):
        Pool({(0, 0): {"a": [1.0, 0.0], "b": [1.0]}}, 10).difference(
            lambda s: s["a"], lambda s: s["b"]
        )
    rate = pool.rate(lambda s: [1.0, 0.0])
    assert (rate.mean, rate.n) == (0.5, 12)


def test_detectable_effect_from_the_normal_quantiles() -> None:
    se = 0.04
    estimate = Estimate(0.0, -Z * se, Z * se, 100)
    power = NormalDist().inv_cdf(0.8)
    assert detectable(estimate) == pytest.approx((Z + power) * se, rel=1e-9)
    # a test at 5 % of an effect that large rejects with probability 0.8
    effect = detectable(estimate)
    assert 1 - NormalDist(effect, se).cdf(Z * se) == pytest.approx(0.8, abs=1e-6)
