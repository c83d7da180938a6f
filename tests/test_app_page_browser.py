"""The page as a person sees it (issue 14, items 4, 9, 10), in Debian's chromium via Playwright.

- SVG mode: after a click on "SVG" the stack plot keeps its size, its frame and its legend (Bokeh
  3.9 squashed it to about 50 px with the legend past the page's edge), and the SVG that its save
  tool downloads is the whole figure at that size, legend included.
- Offline: with every request to another host aborted, the page (and the workshop room's login
  page, then the page behind it) shows its spectrum summary and a KaTeX formula, asks nothing of
  another host and logs no console error.
- Narrow screens: at 1280 and 1024 px the page does not scroll sideways, and both plots with
  their legends lie inside the viewport.

The servers serve a SYNTHETIC dataset. Skipped (with the reason) when /usr/bin/chromium is
absent, as in tests/test_app_browser.py, whose server, browser and wait helpers these reuse.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree

import pytest

from test_app_browser import TIMEOUT_MS, browser, server  # noqa: F401
from test_serving import Server as RoomServer
from test_serving import _free_port, serve

pytestmark = pytest.mark.browser

SVG_NAMESPACE = "{http://www.w3.org/2000/svg}"
ROOM_PASSWORD = "Offline-Room-7"
#: Layout settles within this after a change (new figures, a resize) on a loaded 2-core machine.
SETTLE_S = 30.0


def _is_local(url: str) -> bool:
    """Whether ``url`` stays on this machine (this server, or the page's own data and blobs)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.hostname in ("127.0.0.1", "localhost")


def _open(browser, url: str, width: int = 1500, **options):
    """A page at ``url`` in a fresh context; returns (context, page)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, **options)
    page = context.new_page()
    page.goto(url, timeout=TIMEOUT_MS)
    page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
    return context, page


def _boxes(page, selector: str) -> list[dict]:
    locator = page.locator(selector)
    return [locator.nth(i).bounding_box() for i in range(locator.count())]


def _settled_boxes(page, selector: str, count: int) -> list[dict]:
    """The bounding boxes of ``count`` elements once they have stopped moving for a second."""
    deadline = time.monotonic() + SETTLE_S
    previous, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        boxes = _boxes(page, selector)
        if len(boxes) == count and all(boxes) and boxes == previous:
            if time.monotonic() - stable_since >= 1.0:
                return boxes
        else:
            previous, stable_since = boxes, time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"{selector}: {count} elements did not settle, last {previous}")


def _inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def _page_width(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def _spectrum_layout(page) -> tuple[list[dict], list[dict], list[dict]]:
    """(figures, their frames, their legends): the curves plot first, then the stack."""
    return (_settled_boxes(page, ".bk-Figure", 2), _settled_boxes(page, ".bk-CartesianFrame", 2),
            _settled_boxes(page, ".bk-Legend", 2))


def _save_svg(page, figure) -> str:
    """Click the save tool of ``figure`` (behind the toolbar's overflow menu when the title
    leaves it no room), name the file, and return the downloaded SVG text."""
    figure.hover()
    save = figure.locator(".bk-ClickButton[title='Save']")
    if not save.count():
        figure.locator(".bk-tool-overflow").click()
        box = figure.bounding_box()
        save = page.locator(".bk-ClickButton[title='Save']")
        save = next(save.nth(i) for i in range(save.count())
                    if save.nth(i).is_visible() and _inside(save.nth(i).bounding_box(), box))
    page.once("dialog", lambda dialog: dialog.accept("stack"))  # the save tool asks a name
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        save.click()
    return open(download.value.path(), encoding="utf-8").read()


def test_svg_mode_keeps_the_stack_plot_and_downloads_the_whole_figure(browser, server,
                                                                       synthetic_dataset):
    context, page = _open(browser, server.url, accept_downloads=True)
    try:
        png_figures, png_frames, _ = _spectrum_layout(page)
        page.locator(".save-format").get_by_text("SVG", exact=True).click()
        # the figures are rebuilt with the SVG backend: wait for their SVG layers
        page.wait_for_function(
            """() => { const find = (root) => [...root.querySelectorAll('*')].some(
                         (e) => (e.tagName == 'svg' && e.getAttribute('width') > 300) ||
                                (e.shadowRoot && find(e.shadowRoot)));
                       return find(document); }""", timeout=TIMEOUT_MS)
        figures, frames, legends = _spectrum_layout(page)
        scroll_width, inner_width = _page_width(page)
        assert scroll_width <= inner_width  # no sideways scrolling
        for png, svg in zip(png_figures, figures):
            assert abs(svg["width"] - png["width"]) <= 2 and abs(svg["height"] - png["height"]) <= 2
        for png, svg in zip(png_frames, frames):  # the plotted area keeps its size
            assert abs(svg["width"] - png["width"]) <= 2, (png, svg)
        for legend, figure in zip(legends, figures):
            assert _inside(legend, figure) and legend["x"] + legend["width"] <= inner_width

        stack = page.locator(".bk-Figure").nth(1)
        document = ElementTree.fromstring(_save_svg(page, stack))
        assert document.tag == f"{SVG_NAMESPACE}svg"
        width, height = float(document.get("width")), float(document.get("height"))
        assert abs(width - figures[1]["width"]) <= 2 and abs(height - figures[1]["height"]) <= 2
        texts = [element.text or "" for element in document.iter(f"{SVG_NAMESPACE}text")]
        # the title, the axis label and every process of the legend are in the file
        assert "Per-process stack at the chosen efficiency" in texts
        assert "jet mSD [GeV]" in texts
        for name in synthetic_dataset.process_names:
            assert name in texts, (name, texts)
        # and the legend lies inside the figure's width, right of the plotted area
        positions = {element.text: float(element.get("x", "nan"))
                     for element in document.iter(f"{SVG_NAMESPACE}text")
                     if element.text in synthetic_dataset.process_names and element.get("x")}
        frame_right = frames[1]["x"] + frames[1]["width"] - figures[1]["x"]
        assert positions and all(frame_right <= x < width for x in positions.values()), positions
    finally:
        context.close()


def _offline_context(browser, width: int = 1500):
    """A browser context that aborts every request to another host, and records those requests
    and the console's errors."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    record = {"external": [], "errors": []}

    def route(handled) -> None:
        if _is_local(handled.request.url):
            handled.continue_()
        else:
            record["external"].append(handled.request.url)
            handled.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda message: record["errors"].append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: record["errors"].append(str(error)))
    return context, page, record


def _assert_whole_page(page) -> None:
    """The spectrum summary and a KaTeX-rendered formula are shown."""
    page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
    assert "Selected jets" in page.locator(".scan-summary").first.inner_text()
    page.wait_for_selector(".formula .katex", timeout=TIMEOUT_MS)
    assert page.locator(".formula .katex .mfrac").count() >= 1  # typeset, not the raw LaTeX
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def room_server(synthetic_path, tmp_path_factory):
    """The workshop room's ``panel serve`` (app/serve.py's room arguments), on loopback only."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("offline-room")
    serving = serve.room("127.0.0.1", port, str(synthetic_path), password=ROOM_PASSWORD,
                         share="127.0.0.1", directory=tmp)
    running = RoomServer(serving, port, tmp / "panel.log", ready_path="/login")
    yield running
    running.stop()


def test_the_page_needs_no_network(browser, server, room_server):
    # on this machine
    context, page, record = _offline_context(browser)
    try:
        page.goto(server.url, timeout=TIMEOUT_MS)
        _assert_whole_page(page)
    finally:
        context.close()
    assert record == {"external": [], "errors": []}

    # in a workshop room: the login page, then the page behind it
    context, page, record = _offline_context(browser)
    try:
        page.goto(f"http://127.0.0.1:{room_server.port}/app", timeout=TIMEOUT_MS)
        page.wait_for_selector("input[name=password]", timeout=TIMEOUT_MS)
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        assert page.locator("#logo").evaluate("image => image.naturalWidth") > 0  # its logo
        page.fill("input[name=username]", serve.ROOM_USER)
        page.fill("input[name=password]", ROOM_PASSWORD)
        page.press("input[name=password]", "Enter")
        _assert_whole_page(page)
    finally:
        context.close()
    assert record == {"external": [], "errors": []}


@pytest.mark.parametrize("width", [1280, 1024])
def test_narrow_screens_do_not_scroll_sideways(browser, server, width):
    context, page = _open(browser, server.url, width=width)
    try:
        figures, frames, legends = _spectrum_layout(page)
        scroll_width, inner_width = _page_width(page)
        assert inner_width == width
        assert scroll_width <= inner_width
        viewport = {"x": 0, "y": 0, "width": inner_width, "height": 1e9}
        for figure, frame, legend in zip(figures, frames, legends):
            assert _inside(figure, viewport) and _inside(legend, viewport), (figure, legend)
            assert _inside(legend, figure)
            assert frame["width"] >= 200  # the plotted area is not squeezed to a sliver (50 px)
        # the controls above the plots stay inside too (they wrap): the last of them, the save
        # tool's format, was past the edge
        for control in (page.locator(".efficiency-slider").first,
                        page.locator(".save-format").get_by_text("SVG", exact=True)):
            assert _inside(control.bounding_box(), viewport)
        assert re.search(r"ε = \S+", page.locator(".scan-summary").first.inner_text())
    finally:
        context.close()
