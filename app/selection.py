"""Selecting jets in the latent plane by box or lasso, on the raw coordinates.

The datashaded latent plot only reports the geometry (box bounds or lasso vertices, from
HoloViews' ``BoundsXY`` and ``Lasso`` streams); the jets inside are found here with numpy, so the
answer does not depend on what the browser rendered. Nothing loops over jets in Python.
"""

from __future__ import annotations

import numpy as np

__all__ = ["in_box", "box_indices", "polygon_indices"]


def in_box(x: np.ndarray, y: np.ndarray, bounds: tuple[float, float, float, float]) -> np.ndarray:
    """(N,) bool: ``x0 <= x <= x1`` and ``y0 <= y <= y1`` for ``bounds = (x0, y0, x1, y1)``
    (corners in any order). NaN coordinates are outside."""
    x0, y0, x1, y1 = (float(b) for b in bounds)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def box_indices(x: np.ndarray, y: np.ndarray,
                bounds: tuple[float, float, float, float]) -> np.ndarray:
    """Sorted int64 indices of the points inside the box."""
    return np.flatnonzero(in_box(x, y, bounds))


def polygon_indices(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Sorted int64 indices of the points inside the polygon ``vertices`` (V, 2) by the even-odd
    rule (a lasso path is closed implicitly).

    Only points in the polygon's bounding box are tested. They are sorted by y once; each edge
    then toggles just the points in its y band (half-open ``[min y, max y)``) lying left of the
    edge, so the work is the number of edge crossings, not V x N.
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    vertices = vertices[np.isfinite(vertices).all(axis=1)]
    if len(vertices) < 3:
        return np.zeros(0, dtype=np.int64)
    vx, vy = vertices[:, 0], vertices[:, 1]
    candidates = np.flatnonzero(in_box(x, y, (vx.min(), vy.min(), vx.max(), vy.max())))
    if candidates.size == 0:
        return candidates.astype(np.int64)
    px = np.asarray(x[candidates], dtype=np.float64)
    py = np.asarray(y[candidates], dtype=np.float64)
    order = np.argsort(py, kind="stable")
    px, py = px[order], py[order]
    inside = np.zeros(candidates.size, dtype=bool)
    x_start, y_start = vx, vy
    x_end, y_end = np.roll(vx, -1), np.roll(vy, -1)
    low = np.searchsorted(py, np.minimum(y_start, y_end), side="left")
    high = np.searchsorted(py, np.maximum(y_start, y_end), side="left")
    for xi, yi, xj, yj, lo, hi in zip(x_start, y_start, x_end, y_end, low, high):
        if hi <= lo:  # horizontal edge or no point in its band
            continue
        band_y = py[lo:hi]
        crossing = xi + (band_y - yi) * ((xj - xi) / (yj - yi))
        inside[lo:hi] ^= px[lo:hi] < crossing
    return np.sort(candidates[order[inside]]).astype(np.int64)
