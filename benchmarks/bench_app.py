"""Benchmark the Panel app: server time of a widget change, and time to first interactive.

1. In-process: one session's whole app (composer, spectrum, significance, events, latent space,
   jet detail) is built and rendered into a bokeh Document, as the server would, on a SYNTHETIC
   dataset of ``--jets`` jets (default 1M). Each widget change is then timed from the widget's
   new value until every view's models are updated (Panel applies the changes synchronously
   outside a server event loop): preset changes (new discriminant: scan, event scan,
   significance, latent colouring by D), the efficiency slider, luminosity, normalisation,
   efficiency reference, signal process, mass window, box selection, colouring.
2. With ``--serve`` (default on): ``panel serve app --args --data FILE`` is started and the time
   until the page shows its first spectrum summary in headless chromium (``/usr/bin/chromium``)
   is measured, from the command's start; without chromium, until the page's HTML is served.

Usage::

    .venv/bin/python benchmarks/bench_app.py [--jets 1000000] [--data FILE] [--repeat 5]
                                             [--no-serve]

Synthetic files are written once to the system temporary folder and reused.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def synthetic_file(n_jets: int) -> Path:
    from sophon.synthetic import write_synthetic_dataset

    path = Path(tempfile.gettempdir()) / f"sophon-bench-{n_jets}.parquet"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic_dataset(path, n_jets, seed=11)
        print(f"wrote {n_jets:,} synthetic jets to {path} in {time.perf_counter() - start:.1f} s")
    return path


def timed(action, repeat: int = 1) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_updates(path: Path, repeat: int) -> list[tuple[str, list[float]]]:
    import holoviews as hv
    import numpy as np
    import panel as pn
    import param
    from bokeh.document import Document

    from app import state as state_module
    from app.page import SophonApp
    from app.state import load_analysis
    from app.views.latent import warm_up_latent
    from sophon.discriminant import PRESETS

    pn.extension("tabulator", "katex")
    hv.extension("bokeh", logo=False)
    start = time.perf_counter()
    analysis = load_analysis(path)
    print(f"dataset: {analysis.dataset.n_jets:,} jets, loaded and validated in "
          f"{time.perf_counter() - start:.1f} s (once per server process)")
    start = time.perf_counter()
    warm_up_latent(analysis)
    print(f"latent view warm-up (datashader kernels compiled, once per process): "
          f"{time.perf_counter() - start:.1f} s")

    from app.explorer import Explorer

    start = time.perf_counter()
    app = SophonApp(Explorer(analysis=analysis))
    every_view = pn.Column(app.sidebar(), app.spectrum, app.significance, app.events,
                           app.latent, app.jet_detail)
    every_view.get_root(Document())
    print(f"one session, every view built and rendered: {(time.perf_counter() - start):.2f} s")

    explorer, composer = app.explorer, app.composer
    results: list[tuple[str, list[float]]] = []
    names = list(PRESETS)

    def forget_results() -> None:
        """Drop every cached discriminant-dependent result: the next change computes all."""
        state_module._RESULTS.clear()
        analysis._values.clear()

    def presets(label: str, *, cached: bool) -> None:
        times = []
        # revisits: a first round fills the cache, then ``repeat`` rounds are timed
        for index in range((repeat + cached) * len(names)):
            name = names[(index + 1) % len(names)]
            if not cached:
                forget_results()
            times += timed(lambda: composer._preset.param.update(value=name))
        results.append((label, times[len(names):] if cached else times))

    def new_weights(label: str) -> None:
        """Typing a weight: a discriminant never seen before (the denominator's class sum is
        reused, as the library intends)."""
        composer.apply_preset("A1: X->cs")
        composer.add_term("X_cs | X_cq", 0.5, "W")
        weight = composer._editors[0]._weight
        values = [0.3 + 0.05 * i for i in range(3 * repeat)]
        results.append((label, sum((timed(lambda v=v: setattr(weight, "value", v))
                                    for v in values), [])))

    for colouring in ("process", "D"):
        app.latent._color.value = colouring
        presets(f"preset, first visit (latent: {colouring})", cached=False)
        new_weights(f"term weight typed (latent: {colouring})")
    presets("preset, revisited (latent: D)", cached=True)
    app.latent._color.value = "process"
    composer.apply_preset("X->bb vs QCD")

    slider = app.spectrum._slider
    values = list(slider.options.values())
    results.append(("efficiency slider", sum(
        (timed(lambda v=v: setattr(slider, "value", v)) for v in values * repeat), [])))
    luminosity = app.spectrum._luminosity
    results.append(("luminosity", sum((timed(lambda v=v: setattr(luminosity, "value", v))
                                       for v in [150.0, 300.0, 100.0] * repeat), [])))
    mode = app.spectrum._mode
    results.append(("absolute / normalised", sum((timed(lambda v=v: setattr(mode, "value", v))
                                                  for v in [True, False] * repeat), [])))
    yscale = app.spectrum._yscale
    results.append(("log / linear", sum((timed(lambda v=v: setattr(yscale, "value", v))
                                         for v in [False, True] * repeat), [])))
    reference = app.spectrum._reference
    results.append(("efficiency over all / QCD", sum(
        (timed(lambda v=v: setattr(reference, "value", v)) for v in ["QCD", "all"] * repeat),
        [])))
    signal = app.significance._signal
    signals = list(signal.options)
    results.append(("signal process", sum((timed(lambda v=v: setattr(signal, "value", v))
                                           for v in (signals[1:] + signals[:1]) * repeat), [])))
    window = app.significance._window

    def move_window(value):
        with param.edit_constant(window):  # the browser sets value_throttled on release
            window.param.update(value=value, value_throttled=value)

    results.append(("mass window", sum((timed(lambda v=v: move_window(v))
                                        for v in [(60.0, 100.0), (110.0, 140.0)] * repeat), [])))
    box = app.latent.streams[0]
    x_range, y_range = app.latent.data.x_range, app.latent.data.y_range
    boxes = [(x_range[0] + f * (x_range[1] - x_range[0]), y_range[0],
              x_range[0] + (f + 0.3) * (x_range[1] - x_range[0]), y_range[1])
             for f in (0.1, 0.4, 0.6)]
    results.append(("box selection", sum((timed(lambda b=b: box.event(bounds=b))
                                          for b in boxes * repeat), [])))
    rows = explorer.selection_order()[:repeat]
    results.append(("jet in table -> jet detail", sum(
        (timed(lambda r=r: setattr(explorer, "jet", int(r))) for r in rows), [])))
    color = app.latent._color
    results.append(("latent colouring", sum((timed(lambda v=v: setattr(color, "value", v))
                                             for v in ["D", "process"] * repeat), [])))
    assert np.isfinite(explorer.selected_yield())
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_startup(path: Path, screenshots: Sequence[tuple[Path, str]] = ()) -> None:
    """From `panel serve` to a page showing its spectrum summary, in an already open browser
    (chromium is started first, as a user's browser would be). ``screenshots``: afterwards, save
    the page opened at ``/app?{query}`` as a PNG for each ``(file, query)`` (the README's
    picture, the acceptance plots)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/app"
    panel = Path(sys.executable).with_name("panel")
    command = [str(panel), "serve", "app", "--port", str(port), "--address", "127.0.0.1",
               "--allow-websocket-origin", f"127.0.0.1:{port}", "--args", "--data", str(path)]
    if not CHROMIUM.exists():
        print("startup: /usr/bin/chromium absent; measuring until the page's HTML is served")
    playwright = browser = None
    if CHROMIUM.exists():
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/favicon.ico",
                                            timeout=60):
                    break
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - start > 300:
                raise RuntimeError("the server did not answer within 300 s")
        listening = time.perf_counter() - start
        if browser is None:
            with urllib.request.urlopen(url, timeout=300) as response:
                response.read()
            print(f"startup: listening after {listening:.2f} s; page HTML served "
                  f"{time.perf_counter() - start:.2f} s after `panel serve` started")
            return
        page = context.new_page()
        page.goto(url, timeout=300_000)
        page.wait_for_selector(".scan-summary", timeout=300_000)
        interactive = time.perf_counter() - start
        print(f"startup: server listening after {listening:.2f} s; first page interactive "
              f"(spectrum and yield shown) {interactive:.2f} s after `panel serve` started")
        for label in ("a further session (same browser)", "and another"):
            page_start = time.perf_counter()
            other = context.new_page()
            other.goto(url, timeout=300_000)
            other.wait_for_selector(".scan-summary", timeout=300_000)
            print(f"startup: {label} interactive in {time.perf_counter() - page_start:.2f} s")
        for screenshot, query in screenshots:
            shot = context.new_page()
            encoded = urllib.parse.urlencode(urllib.parse.parse_qsl(query))
            shot.goto(f"{url}?{encoded}" if encoded else url, timeout=300_000)
            shot.wait_for_selector(".scan-summary", timeout=300_000)
            shot.wait_for_timeout(5000)  # let the plots finish drawing
            shot.screenshot(path=str(screenshot), full_page=False)
            shot.close()
            print(f"screenshot of {query or 'the default view'} written to {screenshot}")
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=None, help="an existing dataset instead")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-serve", action="store_true", help="skip the startup measurement")
    parser.add_argument("--screenshot", action="append", default=[], metavar="PNG[::QUERY]",
                        help="also save a PNG of the served page opened with the URL query "
                        "QUERY, e.g. 'docs/a3.png::d=A3: X->b q q&eff=0.0001' (repeatable)")
    args = parser.parse_args(argv)
    path = args.data or synthetic_file(args.jets)
    screenshots = [(Path(item.partition("::")[0]), item.partition("::")[2])
                   for item in args.screenshot]
    if not args.no_serve:
        # first, while this process has not loaded anything yet
        bench_startup(path, screenshots)
    results = bench_updates(path, args.repeat)
    print(f"\nserver time of a widget change, all views updated ({path.name}):")
    print(f"{'widget':38s} {'median ms':>10s} {'max ms':>8s} {'n':>4s}")
    for label, times in results:
        print(f"{label:38s} {statistics.median(times):10.1f} {max(times):8.1f} {len(times):4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
