"""Redraw the README picture and the acceptance screenshots from the app on the embedded default.

    .venv/bin/python docs/screenshots.py [--data data/default] [--port 5079]

Serves the app on this machine only (``app/serve.py``), opens it in Debian's chromium through
Playwright (the browser tests' way) at a link per view, waits for the spectrum summary, and
writes ``docs/screenshot.png`` and ``docs/acceptance/<preset>_1e-4.png`` (1400 x 900, the spectrum
tab at efficiency 1e-4 of all jets). Run it after a rebuild of the default (``make default``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}
#: file, preset, efficiency: what each picture shows
PICTURES = (
    ("screenshot.png", "A1: X->cs", "0.0001"),
    ("acceptance/a1_x_to_cs_1e-4.png", "A1: X->cs", "0.0001"),
    ("acceptance/a2_x_to_bb_1e-4.png", "A2: X->bb", "0.0001"),
    ("acceptance/a3_bqq_1e-4.png", "A3: X->b q q", "0.0001"),
)


def _serve(data: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(ROOT / "app" / "serve.py"), "--data", str(data),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app did not start (exit {server.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=30):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the app was not ready after 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "default")
    parser.add_argument("--port", type=int, default=5079)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    server = _serve(args.data, args.port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, preset, efficiency in PICTURES:
                page = browser.new_page(viewport=VIEWPORT)
                query = urllib.parse.urlencode({"d": preset, "eff": efficiency})
                page.goto(f"http://127.0.0.1:{args.port}/app?{query}", timeout=120_000)
                page.wait_for_selector(".scan-summary", timeout=120_000)
                page.wait_for_timeout(3000)  # the plots draw after the summary
                target = ROOT / "docs" / name
                page.screenshot(path=str(target))
                print(f"wrote {target.relative_to(ROOT)}: {preset} at eps = {efficiency}")
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
