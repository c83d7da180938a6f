"""The composer's controls in a real browser (issues 13.5 and 14): `panel serve app` driven by
Debian's chromium as a person drives it: type, press Enter, click, and read what the page shows
(the KaTeX formula, the summary, the messages, the address bar, the downloaded files).

Before the fix, Enter in a text field ran the change without Bokeh's document lock: the server
logged ``RuntimeError: _pending_writes should be non-None when we have a document lock`` and the
formula, preset box and URL kept the old discriminant. Skipped (with the reason) when
/usr/bin/chromium is absent, as in tests/test_app_browser.py whose browser and server fixtures
and text helpers these tests use.
"""

from __future__ import annotations

import functools

import io
import json
import re
import time
import urllib.parse

import pyarrow.parquet as pq
import pytest

from sophon.discriminant import PRESETS, Discriminant
from sophon.labels import select

from test_app_browser import (TIMEOUT_MS, _wait_for_text, browser, drag_box,  # noqa: F401
                              eventually, server)

pytestmark = pytest.mark.browser

LOCK_ERROR = "_pending_writes should be non-None"
WAIT_S = 60.0  # the page answers in about a second; a loaded 2-core machine takes longer
_eventually = functools.partial(eventually, timeout=WAIT_S, poll=0.2)


def _open(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(server.url, timeout=TIMEOUT_MS)
    page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
    page.wait_for_selector(".formula .katex", timeout=TIMEOUT_MS)
    return context, page


def _formula(page) -> str:
    """The formula as KaTeX shows it, without white space."""
    return re.sub(r"\s+", "", page.locator(".formula .katex").first.inner_text())


def _text(page, selector: str) -> str:
    locator = page.locator(selector)
    return locator.first.inner_text() if locator.count() else ""


def _linked(page) -> Discriminant:
    """The discriminant the address bar holds (a preset's name or its definition)."""
    search = page.evaluate("window.location.search")
    values = urllib.parse.parse_qs(search[1:]).get("d")
    if not values:
        return PRESETS["X->bb vs QCD"]  # the default is not written into the address
    value = values[0]
    return PRESETS[value] if value in PRESETS else Discriminant.from_dict(json.loads(value))


def _wait_for_link(page, check, what: str) -> Discriminant:
    return _eventually(lambda: _linked(page), check, f"the link's {what}")


def _type(page, selector: str, text: str, index: int = 0) -> None:
    """Type ``text`` into the field and press Enter, as a person does."""
    field = page.locator(selector).nth(index)
    field.click()
    field.fill(text)
    field.press("Enter")


def _open_card(page, title: str, inside: str) -> None:
    page.get_by_text(title, exact=True).click()
    page.wait_for_selector(inside, timeout=TIMEOUT_MS)


def _no_lock_error(server) -> None:  # noqa: F811
    log = server.log.read_text()
    assert LOCK_ERROR not in log, log[-4000:]


def test_enter_applies_every_text_field(browser, server):  # noqa: F811
    context, page = _open(browser, server)
    try:
        # the class query: formula, summary and link follow at once
        _type(page, ".term-query input", "X_cs")
        _eventually(lambda: _formula(page), lambda f: "X_cs" in f and "X_bb" not in f,
                    "the formula after Enter in the class query")
        assert "1 class: X_cs" in _text(page, ".composer-summary-text")
        linked = _wait_for_link(page, lambda d: d.numerator[0].classes == "X_cs", "numerator")
        assert page.locator(".preset select").first.input_value() == "— choose a preset —"

        # the denominator
        _type(page, ".denominator input", "QCD | X_bb")
        _eventually(lambda: _text(page, ".composer-summary-text"),
                    lambda t: f"B: {len(select('QCD')) + 1} classes" in t.replace("\n", " "),
                    "g_B after Enter in the denominator")
        _wait_for_link(page, lambda d: d.denominator == "QCD | X_bb", "denominator")

        # the name
        _type(page, ".discriminant-name input", "my tagger")
        _wait_for_text(page, ".composer-name", "my tagger", WAIT_S)
        _wait_for_link(page, lambda d: d.name == "my tagger", "name")

        # the term label
        _type(page, ".term-label input", "cs")
        _eventually(lambda: _formula(page), lambda f: "X_cs" not in f and "cs" in f,
                    "the formula after Enter in the label")
        linked = _wait_for_link(page, lambda d: d.numerator[0].label == "cs", "label")
        assert linked == Discriminant("my tagger", linked.numerator, denominator="QCD | X_bb")
        assert linked.numerator[0].classes == "X_cs"

        # "Load pasted YAML" right after typing
        _open_card(page, "Import / export YAML", ".yaml-text textarea")
        page.locator(".yaml-text textarea").first.fill(
            "name: pasted\nnumerator:\n- classes: X_qq\n  label: qq\ndenominator: QCD\n")
        page.get_by_role("button", name="Load pasted YAML", exact=True).click()
        _wait_for_text(page, ".composer-name", "pasted", WAIT_S)
        _wait_for_link(page, lambda d: d.name == "pasted" and d.numerator[0].classes == "X_qq",
                       "pasted definition")
        _eventually(lambda: _formula(page), lambda f: "qq" in f and "cs" not in f,
                    "the formula after loading the YAML")
        assert page.locator(".term-query input").first.input_value() == "X_qq"
        _no_lock_error(server)
    finally:
        context.close()


def _download(page, click) -> bytes:
    with page.expect_download(timeout=WAIT_S * 1000) as info:
        click()
    with open(info.value.path(), "rb") as file:
        return file.read()


def test_downloads_arrive_on_the_first_click_with_what_is_shown(browser, server,  # noqa: F811
                                                                synthetic_dataset):
    context, page = _open(browser, server)
    try:
        # an edited preset, then its YAML: the file is what the page shows and the link holds
        page.locator(".preset select").select_option(label="A1: X->cs")
        _wait_for_link(page, lambda d: d == PRESETS["A1: X->cs"], "preset")
        _type(page, ".term-query input", "X_cs | X_cq")
        linked = _wait_for_link(page, lambda d: d.numerator[0].classes == "X_cs | X_cq",
                                "edited query")
        _open_card(page, "Import / export YAML", ".yaml-text textarea")
        exported = Discriminant.from_yaml(_download(page, page.get_by_role(
            "button", name="Export YAML", exact=True).click).decode())
        assert exported == linked
        assert exported.name == "A1: X->cs (edited)" and exported.description == ""
        assert exported.numerator[0].label == ""  # the preset's label named X_cs alone

        # the latent selection as CSV and as Parquet: every selected jet, once
        page.get_by_text("Latent space", exact=True).click()
        page.wait_for_selector(".latent-plot canvas", timeout=TIMEOUT_MS)
        page.wait_for_selector(".latent-help", timeout=TIMEOUT_MS)
        time.sleep(1.0)  # let the datashaded image arrive
        drag_box(page, 0.30, 0.35, 0.15, 0.25)
        page.wait_for_selector(".latent-selected", timeout=TIMEOUT_MS)
        selected = int(page.locator(".latent-selected").first.inner_text().replace(",", ""))
        assert 0 < selected < synthetic_dataset.n_jets
        button = page.get_by_role("button", name="Download selection", exact=True)
        csv = _download(page, button.click).decode().splitlines()
        assert csv[0].startswith("jet,") and len(csv) == selected + 1
        page.get_by_text("Parquet", exact=True).click()
        table = pq.read_table(io.BytesIO(_download(page, button.click)))
        assert table.num_rows == selected
        assert sorted(table.column("jet").to_pylist()) == sorted(
            int(line.split(",")[0]) for line in csv[1:])
        _no_lock_error(server)
    finally:
        context.close()


def test_a_denominator_inside_the_numerator_is_refused(browser, server):  # noqa: F811
    context, page = _open(browser, server)
    try:
        before = _text(page, ".scan-summary")
        _type(page, ".denominator input", "X_bb")  # the numerator is X_bb
        message = _eventually(lambda: _text(page, ".composer-error-text"),
                              lambda t: "g_B would be empty" in t, "the error message")
        assert "'X_bb'" in message
        time.sleep(1.0)  # nothing else may follow
        assert _linked(page) == PRESETS["X->bb vs QCD"]  # the last valid one is kept
        assert _text(page, ".scan-summary") == before and "inf" not in before
        assert "QCD" in _formula(page)

        # a denominator set that shares classes with the numerator: said, and applied
        _type(page, ".denominator input", "QCD | X_bb")
        note = _eventually(lambda: _text(page, ".composer-note-text"),
                           lambda t: "X_bb" in t, "the note on shared classes")
        assert "counted in g_A only" in note
        assert not page.locator(".composer-error-text").is_visible()
        _wait_for_link(page, lambda d: d.denominator == "QCD | X_bb", "denominator")
        _no_lock_error(server)
    finally:
        context.close()


def test_formula_and_name_follow_what_is_computed(browser, server):  # noqa: F811
    context, page = _open(browser, server)
    try:
        # a picker term with '&' and '==' is typeset, not shown as raw LaTeX
        _open_card(page, "Class picker", ".picker-query-text")
        page.get_by_label("b", exact=True).select_option("2")
        _eventually(lambda: _text(page, ".picker-query-text"), lambda t: "b == 2" in t,
                    "the picker's query")
        page.get_by_role("button", name="add as new term", exact=True).click()
        _eventually(lambda: _formula(page), lambda f: "b==2" in f, "the picked term")
        formula = _formula(page)
        assert "\\" not in formula and page.locator(".formula .katex-error").count() == 0
        _type(page, ".term-query input", "two_prong & b == 2", index=1)
        _eventually(lambda: _formula(page), lambda f: "two_prong&b==2" in f,
                    "a term with & and ==")
        assert "\\" not in _formula(page)

        # an edited preset drops its name, description and labels
        page.locator(".preset select").select_option(label="A2: X->bb")
        _wait_for_text(page, ".composer-name", "A2: X->bb", WAIT_S)
        assert _text(page, ".composer-description")
        _type(page, ".term-query input", "X_cc")
        _wait_for_text(page, ".composer-name", "A2: X->bb (edited)", WAIT_S)
        assert page.locator(".composer-description").count() == 0
        assert "X_bb" not in _formula(page) and "X_cc" in _formula(page)
        assert page.locator(".discriminant-name input").first.input_value() == \
            "A2: X->bb (edited)"
        linked = _wait_for_link(page, lambda d: d.name == "A2: X->bb (edited)", "edited name")
        assert linked.description == "" and linked.numerator[0].label == ""

        # a successful import clears the previous error
        _open_card(page, "Import / export YAML", ".yaml-text textarea")
        textarea = page.locator(".yaml-text textarea").first
        load = page.get_by_role("button", name="Load pasted YAML", exact=True)
        textarea.fill("numerator: [")
        load.click()
        _eventually(lambda: _text(page, ".composer-error-text"), lambda t: "YAML" in t,
                    "the YAML error")
        terms = "\n".join(f"- classes: X_{pair}\n  weight: 0.{i + 1}\n  label: "
                          f"a_rather_long_label_for_{pair}"
                          for i, pair in enumerate(["bb", "cc", "ss", "qq", "bc", "cs"]))
        textarea.fill(f"name: long\nnumerator:\n{terms}\ndenominator: QCD\n")
        load.click()
        _wait_for_text(page, ".composer-name", "long", WAIT_S)
        _eventually(lambda: page.locator(".composer-error-text").is_visible(),
                    lambda visible: not visible, "the old error")

        # a long formula scrolls inside the sidebar instead of being cut off
        _eventually(lambda: _formula(page), lambda f: "label_for_cs" in f, "the long formula")
        box = page.locator(".formula").first
        widths = box.evaluate("e => [e.scrollWidth, e.clientWidth, getComputedStyle(e).overflowX]")
        assert widths[0] > widths[1], widths  # longer than the sidebar...
        assert widths[2] in ("auto", "scroll"), widths  # ...and scrollable
        box.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
        assert box.evaluate("e => e.scrollLeft") > 0
        _no_lock_error(server)
    finally:
        context.close()


def test_spectrum_and_significance_widgets_follow_the_session(browser, server):  # noqa: F811
    """The widgets bound with from_param: a widget sets the session, the session sets the
    widgets (a link, another widget)."""
    context, page = _open(browser, server)
    try:
        page.get_by_text("normalised", exact=True).click()
        _eventually(lambda: page.evaluate("window.location.search"), lambda s: "norm=true" in s,
                    "the link after 'normalised'")
        handle = page.locator(".efficiency-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowLeft")
        _eventually(lambda: _text(page, ".scan-summary"), lambda t: "ε = 0.032" in t,
                    "the summary after the slider")
        page.goto(server.url + "?eff=0.001&view=significance", timeout=TIMEOUT_MS)
        page.wait_for_selector(".significance-text", timeout=TIMEOUT_MS)
        page.get_by_text("Spectrum", exact=True).click()
        _eventually(lambda: page.get_by_text("Efficiency:").first.inner_text(),
                    lambda t: "1e-3" in t, "the slider after opening a link")
        page.get_by_text("Significance", exact=True).click()
        first = _text(page, ".significance-text")
        signal = page.locator(".significance-view select").first
        options = signal.evaluate("e => Array.from(e.options).map(o => o.value)")
        signal.select_option(options[-1])
        text = _eventually(lambda: _text(page, ".significance-text"),
                           lambda t: t != first and options[-1] in t, "the signal's Z")
        window = re.search(r"in \[([\d.]+), ([\d.]+)\] GeV", text)
        slider = page.get_by_text("Mass window (GeV):").first.inner_text()
        low, high = (float(value) for value in window.groups())
        assert slider.endswith(f": {low:g} .. {high:g}"), (slider, text)
        _no_lock_error(server)
    finally:
        context.close()


def test_server_log_has_no_lock_error(server):  # noqa: F811
    assert server.alive()
    _no_lock_error(server)
