"""Power laws L = a * X^(-b) + c fitted by least squares, with bootstrap confidence intervals over runs.

x is divided by its geometric mean inside the fit (conditioning: compute spans 1e12..1e16), and `a`
reported in x's own units. Bounds: a >= 0, 0 <= b <= 5, 0 <= c <= min(y) (a decreasing law above an
irreducible c). The bootstrap resamples the (x, y) points with replacement and refits; samples with fewer
than 3 distinct x, or whose fit fails, are dropped and counted.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy.optimize import curve_fit, nnls

B_MAX = 5.0


def _law(x, a, b, c):
    return a * np.power(x, -b) + c


B_GRID = np.concatenate([np.linspace(0.01, 0.1, 5), np.geomspace(0.12, B_MAX, 35)])


def _fit_scaled(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A, b, c) of y = A u^-b + c, u = x / x0: for each b of a grid (a, c) >= 0 by non-negative least
    squares (the law is linear in them), then the best refined by curve_fit (the sum of squares has flat
    valleys in which a single start stops early)."""
    best, start = np.inf, None
    for b in B_GRID:
        (a, c), residual = nnls(np.stack([u ** -b, np.ones_like(u)], 1), y)
        if residual < best:
            best, start = residual, (a, b, c)
    hi_c = max(y.min(), 1e-12)
    a0, b0, c0 = start
    p0 = (max(a0, 1e-12), b0, float(np.clip(c0, 1e-3 * hi_c, 0.999 * hi_c)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, _ = curve_fit(_law, u, y, p0=p0, bounds=([0, 0, 0], [np.inf, B_MAX, hi_c]), maxfev=20000)
    return p


@dataclasses.dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    intervals: dict  # "a" | "b" | "c" -> (low, high) at `level`
    level: float
    samples: np.ndarray  # [S, 3] bootstrap (a, b, c)
    dropped: int  # bootstrap samples dropped (degenerate or failed)
    n: int  # points fitted

    def __call__(self, x):
        return _law(np.asarray(x, np.float64), self.a, self.b, self.c)

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise `level` interval of the fitted curve at x over the bootstrap samples."""
        x = np.asarray(x, np.float64)
        curves = _law(x[None], *(self.samples.T[..., None]))  # [S, len(x)]
        q = (1 - self.level) / 2
        return np.quantile(curves, q, axis=0), np.quantile(curves, 1 - q, axis=0)


def fit_power_law(x, y, samples: int = 1000, level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """The least-squares a, b, c of y = a x^-b + c and their bootstrap (percentile) intervals."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(np.unique(x)) < 3 or np.any(x <= 0) or not np.all(np.isfinite(y)):
        raise ValueError(f"a power law a x^-b + c needs >= 3 distinct positive x and finite y; got x={x}, y={y}")
    x0 = float(np.exp(np.mean(np.log(x))))
    to_units = lambda p: np.array([p[0] * x0 ** p[1], p[1], p[2]])  # A (x/x0)^-b = (A x0^b) x^-b
    best = to_units(_fit_scaled(x / x0, y))
    rng = np.random.default_rng(seed)
    boot, dropped = [], 0
    for _ in range(samples):
        i = rng.integers(0, len(x), len(x))
        if len(np.unique(x[i])) < 3:
            dropped += 1
            continue
        try:
            boot.append(to_units(_fit_scaled(x[i] / x0, y[i])))
        except (RuntimeError, ValueError):
            dropped += 1
    boot = np.array(boot).reshape(-1, 3)
    q = (1 - level) / 2
    intervals = {name: (float(np.quantile(boot[:, j], q)), float(np.quantile(boot[:, j], 1 - q))) if len(boot)
                 else (float("nan"), float("nan")) for j, name in enumerate("abc")}
    return PowerLawFit(*map(float, best), intervals, level, boot, dropped, len(x))
