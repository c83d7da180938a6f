"""The workshop notebooks in a room without network (issue 22), in Debian's chromium via Playwright.

Each notebook is executed (once per test process, shared with tests/test_notebooks.py), exported
to HTML with nbconvert's ``lab`` template, served from 127.0.0.1, and opened in a browser context
that aborts every request to another host. The page must then:

- ask nothing of another host and log no console error;
- draw every view: each Panel output has its height, every Bokeh figure has ink on its canvases,
  and there are at least as many figures as views;
- typeset the composer's formula once (KaTeX writes it as MathML and as HTML, and its styles show
  only one of them).

The exported page's own scripts from a CDN (require.js, MathJax for the Markdown's formulas,
Mermaid) are nbconvert's page around the notebook, not the notebook: JupyterLab serves its own,
so the export leaves them out. Skipped (with the reason) when /usr/bin/chromium is absent, as in
tests/test_app_browser.py, whose browser fixture this reuses.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time

import pytest

from test_app_browser import TIMEOUT_MS, browser  # noqa: F401
from test_app_page_browser import _offline_context
from test_notebooks import WORKSHOP, execute_notebook, kernel_spec_dir  # noqa: F401

nbconvert = pytest.importorskip("nbconvert")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: A figure draws within this after the page has loaded, on a loaded 2-core machine.
DRAW_S = 60.0
#: The Panel mime type of an output that holds a view.
PANEL_OUTPUT = "application/vnd.holoviews_exec.v0+json"

_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# Every element under ``root``, through open shadow roots (Bokeh and Panel draw in them).
_WALK = """const walk = (root, found = []) => {
  for (const element of root.querySelectorAll('*')) {
    found.push(element);
    if (element.shadowRoot) walk(element.shadowRoot, found);
  }
  return found;
};"""

_FIGURE_INK = _WALK + """
return walk(document).filter((e) => e.classList && e.classList.contains('bk-Figure')).map((figure) => {
  let ink = 0;
  for (const canvas of walk(figure.shadowRoot || figure).filter((e) => e.tagName == 'CANVAS')) {
    const context = canvas.width ? canvas.getContext('2d') : null;
    if (!context) continue;
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) ink++;
  }
  return ink;
});"""

_VIEW_HEIGHTS = """return [...document.querySelectorAll('[data-root-id]')]
  .map((root) => Math.round(root.parentElement.getBoundingClientRect().height));"""

# For each KaTeX formula, how many of its two renderings (MathML, HTML) take room on the page:
# KaTeX writes both, and its styles (or Panel's) show one; without them the formula shows twice.
_FORMULAS = _WALK + """
return walk(document).filter((e) => e.classList && e.classList.contains('katex')).map((formula) =>
  [...formula.children].filter((part) => part.classList.contains('katex-mathml')
                                         || part.classList.contains('katex-html'))
    .filter((part) => { const box = part.getBoundingClientRect(); return box.width > 1 && box.height > 1; })
    .length);"""


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    template = tmp_path_factory.mktemp("nbconvert") / "offline.html.j2"
    template.write_text(_TEMPLATE)
    return nbconvert.HTMLExporter(template_name="lab", template_file=str(template))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A static file server on 127.0.0.1: (folder, base URL)."""
    folder = tmp_path_factory.mktemp("notebook-pages")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=10)


def _views(notebook) -> int:
    """How many outputs after the set-up cell hold a Panel view."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return sum(1 for cell in code_cells[1:] for output in cell.outputs
               if PANEL_OUTPUT in output.get("data", {}))


@pytest.mark.parametrize("name", WORKSHOP)
def test_notebook_views_are_drawn_offline(name, browser, kernel_spec_dir, exporter, site):
    notebook, _ = execute_notebook(name, kernel_spec_dir)
    views = _views(notebook)
    body, _ = exporter.from_notebook_node(notebook)
    folder, base = site
    page_name = name.replace(".ipynb", ".html")
    (folder / page_name).write_text(body, encoding="utf-8")

    context, page, record = _offline_context(browser)
    try:
        page.goto(f"{base}/{page_name}", timeout=TIMEOUT_MS)
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
        deadline = time.monotonic() + DRAW_S
        while True:
            ink = page.evaluate(f"() => {{ {_FIGURE_INK} }}")
            heights = page.evaluate(f"() => {{ {_VIEW_HEIGHTS} }}")
            drawn = len(ink) >= views and all(ink) and sum(h > 100 for h in heights) >= views
            if drawn or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(ink) >= views, f"{name}: {len(ink)} figures for {views} views"
        assert all(ink), f"{name}: figures without ink {ink}"
        assert sum(height > 100 for height in heights) >= views, (name, heights)
        formulas = page.evaluate(f"() => {{ {_FORMULAS} }}")
        assert all(shown == 1 for shown in formulas), f"{name}: formulas shown {formulas} times"
        if any("ComposerView(" in cell.source for cell in notebook.cells if cell.cell_type == "code"):
            assert formulas, f"{name}: the composer's formula is not typeset"
    finally:
        context.close()
    assert record == {"external": [], "errors": []}, (name, record)
