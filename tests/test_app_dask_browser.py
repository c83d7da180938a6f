"""One end-to-end test of ``panel serve app --args --data DIR --dask local`` in headless chromium
(the fixtures of tests/test_app_browser.py): the page opens on the cluster analysis, a preset is
scanned on the LocalCluster while the page says so, and the selected count is the in-memory
count of the whole SYNTHETIC dataset (test data only)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("distributed")

from sophon.analysis import DatasetAnalysis  # noqa: E402
from sophon.discriminant import PRESETS  # noqa: E402
from sophon.spectrum import DEFAULT_EFFICIENCIES, nearest_level  # noqa: E402
from sophon.store import JetDataset  # noqa: E402
from test_app_browser import (TIMEOUT_MS, Server, _count,  # noqa: E402
                              _wait_for_text_change, browser)  # noqa: F401
from test_cluster_analysis import write_parts  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCAN_TIMEOUT_S = 120.0  # a preset's scan on two busy cores
#: The first page waits for the LocalCluster's worker processes (a minute on two busy cores).
STARTUP_TIMEOUT_S = 300.0


def test_a_preset_is_scanned_on_the_cluster(browser, tmp_path):  # noqa: F811
    data = write_parts(tmp_path / "jets")  # under the sample cap: p = 1
    # the first page waits for the LocalCluster's workers; a failed start stops them too
    server = Server(data, tmp_path, app_args=("--dask", "local"), ready_timeout=STARTUP_TIMEOUT_S)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(server.url, timeout=TIMEOUT_MS)
        page.wait_for_selector(".scan-summary", timeout=SCAN_TIMEOUT_S * 1000)
        # the header's text lies in its pane's shadow root: found by text, which pierces it
        header = page.get_by_text("scanned on the Dask cluster").first.inner_text()
        assert "scanned on the Dask cluster" in header and "20,000 jets" in header
        first = page.locator(".scan-summary").first.inner_text()
        page.locator(".preset select").select_option(label="A1: X->cs")
        after = _wait_for_text_change(page, ".scan-summary", first, timeout=SCAN_TIMEOUT_S)
        want = DatasetAnalysis(JetDataset(data)).jet_scan(PRESETS["A1: X->cs"])
        level = nearest_level(DEFAULT_EFFICIENCIES, 1e-2)
        assert _count(after, "Selected jets") == want.selected_jets(level)
        assert not page.locator(".scan-computing").first.is_visible()
        assert server.alive()
    finally:
        page.close()
        server.stop()
        time.sleep(1)  # the LocalCluster's workers stop with the server
    log = server.log.read_text()
    # while serving, no traceback at all; after the stop signal the LocalCluster's teardown may
    # log one of Dask's own (a scheduler's send to a worker whose connection already closed),
    # but none may come from the app or the library
    serving, _, stopping = log.partition("Received signal SIGTERM")
    assert "Traceback" not in serving, serving[-3000:]
    ours = [line for line in stopping.splitlines()
            if line.strip().startswith("File ") and ("/app/" in line or "/sophon/" in line)]
    assert not ours, stopping[-3000:]
