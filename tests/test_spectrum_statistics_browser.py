"""How much statistics a spectrum carries, as the page shows it (`panel serve app`, chromium).

The effective number of jets beside "Selected jets" is Kish's (sum w)^2 / sum w^2 of the jets
passing the cut; here it is recomputed independently from the SYNTHETIC dataset's columns with a
full sort (not the library's bucketed thresholds), for all jets and for each event's leading jet
(the "leading jet" toggle: cuts and spectra on leading jets only). The low-statistics warning
shows exactly when that count is below the library's threshold. Skipped without chromium.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_app_browser import (TIMEOUT_MS, _summary, _wait_for_text_change,  # noqa: F401
                              browser, server)

pytestmark = pytest.mark.browser


def _effective_jets(values: np.ndarray, weights: np.ndarray, efficiency: float) -> float:
    """ESS of the jets with value >= the cut keeping ``efficiency`` of the weight."""
    order = np.argsort(-values.astype(np.float64), kind="stable")
    cumulative = np.cumsum(weights[order])
    last = int(np.searchsorted(cumulative, efficiency * cumulative[-1] * (1 - 1e-12)))
    passing = values >= values[order][last]
    w = weights[passing]
    return float(w.sum() ** 2 / (w ** 2).sum())


def _shown_effective(page) -> float:
    return float(page.locator(".effective-count").first.inner_text().replace(",", ""))


def test_effective_count_and_leading_jet_toggle(browser, server, synthetic_dataset):
    from app.explorer import DEFAULT_DISCRIMINANT
    from app.views.spectrum import LOW_STATISTICS

    scores = synthetic_dataset.scores
    values = DEFAULT_DISCRIMINANT.log_odds(scores)
    weights = synthetic_dataset.weights
    leading = synthetic_dataset.column("jet_rank") == 0
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(server.url, timeout=TIMEOUT_MS)
        page.wait_for_selector(".effective-count", timeout=TIMEOUT_MS)
        first = _summary(page)
        assert "ε = 0.01" in first
        expected = _effective_jets(values, weights, 0.01)
        assert _shown_effective(page) == pytest.approx(expected, abs=0.051)

        # the leading-jet spectrum: cuts and counts on each event's leading jet only
        page.get_by_text("leading jet", exact=True).click()
        after = _wait_for_text_change(page, ".scan-summary", first)
        expected_leading = _effective_jets(values[leading], weights[leading], 0.01)
        assert _shown_effective(page) == pytest.approx(expected_leading, abs=0.051)
        assert expected_leading != pytest.approx(expected, abs=0.051)  # the toggle matters

        # tighten to 1e-4 step by step: the warning shows exactly when the count is low
        handle = page.locator(".efficiency-slider .noUi-handle").first
        text = after
        for _ in range(4):
            handle.focus()
            handle.press("ArrowRight")
            text = _wait_for_text_change(page, ".scan-summary", text)
        assert "ε = 1e-4" in text or "ε = 1.0e-4" in text
        expected_tight = _effective_jets(values[leading], weights[leading], 1e-4)
        assert _shown_effective(page) == pytest.approx(expected_tight, abs=0.051)
        warned = page.locator(".low-statistics-warning").count() > 0
        assert warned == (expected_tight < LOW_STATISTICS)
    finally:
        page.close()
