"""The paired statistics of fidesr-report (``fidesr.report.stats``) and the "best" rule built on them
(``fidesr.report.aggregate.verdict``): against scipy.stats.bootstrap, hand-computed cases and an interval
that straddles zero."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap, wilcoxon

from fidesr.report.aggregate import verdict
from fidesr.report.stats import PairedDifference, bootstrap_interval, paired_difference, signed_rank_p


def test_one_seed_interval_is_scipys_percentile_bootstrap() -> None:
    d = np.random.default_rng(5).normal(0.1, 1.0, 16)
    ref = bootstrap(
        (d,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(0), vectorized=True
    ).confidence_interval
    low, high = bootstrap_interval(d[None], n_resamples=10_000, seed=0)
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_hand_cases() -> None:
    # Every difference the same: every resample has that mean.
    assert bootstrap_interval(np.full((2, 12), 0.25)) == pytest.approx((0.25, 0.25))
    # Two seeds whose images agree within a seed (+1 and +3): resampling the seeds gives means 1, 2 or 3 with
    # probabilities 1/4, 1/2, 1/4, so the 95% interval is [1, 3]; resampling images alone would give [2, 2].
    assert bootstrap_interval(np.array([[1.0] * 8, [3.0] * 8]), n_resamples=4000) == pytest.approx((1.0, 3.0))
    with pytest.raises(ValueError, match=r"\[n_seeds, n_images\]"):
        bootstrap_interval(np.zeros(5))


def test_paired_difference_pairs_by_seed_and_name() -> None:
    base = {0: {"a": 20.0, "b": 30.0, "c": 25.0}, 1: {"a": 21.0, "b": 31.0, "c": 26.0}}
    # +1 on every image of seed 0, +3 on seed 1; image "x" and seed 2 have no partner and are left out.
    conf = {
        0: {"a": 21.0, "b": 31.0, "c": 26.0, "x": 0.0},
        1: {"a": 24.0, "b": 34.0, "c": 29.0},
        2: {"a": 0.0},
    }
    res = paired_difference(conf, base, n_resamples=2000)
    assert res is not None and (res.n_images, res.n_seeds) == (3, 2)
    assert res.delta == pytest.approx(2.0) and res.ci_low <= res.delta <= res.ci_high
    assert paired_difference({5: {"a": 1.0}}, base) is None  # no seed in common


def test_signed_rank_p() -> None:
    d = np.array([0.5, 1.0, -0.2, 0.8, 1.2, 0.3, 0.9, -0.1, 0.7, 0.4, 1.1, 0.6])
    assert signed_rank_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert signed_rank_p(np.zeros(12)) == 1.0  # identical outputs: nothing to test


def _res(delta: float, low: float, high: float) -> PairedDifference:
    return PairedDifference(delta, low, high, p_value=0.5, n_images=16, n_seeds=2)


def test_best_only_where_the_interval_excludes_zero() -> None:
    base = {"base": _res(0, 0, 0)}
    # Straddling zero: the larger mean is not called best.
    best, text = verdict(
        {**base, "a": _res(0.0008, -0.01, 0.012), "b": _res(-0.002, -0.02, 0.01)}, "base", False
    )
    assert best is None and text == "no difference detected at n = 16 images x 2 seeds"
    # Excluding zero on the good side (higher is better): best; on the bad side: named as worse.
    best, text = verdict({**base, "a": _res(0.13, 0.05, 0.21), "b": _res(-0.3, -0.5, -0.1)}, "base", False)
    assert best == "a" and text.startswith("best: `a`, Δ +0.13 [+0.05, +0.21]")
    # Lower is better: "a" is worse, "b" straddles zero, so nothing is best.
    best, text = verdict({**base, "a": _res(0.13, 0.05, 0.21), "b": _res(0.0, -0.1, 0.1)}, "base", True)
    assert best is None and text.endswith("worse than the baseline: `a`")
    best, text = verdict({**base, "a": _res(0.13, 0.05, 0.21), "b": _res(0.3, 0.1, 0.5)}, "base", True)
    assert best == "base" and "every other configuration is worse" in text
