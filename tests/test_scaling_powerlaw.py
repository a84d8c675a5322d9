"""Power-law fits (headsup_jax.scaling.powerlaw): known a, b, c recovered from noisy synthetic points."""
import numpy as np
import pytest

from headsup_jax.scaling.powerlaw import fit_power_law


@pytest.mark.parametrize("a,b,c,x", [
    (300.0, 0.5, 0.2, np.geomspace(3e4, 2e6, 8)),  # parameters
    (0.8, 0.7, 0.05, np.array([1, 2, 4, 8, 16.0])),  # views
    (5e3, 0.35, 0.1, np.geomspace(1e12, 1e16, 10)),  # compute: a in x's own units
])
def test_fit_recovers_known_law_within_its_interval(a, b, c, x):
    rng = np.random.default_rng(1)
    truth = a * x ** -b + c
    y = truth * (1 + 0.01 * rng.standard_normal(x.shape))  # 1 % noise
    fit = fit_power_law(np.tile(x, 3), np.concatenate([y, truth * (1 + 0.01 * rng.standard_normal(x.shape)),
                                                         truth * (1 + 0.01 * rng.standard_normal(x.shape))]))
    for name, true in (("a", a), ("b", b), ("c", c)):
        lo, hi = fit.intervals[name]
        assert lo <= true <= hi, (name, true, fit.intervals)
    b_lo, b_hi = fit.intervals["b"]
    assert b_hi - b_lo < 0.5 * b, fit.intervals  # informative, not absurdly wide
    assert abs(fit.b - b) < 0.15 * b and abs(fit.c - c) < 0.2 * max(c, 0.05)
    lo, hi = fit.band(x)
    assert np.all(lo <= fit(x) + 1e-12) and np.all(fit(x) <= hi + 1e-12)
    assert fit.dropped < 50


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1, 2, 2], [1.0, 0.5, 0.5])
