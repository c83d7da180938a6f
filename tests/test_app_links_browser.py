"""Links, the luminosity field and the achieved efficiency in a real browser (issue 14, items 5,
8 and 11): `panel serve app` driven by Debian's chromium as a person drives it (click, type,
press Enter, drag on the latent plot), reading what the page and the address bar show, and
opening the copied link in a fresh page.

Before the fix the address held only the discriminant, efficiency, reference, normalisation,
log scale and tab (a copied link lost the luminosity, the signal and window, the jet choice, the
MC errors, the latent colouring, selection and jet); ``eff=0.05`` stopped the page (the player
refused a value between its levels); bad values of other parameters were dropped without a
word; the luminosity field took 0 (a blank plot), negative and empty values; the selection
summary named no efficiency. Skipped (with the reason) when /usr/bin/chromium is absent, as in
tests/test_app_browser.py, whose browser and server fixtures these tests use.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse

import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS
from sophon.spectrum import DEFAULT_EFFICIENCIES

from app.selection import box_indices, polygon_indices
from test_app_browser import TIMEOUT_MS, browser, drag_box, latent_canvas_box, server  # noqa: F401

pytestmark = pytest.mark.browser

LUMINOSITY = ".bk-input-group:has(label:text-is('Luminosity (fb⁻¹)')) input"
MC_ERRORS = ".scan-view input[type=checkbox]"  # the spectrum's one checkbox
WAIT_S = 90.0  # the page answers in about a second; a loaded 2-core machine takes longer
EFFICIENCIES = tuple(float(e) for e in DEFAULT_EFFICIENCIES)
DEFAULT = PRESETS["X->bb vs QCD"]


def _eventually(read, check, what: str, timeout: float = WAIT_S):
    """``read()`` once ``check`` holds for it (polled), else AssertionError with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = read()
        except Exception as error:  # noqa: BLE001  (an element being replaced)
            value = error
        else:
            if check(value):
                return value
        time.sleep(0.25)
    raise AssertionError(f"{what}: still {value!r} after {timeout:.0f} s")


def _open(browser, url: str, ready: str = ".scan-summary"):  # noqa: F811
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(url, timeout=TIMEOUT_MS)
    page.wait_for_selector(ready, timeout=TIMEOUT_MS)
    return context, page


def _text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def _search(page) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(page.evaluate("window.location.search")[1:]))


def _type(page, selector: str, text: str) -> None:
    """Type ``text`` into the field and press Enter, as a person does."""
    field = page.locator(selector).first
    field.click()
    field.fill(text)
    field.press("Enter")


def _active_buttons(page) -> set[str]:
    return set(page.locator(".scan-view .bk-btn.bk-active").all_inner_texts())


def _slider(page) -> str:
    return page.get_by_text("Efficiency:").first.inner_text()


def _yield(summary: str) -> float:
    match = re.search(r"weighted yield: ([\d.,]+)(k|M)?", summary)
    assert match, summary
    return float(match.group(1).replace(",", "")) * {None: 1, "k": 1e3, "M": 1e6}[match.group(2)]


def _view(page) -> dict[str, object]:
    """What the page shows, tab by tab (it ends on the latent space)."""
    shown: dict[str, object] = {}
    page.get_by_text("Spectrum", exact=True).click()
    shown["summary"] = _eventually(lambda: _text(page, ".scan-summary"),
                                   lambda t: "Selected jets" in t, "the spectrum summary")
    shown["selection"] = _eventually(lambda: _text(page, ".selection-summary"), bool,
                                     "the selection summary")
    shown["buttons"] = _active_buttons(page)
    shown["slider"] = _slider(page)
    shown["luminosity"] = page.locator(LUMINOSITY).first.input_value()
    shown["errors"] = page.locator(MC_ERRORS).first.is_checked()
    page.get_by_text("Significance", exact=True).click()
    shown["significance"] = _eventually(lambda: _text(page, ".significance-text"),
                                        lambda t: "Best Z" in t or "No signal" in t,
                                        "the significance")
    page.get_by_text("Latent space", exact=True).click()
    shown["selected"] = _eventually(lambda: _text(page, ".latent-selected"), bool,
                                    "the latent selection's count")
    shown["colour"] = _eventually(lambda: page.locator(".latent-view select").first.input_value(),
                                  bool, "the colouring")
    shown["jet"] = _eventually(lambda: _text(page, ".jet-summary div"),
                               lambda t: t.startswith("Jet "), "the jet detail")
    return shown


def test_a_copied_link_reproduces_every_control(browser, server):  # noqa: F811
    context, page = _open(browser, server.url)
    other = None
    try:
        # the spectrum's controls, as a person sets them
        handle = page.locator(".efficiency-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        handle.press("ArrowRight")
        _eventually(lambda: _text(page, ".scan-summary"), lambda t: "ε = 1e-3" in t,
                    "the summary after the slider")
        for label in ("ε over QCD jets", "leading jet", "linear"):
            page.get_by_text(label, exact=True).click()
        page.locator(MC_ERRORS).first.check()
        _type(page, LUMINOSITY, "300")
        _eventually(lambda: _text(page, ".scan-summary"),
                    lambda t: "at 300 fb⁻¹" in t and "of QCD jets" in t, "the luminosity")

        # the significance's signal process and mass window
        page.get_by_text("Significance", exact=True).click()
        page.wait_for_selector(".significance-text", timeout=TIMEOUT_MS)
        signal = page.locator(".significance-view select").first
        options = signal.evaluate("e => Array.from(e.options).map(o => o.value)")
        chosen = options[-1] if signal.input_value() != options[-1] else options[0]
        signal.select_option(chosen)
        text = _eventually(lambda: _text(page, ".significance-text"), lambda t: chosen in t,
                           "the signal's Z")
        window = re.search(r"in \[([\d.]+), ([\d.]+)\] GeV", text).groups()
        upper = page.locator(".significance-view .noUi-handle").nth(1)
        upper.focus()
        upper.press("ArrowLeft")
        _eventually(lambda: _text(page, ".significance-text"),
                    lambda t: f"in [{window[0]}, {float(window[1]) - 5:g}] GeV" in t,
                    "the window after its slider")

        # the latent space: colour by D, a box, a jet from the table
        page.get_by_text("Latent space", exact=True).click()
        page.wait_for_selector(".latent-plot canvas", timeout=TIMEOUT_MS)
        page.wait_for_selector(".latent-help", timeout=TIMEOUT_MS)
        time.sleep(2.0)  # let the datashaded image arrive
        drag_box(page, 0.30, 0.30, 0.25, 0.30)
        page.wait_for_selector(".latent-selected", timeout=TIMEOUT_MS)
        page.locator(".latent-view select").first.select_option(label="discriminant value D")
        _eventually(lambda: _search(page).get("color"), lambda c: c == "D", "the colour's link")
        rows = page.locator(".selection-table .tabulator-row")
        _eventually(rows.count, lambda n: n >= 3, "the selected jets' table")
        rows.nth(2).locator(".tabulator-cell").nth(1).click()
        _eventually(lambda: _text(page, ".jet-summary div"), lambda t: t.startswith("Jet "),
                    "the chosen jet")

        linked = _eventually(lambda: _search(page), lambda s: "jet" in s and "box" in s,
                             "the link")
        assert float(linked["eff"]) == pytest.approx(1e-3)
        assert (linked["ref"], linked["jets"], linked["logy"], linked["errors"]) == (
            "QCD", "leading", "false", "true")
        assert float(linked["lumi"]) == 300 and linked["signal"] == chosen
        assert linked["color"] == "D" and linked["view"] == "latent-space"
        assert linked["window"] == f"{window[0]},{float(window[1]) - 5:g}"
        assert len(linked["box"].split(",")) == 4
        shown = _view(page)
        assert shown["jet"].startswith(f"Jet {linked['jet']} ")
        assert {"ε over QCD jets", "leading jet", "linear"} <= shown["buttons"]

        # the copied link in a fresh page: the same view
        copied = page.evaluate("window.location.href")
        other_context, other = _open(browser, copied, ready=".latent-selected")
        reproduced = _view(other)
        assert reproduced == shown
        assert not other.locator(".link-notice-text").count() or \
            not other.locator(".link-notice-text").first.is_visible()
        other_context.close()
        other = None
    finally:
        context.close()


def test_a_link_lasso_selects_the_same_jets_and_is_bounded(browser, server,  # noqa: F811
                                                           synthetic_dataset):
    x, y = synthetic_dataset.column("umap_x"), synthetic_dataset.column("umap_y")
    angles = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    polygon = np.round(np.c_[2.5 + 2.0 * np.cos(angles), 2.0 + 1.5 * np.sin(angles)], 4)
    expected = len(polygon_indices(x, y, polygon))
    assert 0 < expected < synthetic_dataset.n_jets
    lasso = ";".join(f"{a:g},{b:g}" for a, b in polygon)
    context, page = _open(browser, f"{server.url}?lasso={urllib.parse.quote(lasso)}")
    try:
        # waits for the lasso's own summary: an earlier render may show another state
        summary = _eventually(lambda: _text(page, ".selection-summary"),
                              lambda t: "lasso of 40 points" in t and f"{expected:,} jets" in t,
                              "the selection summary")
        assert f"{expected:,} jets" in summary and "lasso of 40 points" in summary
        assert _search(page).get("lasso") == lasso
        # more points than a link holds: refused by name, the rest applies
        too_many = ";".join(f"{a:g},{b:g}" for a, b in np.tile(polygon, (3, 1)))
        page.goto(f"{server.url}?lasso={urllib.parse.quote(too_many)}&norm=true",
                  timeout=TIMEOUT_MS)
        notice = _eventually(lambda: _text(page, ".link-notice-text"),
                             lambda t: "lasso=" in t, "the notice")
        assert notice.startswith("Not applied from the link: lasso='") and \
            "(expected 3 to 100 points x,y separated by ';')" in notice
        assert "normalised" in _eventually(lambda: _active_buttons(page),
                                           lambda b: "normalised" in b, "norm=true")
        assert "lasso" not in _eventually(lambda: _search(page), lambda s: "d" in s, "the link")
        assert page.locator(".selection-summary").count() == 0
    finally:
        context.close()


def test_a_link_with_bad_values_names_them_and_applies_the_rest(browser, server):  # noqa: F811
    link = ("?eff=0.05&norm=true&ref=QCD&lumi=0&view=%3Cb%3Ebogus%3C%2Fb%3E&jets=leading"
            "&logy=maybe&jet=99999999&window=300,100")
    context, page = _open(browser, server.url + link)
    try:
        notice = _eventually(lambda: _text(page, ".link-notice-text"),
                             lambda t: "Adjusted" in t, "the notice")
        for part in ("logy='maybe' (expected true or false)",
                     "lumi='0' (expected a positive number of fb⁻¹ up to 100,000)",
                     "window='300,100' (expected low,high in GeV with 0 ≤ low < high ≤ 500)",
                     "jet='99999999' (expected a jet index from 0 to 19,999)",
                     "view: no tab '<b>bogus</b>'",
                     "Adjusted from the link: eff='0.05' lies between the scan's efficiencies; "
                     "the nearest, ε = 0.032, is shown"):
            assert part in notice, notice
        assert page.locator(".link-notice-text b").count() == 0  # shown as text
        # the rest of the link applies, and the slider, plots and summary agree
        summary = _text(page, ".scan-summary")
        assert "ε = 0.032 (achieved" in summary and "of QCD jets" in summary
        assert "at 100 fb⁻¹" in summary
        assert _slider(page).endswith(": 0.032")
        assert {"normalised", "ε over QCD jets", "leading jet", "log"} <= _active_buttons(page)
        # the address now holds what is shown, without the refused values
        linked = _eventually(lambda: _search(page), lambda s: "d" in s, "the rewritten link")
        assert float(linked["eff"]) == pytest.approx(10 ** -1.5)
        assert (linked["norm"], linked["ref"], linked["jets"], linked["logy"]) == (
            "true", "QCD", "leading", "true")
        assert linked["lumi"] == "100" and linked["view"] == "spectrum" and "jet" not in linked
        assert linked["window"] != "300,100"
    finally:
        context.close()


def test_the_luminosity_refuses_zero_negative_empty_and_huge_values(browser, server):  # noqa: F811
    context, page = _open(browser, server.url)
    try:
        before = _text(page, ".scan-summary")
        assert "at 100 fb⁻¹" in before
        for typed, reason in (("0", "0 fb⁻¹ is not positive"), ("-5", "-5 fb⁻¹ is not positive"),
                              ("", "it is empty"),
                              ("1e9", "1e+09 fb⁻¹ is above the maximum of 100,000 fb⁻¹")):
            _type(page, LUMINOSITY, typed)
            message = _eventually(lambda: _text(page, ".luminosity-error-text"),
                                  lambda t, r=reason: r in t, f"the message for {typed!r}")
            assert message == (f"Luminosity not applied: {reason} (expected a positive number "
                               f"of fb⁻¹ up to 100,000); it stays 100 fb⁻¹.")
            _eventually(lambda: page.locator(LUMINOSITY).first.input_value(),
                        lambda v: v == "100", f"the field after {typed!r}")
            assert _text(page, ".scan-summary") == before
            assert _search(page)["lumi"] == "100"
        _type(page, LUMINOSITY, "300")
        after = _eventually(lambda: _text(page, ".scan-summary"), lambda t: "at 300 fb⁻¹" in t,
                            "the summary at 300 fb⁻¹")
        assert _yield(after) == pytest.approx(3 * _yield(before), rel=0.01)
        _eventually(lambda: page.locator(".luminosity-error-text").is_visible(),
                    lambda visible: not visible, "the message once a valid value is typed")
        _eventually(lambda: _search(page).get("lumi"), lambda v: v == "300", "the link")
    finally:
        context.close()


def test_the_achieved_efficiency_is_shown_beside_the_requested_one(browser, server,  # noqa: F811
                                                                   synthetic_dataset):
    analysis = DatasetAnalysis(synthetic_dataset)
    scan = analysis.jet_scan(DEFAULT, efficiencies=EFFICIENCIES, reference="QCD")
    events = analysis.event_scan(DEFAULT, efficiencies=EFFICIENCIES)
    box = (-1.0, -1.0, 2.0, 2.0)
    subset = box_indices(synthetic_dataset.column("umap_x"), synthetic_dataset.column("umap_y"),
                         box)
    level = EFFICIENCIES.index(1e-3)
    selected = analysis.subset_scan(DEFAULT, scan, subset)

    def achieved(a_scan, at: int) -> str:
        return f"{float(a_scan.achieved_efficiencies[at]):.3g}"

    context, page = _open(browser, f"{server.url}?eff=0.001&ref=QCD&box=-1,-1,2,2")
    try:
        summary = _text(page, ".scan-summary")
        assert f"ε = 1e-3 (achieved {achieved(scan, level)}) of QCD jets" in summary
        assert f"Selected jets: {scan.selected_jets(level):,}" in summary
        selection = _eventually(lambda: _text(page, ".selection-summary"), bool,
                                "the selection summary")
        assert f"{len(subset):,} jets; passing the cut at ε = 1e-3 (achieved " \
               f"{achieved(scan, level)}): {selected.selected_jets(level):,}" in selection
        # one step looser: both follow
        handle = page.locator(".efficiency-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowLeft")
        looser = f"ε = 3.2e-3 (achieved {achieved(scan, level - 1)})"
        _eventually(lambda: _text(page, ".scan-summary"), lambda t: looser in t,
                    "the summary one step looser")
        _eventually(lambda: _text(page, ".selection-summary"), lambda t: looser in t,
                    "the selection summary one step looser")
        # the event view reports its own achieved efficiency
        page.get_by_text("Events", exact=True).click()
        _eventually(lambda: _text(page, ".event_scan-stats .scan-summary"),
                    lambda t: f"ε = 3.2e-3 (achieved {achieved(events, level - 1)}) of all "
                              f"events" in t, "the event summary")
    finally:
        context.close()


def test_server_log_has_no_app_errors(server):  # noqa: F811
    assert server.alive()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]


def test_a_drawn_lasso_goes_into_the_link_and_selects_the_same_jets(browser, server,  # noqa: F811
                                                                    synthetic_dataset):
    context, page = _open(browser, f"{server.url}?view=latent-space", ready=".latent-plot canvas")
    try:
        page.wait_for_selector(".latent-help", timeout=TIMEOUT_MS)
        time.sleep(2.0)  # let the datashaded image arrive
        page.locator(".latent-plot [title='Lasso Select']").first.click()
        canvas = latent_canvas_box(page)
        center_x = canvas["x"] + 0.45 * canvas["width"]
        center_y = canvas["y"] + 0.45 * canvas["height"]
        page.mouse.move(center_x + 0.2 * canvas["width"], center_y)
        page.mouse.down()
        for angle in np.linspace(0, 2 * math.pi, 60)[1:]:  # a drawn loop, as a hand draws it
            page.mouse.move(center_x + 0.2 * canvas["width"] * math.cos(angle),
                            center_y + 0.15 * canvas["height"] * math.sin(angle))
        page.mouse.up()
        summary = _eventually(lambda: _text(page, ".latent-selection"), lambda t: "lasso" in t,
                              "the lasso's selection summary")
        lasso = _eventually(lambda: _search(page).get("lasso"), bool, "the lasso in the link")
        polygon = np.array([[float(v) for v in point.split(",")] for point in lasso.split(";")])
        assert 3 <= len(polygon) <= 100  # thinned to what a link holds
        # the jets the page counts are the jets inside the linked polygon (app.selection)
        expected = len(polygon_indices(synthetic_dataset.column("umap_x"),
                                       synthetic_dataset.column("umap_y"), polygon))
        assert 0 < expected < synthetic_dataset.n_jets
        assert f"{expected:,} jets selected" in summary

        copied = page.evaluate("window.location.href")
        other_context, other = _open(browser, copied, ready=".latent-selection")
        assert _eventually(lambda: _text(other, ".latent-selection"), bool,
                           "the linked selection") == summary
        other_context.close()
    finally:
        context.close()
