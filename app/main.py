"""``panel serve app [--args --data PATH]``: the Sophon Explorer page.

The dataset is ``--data PATH`` (after ``--args``), else ``$SOPHON_DATA``, else ``data/default``;
it is loaded once per server process and shared by every session (:mod:`app.state`). A missing
or bad dataset gives a page with the reason; the server keeps serving.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `panel serve app` runs this file as a script: make `app` importable
    sys.path.insert(0, _ROOT)

# HoloViews' bokeh backend must be imported before any session renders a HoloViews pane: a
# first import inside a session callback leaves that session's later updates unsent.
import holoviews.plotting.bokeh  # noqa: E402,F401
import panel as pn  # noqa: E402

from app.app_hooks import start_warm_up  # noqa: E402
from app.page import SophonApp  # noqa: E402
from app.state import data_path  # noqa: E402

pn.extension("tabulator", "katex", notifications=True)

sophon_app = SophonApp(data=data_path())
sophon_app.page().servable(title="Sophon Explorer")
# compile the latent view's kernels once the first page is up (once per process)
pn.state.onload(lambda: start_warm_up(sophon_app.explorer.analysis))
