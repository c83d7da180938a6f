"""The spectrum view's downloads in a real browser (issue 18): `panel serve app` driven by
Debian's chromium as a person drives it (a preset, the efficiency slider, the luminosity field,
the export buttons and the plot's save tool), checking the names and contents of the files that
arrive. Each arrives on its first click, named after the discriminant, the efficiency and the
dataset as the page shows them at that click. Skipped (with the reason) when /usr/bin/chromium
is absent, as in tests/test_app_browser.py, whose browser and server fixtures these tests use.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS
from sophon.histograms import METADATA_KEY, TOTAL_KEY, level_key, scan_histograms
from sophon.store import JetDataset

from test_app_browser import TIMEOUT_MS, browser, eventually, server  # noqa: F401

pytestmark = pytest.mark.browser

LUMINOSITY = ".bk-input-group:has(label:text-is('Luminosity (fb⁻¹)')) input"
LOCK_ERROR = "_pending_writes should be non-None"
WAIT_S = 90.0  # the page answers in about a second; a loaded 2-core machine takes longer
PRESET = PRESETS["A1: X->cs"]
STEM = "A1_X_cs_eff1e-3_jets"  # the server's synthetic dataset is jets.parquet


def _text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def _download(page, click):
    """Click, wait for the download that it starts; (suggested file name, contents)."""
    with page.expect_download(timeout=WAIT_S * 1000) as info:
        click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


def _save_tool(page, figure):
    """The save tool of ``figure`` (behind the toolbar's overflow menu when the title leaves it
    no room)."""
    figure.hover()
    save = figure.locator(".bk-ClickButton[title='Save']")
    if save.count():
        return save.first
    figure.locator(".bk-tool-overflow").click()
    box = figure.bounding_box()
    save = page.locator(".bk-ClickButton[title='Save']")
    return next(save.nth(i) for i in range(save.count())
                if save.nth(i).is_visible() and _inside(save.nth(i).bounding_box(), box))


def _inside(inner: dict, outer: dict) -> bool:
    return (outer["x"] <= inner["x"] and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
            and outer["y"] <= inner["y"]
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"])


def test_export_buttons_download_what_the_page_shows(browser, server, synthetic_path):  # noqa: F811
    uproot = pytest.importorskip("uproot")
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(server.url, timeout=TIMEOUT_MS)
        page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
        # the discriminant, the efficiency and the luminosity, as a person sets them
        page.locator(".preset select").select_option(label=PRESET.name)
        eventually(lambda: page.locator(".composer-name").first.inner_text(),
                   lambda name: PRESET.name in name, "the preset's name", timeout=WAIT_S)
        handle = page.locator(".efficiency-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        handle.press("ArrowRight")
        field = page.locator(LUMINOSITY).first
        field.click()
        field.fill("250")
        field.press("Enter")
        eventually(lambda: _text(page, ".scan-summary"),
                   lambda t: "ε = 1e-3" in t and "at 250 fb⁻¹" in t, "the summary",
                   timeout=WAIT_S)

        # what the page shows, from the library: the scan in events at 250 fb^-1 (the
        # synthetic dataset is made at 100)
        scan = DatasetAnalysis(JetDataset(synthetic_path)).jet_scan(PRESET).scaled(2.5)
        level = scan.nearest_level(1e-3)
        expected = scan_histograms(scan, level, every_level=True)

        # the histograms as ROOT (the default), on the first click
        export = page.get_by_role("button", name="Export histograms", exact=True)
        name, data = _download(page, export.click)
        assert name == f"{STEM}.root"
        with uproot.open(io.BytesIO(data)) as file:
            info = json.loads(str(file[METADATA_KEY]))
            assert info["luminosity_fb"] == 250.0 and info["discriminant"] == PRESET.name
            assert info["efficiency"] == pytest.approx(1e-3)
            for key in [*info["processes"], TOTAL_KEY,
                        *(level_key(i) for i in range(scan.n_levels))]:
                np.testing.assert_allclose(file[key].values(flow=True),
                                           expected[key].values(flow=True), rtol=1e-12)
                np.testing.assert_allclose(file[key].variances(flow=True),
                                           expected[key].variances(flow=True), rtol=1e-12)

        # npz: the format's button, then the same export button
        page.locator(".histogram-format").get_by_text("npz", exact=True).click()
        name, data = _download(page, export.click)
        assert name == f"{STEM}.npz"
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            assert [str(key) for key in stored["keys"]] == list(expected)
            np.testing.assert_allclose(stored["values"], np.stack(
                [h.values(flow=True) for h in expected.values()]), rtol=1e-12)

        # the publication figure as PDF (the default), then SVG
        figure_button = page.get_by_role("button", name="Publication figure", exact=True)
        name, data = _download(page, figure_button.click)
        assert name == f"{STEM}.pdf" and data.startswith(b"%PDF-")
        assert f"/Title ({PRESET.name}: jet mass spectra".encode() in data
        page.locator(".figure-format").get_by_text("SVG", exact=True).click()
        name, data = _download(page, figure_button.click)
        assert name == f"{STEM}.svg"
        document = ElementTree.fromstring(data)
        assert document.tag == "{http://www.w3.org/2000/svg}svg"
        titles = [e.text or "" for e in document.iter("{http://purl.org/dc/elements/1.1/}title")]
        assert any("at efficiency 1e-3 of all jets" in title for title in titles), titles

        # the plots' save tools write under the same names, without asking for one
        for index, what in enumerate(("spectra", "stack")):
            plot = page.locator(".scan-view .bk-Figure").nth(index)
            name, data = _download(page, _save_tool(page, plot).click)
            assert name == f"{STEM}_{what}.png" and data.startswith(b"\x89PNG")

        assert LOCK_ERROR not in server.log.read_text()
    finally:
        context.close()
