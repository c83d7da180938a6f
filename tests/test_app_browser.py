"""Browser tests: `panel serve app` driven by Debian's chromium through Playwright.

They start the server on a free port with a SYNTHETIC dataset, apply a preset, move the efficiency
slider, drag a box on the datashaded latent plot, and check what the page says; then open ten
sessions at once, and check that a missing dataset gives a message while the server keeps
serving. Skipped (with the reason) when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
READY_TIMEOUT = 90.0
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _panel_command() -> list[str]:
    panel = Path(sys.executable).with_name("panel")
    return [str(panel)] if panel.exists() else [sys.executable, "-m", "panel"]


class Server:
    """`panel serve app --port PORT --args --data DATA` as a subprocess."""

    def __init__(self, data: Path, tmp: Path, *, app_args: tuple[str, ...] = (),
                 ready_timeout: float = READY_TIMEOUT):
        """``app_args`` follow ``--data DATA``; a server not ready after ``ready_timeout``
        seconds is stopped (and what it started with it) and RuntimeError raised."""
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/app"
        self.log = tmp / f"panel-{self.port}.log"
        self.ready_timeout = ready_timeout
        env = {**os.environ, "SOPHON_OUTPUT": str(tmp / "output"),
               "SOPHON_MODELS": str(tmp / "models"), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [*_panel_command(), "serve", "app", "--port", str(self.port), "--address", "127.0.0.1",
             "--allow-websocket-origin", f"127.0.0.1:{self.port}", "--args", "--data", str(data),
             *app_args],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"panel serve exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"panel serve not ready after {self.ready_timeout} s:\n"
                           f"{self.log.read_text()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser, synthetic_path, tmp_path_factory):
    running = Server(synthetic_path, tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


def _summary(page) -> str:
    return page.locator(".scan-summary").first.inner_text()


def _count(text: str, label: str) -> int:
    match = re.search(rf"{label}: ([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def _wait_for_text_change(page, selector: str, old: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = page.locator(selector).first.inner_text()
        if text != old:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{selector} still reads {old!r}")


def _wait_for_text(page, selector: str, expected: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    text = None
    while time.monotonic() < deadline:
        locator = page.locator(selector)
        if locator.count():
            text = locator.first.inner_text()
            if text == expected:
                return True
        time.sleep(0.1)
    raise AssertionError(f"{selector} reads {text!r}, not {expected!r}")


def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    """Press the mouse at page point ``start``, move to ``end`` in ``steps``, release."""
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def latent_canvas_box(page, timeout: float = 120.0) -> dict:
    """The latent plot's canvas box on the page (x, y, width, height in px). A redraw (a
    recolouring) replaces the canvas, and between the two there is no box to read: wait for it."""
    canvas = page.locator(".latent-plot canvas").first
    return eventually(canvas.bounding_box, lambda box: box is not None, "the latent plot's canvas",
                      timeout=timeout)


def drag_box(page, left: float, top: float, width: float, height: float) -> None:
    """Drag a box on the latent plot (fractions of the plot's canvas)."""
    canvas = latent_canvas_box(page)
    x0 = canvas["x"] + canvas["width"] * left
    y0 = canvas["y"] + canvas["height"] * top
    drag(page, (x0, y0), (x0 + canvas["width"] * width, y0 + canvas["height"] * height))


def eventually(read, check, what: str, timeout: float = 30.0, poll: float = 0.2):
    """``read()`` once ``check`` holds for it (polled every ``poll`` s), else AssertionError
    naming ``what`` with the last value read."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = read()
        if check(value):
            return value
        time.sleep(poll)
    raise AssertionError(f"{what}: still {value!r} after {timeout:.0f} s")


def test_preset_slider_and_box_selection(browser, server, synthetic_dataset):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(server.url, timeout=TIMEOUT_MS)
        page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
        first = _summary(page)
        assert "ε = 0.01" in first and "Selected jets" in first

        # apply a preset: the spectra, the yield and the URL follow
        page.locator(".preset select").select_option(label="A1: X->cs")
        after_preset = _wait_for_text_change(page, ".scan-summary", first)
        assert "ε = 0.01" in after_preset
        assert after_preset != first
        page.wait_for_function("() => window.location.search.includes('d=A1')",
                               timeout=TIMEOUT_MS)
        formula = page.locator(".formula .katex").first.inner_text()  # KaTeX-rendered
        assert "X_cs" in formula.replace("\n", "")

        # move the efficiency slider one step tighter: fewer jets pass
        handle = page.locator(".efficiency-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        after_slider = _wait_for_text_change(page, ".scan-summary", after_preset)
        assert "ε = 3.2e-3" in after_slider
        assert _count(after_slider, "Selected jets") < _count(after_preset, "Selected jets")
        page.wait_for_function("() => window.location.search.includes('eff=0.00316')",
                               timeout=TIMEOUT_MS)

        # box-select on the latent plot (the box-select tool is active by default)
        page.get_by_text("Latent space", exact=True).click()
        page.wait_for_selector(".latent-plot canvas", timeout=TIMEOUT_MS)
        page.wait_for_selector(".latent-help", timeout=TIMEOUT_MS)
        time.sleep(1.0)  # let the datashaded image arrive
        drag_box(page, 0.30, 0.35, 0.15, 0.25)
        page.wait_for_selector(".latent-selected", timeout=TIMEOUT_MS)
        selected_text = page.locator(".latent-bounds").first.inner_text()
        selected = int(page.locator(".latent-selected").first.inner_text().replace(",", ""))
        assert 0 < selected < synthetic_dataset.n_jets
        # the count is exactly the jets inside the box the page reports (to its 2 decimals)
        bounds = [float(v) for v in re.findall(r"-?\d+\.\d+", selected_text)[:4]]
        x = synthetic_dataset.column("umap_x")
        y = synthetic_dataset.column("umap_y")
        inner = ((x >= bounds[0] + 0.005) & (x <= bounds[1] - 0.005) &
                 (y >= bounds[2] + 0.005) & (y <= bounds[3] - 0.005)).sum()
        outer = ((x >= bounds[0] - 0.005) & (x <= bounds[1] + 0.005) &
                 (y >= bounds[2] - 0.005) & (y <= bounds[3] + 0.005)).sum()
        assert inner <= selected <= outer
        # the paged table lists the same selection
        assert _wait_for_text(page, ".selected-jets", f"{selected:,}")

        # the spectrum view overlays the selection and reports it
        page.get_by_text("Spectrum", exact=True).click()
        page.wait_for_selector(".selection-summary", timeout=TIMEOUT_MS)
        summary = page.locator(".selection-summary").first.inner_text()
        assert f"{selected:,} jets" in summary
        assert "ε = 3.2e-3" in _summary(page)
    finally:
        page.close()


def test_ten_sessions_at_once(browser, server):
    contexts = [browser.new_context(viewport={"width": 1300, "height": 900}) for _ in range(10)]
    pages = [context.new_page() for context in contexts]
    try:
        start = time.monotonic()
        for page in pages:  # start all ten loads before waiting on any
            page.goto(server.url, wait_until="commit", timeout=TIMEOUT_MS)
        for page in pages:
            page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
            assert "Selected jets" in _summary(page)
        elapsed = time.monotonic() - start
        # sessions are independent: a preset in one leaves the others alone
        pages[0].locator(".preset select").select_option(label="A2: X->bb")
        pages[0].wait_for_function("() => window.location.search.includes('d=A2')",
                                   timeout=TIMEOUT_MS)
        assert pages[1].locator(".preset select").first.input_value() != "A2: X->bb"
        assert elapsed < 60, f"ten sessions took {elapsed:.1f} s"
    finally:
        for context in contexts:
            context.close()
    assert server.alive()


def test_missing_dataset_shows_a_message(browser, tmp_path):
    missing = Server(tmp_path / "no-such-dataset", tmp_path)
    page = browser.new_page()
    try:
        page.goto(missing.url, timeout=TIMEOUT_MS)
        page.wait_for_selector(".sophon-problem-text", timeout=TIMEOUT_MS)
        text = page.locator(".sophon-problem-text").first.inner_text()
        assert "could not be opened" in text and "no-such-dataset" in text
        assert "--data" in text
        # the server keeps serving
        page.reload()
        page.wait_for_selector(".sophon-problem-text", timeout=TIMEOUT_MS)
        assert missing.alive()
    finally:
        page.close()
        missing.stop()


def test_link_reproduces_the_view(browser, server):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(f"{server.url}?d=A3%3A+X-%3Eb+q+q&eff=0.001&view=significance",
                  timeout=TIMEOUT_MS)
        page.wait_for_selector(".significance-text", timeout=TIMEOUT_MS)
        assert "A3: X->b q q" in page.locator(".significance-text").first.inner_text()
        assert page.locator(".preset select").first.input_value() == "A3: X->b q q"
        page.get_by_text("Spectrum", exact=True).click()
        page.wait_for_selector(".scan-summary", timeout=TIMEOUT_MS)
        assert "ε = 1e-3" in _summary(page)
    finally:
        page.close()


def test_server_log_has_no_app_errors(server):
    """No traceback through the app or the library (a browser closing its websocket mid-write
    gives tornado's WebSocketClosedError, which is not ours)."""
    assert server.alive()
    log = server.log.read_text()
    ours = [line for line in log.splitlines()
            if line.strip().startswith("File") and (f"{ROOT}/app/" in line or
                                                   f"{ROOT}/sophon/" in line)]
    assert not ours, log
