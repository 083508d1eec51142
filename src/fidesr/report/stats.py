"""Paired statistics of one configuration against a baseline: mean difference, bootstrap interval, test.

The unit of pairing is the validation image: both configurations scored the same images (by name), so
the per-image differences ``d[s, i] = config[s, i] - baseline[s, i]`` (seed ``s``, image ``i``) remove the
image-to-image spread that dwarfs the effects of an ablation. With several seeds the seeds are paired too
(seed 0 of the configuration with seed 0 of the baseline).

- **Interval**: a percentile bootstrap of the mean difference (two-level with seeds: resample the seeds,
  then the images within each drawn seed), ``n_resamples`` draws from a fixed seed so that a report is
  reproducible. With one seed it is exactly ``scipy.stats.bootstrap(method="percentile")`` on the
  differences with the same generator (tested).
- **Test**: the Wilcoxon signed-rank test (two-sided) on the per-image differences averaged over seeds
  (images are the independent units; seeds of one image are not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples of the bootstrap and the seed of its generator (fixed: the same sweep gives the same report).
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """A configuration minus the baseline on one metric, over ``n_seeds`` x ``n_images`` pairs."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_seeds: int

    @property
    def detected(self) -> bool:
        """The interval excludes zero (a difference is detected at this level)."""
        return self.ci_low > 0 or self.ci_high < 0


def bootstrap_interval(
    diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` [n_seeds, n_images] (seeds, then images, resampled).

    One seed: ``rng.integers(0, n, (n_resamples, n))`` indexes the images, which is what
    ``scipy.stats.bootstrap`` draws, so both give the same interval for the same generator seed.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"diffs must be a non-empty [n_seeds, n_images] array, got shape {diffs.shape}")
    n_seeds, n_images = diffs.shape
    rng = np.random.default_rng(seed)
    if n_seeds == 1:
        means = diffs[0][rng.integers(0, n_images, (n_resamples, n_images))].mean(axis=-1)
    else:
        seeds = rng.integers(0, n_seeds, (n_resamples, n_seeds))  # [R, S] which seeds
        images = rng.integers(0, n_images, (n_resamples, n_seeds, n_images))  # [R, S, N] images within them
        means = diffs[seeds[..., None], images].mean(axis=(1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def signed_rank_p(per_image: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-image differences [n_images] (1.0 when all are 0)."""
    from scipy.stats import wilcoxon

    per_image = np.asarray(per_image, dtype=np.float64)
    if per_image.size < 2 or not np.any(per_image != 0):
        return 1.0
    return float(wilcoxon(per_image).pvalue)


def paired_difference(
    config: Mapping[object, Mapping[str, float]],
    baseline: Mapping[object, Mapping[str, float]],
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference | None:
    """Paired comparison of one metric. ``config`` / ``baseline``: seed -> image name -> value.

    Only seeds present in both and images present in every one of those seeds of both are used; None when
    nothing pairs.
    """
    seeds = [s for s in config if s in baseline]
    names: Sequence[str] = (
        sorted(set.intersection(*(set(config[s]) & set(baseline[s]) for s in seeds))) if seeds else []
    )
    if not names:
        return None
    diffs = np.array([[config[s][n] - baseline[s][n] for n in names] for s in seeds])
    low, high = bootstrap_interval(diffs, n_resamples, seed)
    return PairedDifference(
        delta=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        p_value=signed_rank_p(diffs.mean(axis=0)),
        n_images=len(names),
        n_seeds=len(seeds),
    )
