"""Intervals for the toy world's tables: Wilson for rates, a two-level bootstrap for means.

The measurements come in *clusters*: one per (base model, training seed) — a concept trained
with one seed and sampled with that replicate's noise — each holding one value per generated
image. Images within a cluster share a concept file and are not independent of each other, so
the bootstrap resamples clusters first and then images within each drawn cluster (Davison &
Hinkley's two-stage bootstrap). A difference between two settings measured on the same noise
(keys locked against learned, a concept against the superclass word) is bootstrapped *paired*:
the same clusters and the same image indices are drawn for both.

- :func:`wilson` — the Wilson score interval for k successes in n trials;
- :func:`bootstrap` — mean and percentile interval of clustered values (or of paired
  differences);
- :func:`detectable` — the smallest effect a test at 5 % with 80 % power would find, given the
  interval's width: (z₀.₉₇₅ + z₀.₈) · SE, with SE taken as the interval's half-width / z₀.₉₇₅.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Z95", "Estimate", "bootstrap", "detectable", "wilson"]

#: The standard normal's 97.5 % quantile (two-sided 95 %).
Z95 = 1.959963984540054
#: The standard normal's 80 % quantile (power 0.8).
Z80 = 0.8416212335729143


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval and how many values it rests on."""

    mean: float
    low: float
    high: float
    n: int

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval lies wholly on one side of ``value``."""
        return self.low > value or self.high < value

    def cell(self, digits: int = 2) -> str:
        """``0.92 [0.90, 0.94]``."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def wilson(successes: int, trials: int, z: float = Z95) -> Estimate:
    """The Wilson score interval for ``successes`` of ``trials`` (E. B. Wilson, 1927): the
    proportions p whose score test |p̂ − p| ≤ z·√(p(1−p)/n) does not reject."""
    if trials <= 0:
        raise ValueError("a rate needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes of {trials} trials")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), trials)


def bootstrap(
    clusters: Sequence[np.ndarray | Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """The mean of all values in ``clusters`` (each weighted by its size) and its two-stage
    percentile bootstrap interval: draw as many clusters as there are, with replacement, then
    within each drawn cluster as many values as it holds, with replacement. With one cluster the
    interval reflects the images alone. Paired differences: pass the per-image differences."""
    arrays = [np.asarray(c, dtype=np.float64).ravel() for c in clusters]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("nothing to bootstrap")
    rng = np.random.default_rng(seed)
    count = len(arrays)
    totals = np.zeros(resamples)
    sizes = np.zeros(resamples)
    picks = rng.integers(count, size=(resamples, count))
    for index, values in enumerate(arrays):
        # how often cluster `index` was drawn in each resample, and its values' resampled sums
        drawn = (picks == index).sum(axis=1)
        most = int(drawn.max())
        if most == 0:
            continue
        draws = rng.integers(values.size, size=(resamples, most, values.size))
        sums = values[draws].sum(axis=2)  # [resamples, most]
        used = np.arange(most)[None, :] < drawn[:, None]
        totals += (sums * used).sum(axis=1)
        sizes += drawn * values.size
    means = totals / sizes
    everything = np.concatenate(arrays)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(everything.mean()), float(low), float(high), int(everything.size))


def detectable(estimate: Estimate, z: float = Z95) -> float:
    """The smallest true effect this run would find with 80 % power at the 5 % level, from the
    interval's half-width (half-width / z = the standard error): (z₀.₉₇₅ + z₀.₈) · SE."""
    se = (estimate.high - estimate.low) / 2 / z
    return (Z95 + Z80) * se
