"""Statistics for counting experiments."""

from __future__ import annotations

import numpy as np

__all__ = ["asimov_significance", "effective_count"]


def asimov_significance(signal: np.ndarray | float, background: np.ndarray | float) -> np.ndarray:
    """Z = sqrt(2 ((s + b) ln(1 + s/b) - s)), the median discovery significance for s signal
    events over b background events (both in expected events). Z = 0 where s <= 0; where b = 0
    and s > 0 the significance is unbounded and returned as inf."""
    s = np.asarray(signal, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_squared = 2.0 * ((s + b) * np.log1p(s / b) - s)
    z = np.sqrt(np.clip(z_squared, 0.0, None))
    z = np.where(s <= 0, 0.0, z)
    return np.where((b <= 0) & (s > 0), np.inf, z)


def effective_count(sum_of_weights: np.ndarray | float,
                    sum_of_squared_weights: np.ndarray | float) -> np.ndarray | float:
    """Kish's effective sample size (sum w)^2 / sum w^2: how many equal-weight jets carry the
    same statistics as jets with these sums (elementwise for arrays; 0 where sum w^2 = 0)."""
    total = np.asarray(sum_of_weights, dtype=np.float64)
    squared = np.asarray(sum_of_squared_weights, dtype=np.float64)
    count = np.divide(total ** 2, squared, out=np.zeros(np.broadcast(total, squared).shape),
                      where=squared > 0)
    return float(count) if count.ndim == 0 else count
