"""Server lifecycle: the hooks of ``panel serve app`` and what they start.

Open the dataset while the server starts, so the first visitor does not wait for it
(:func:`preload`); compile the latent view's kernels once the first page is up, or a few seconds
after start, so that compiling does not slow the first page down (:func:`start_warm_up`); delete
old rescored files from the output folder (:mod:`app.limits`).

Bokeh runs this file for its hooks (``on_server_loaded``); the page (``app/main.py``) imports it
as :mod:`app.app_hooks`. The hook works through that module too, so the process has one
"warmed up" flag. :mod:`app.state` keeps the configuration and the shared cache alone; this module
sits above it, the explorer and the views.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
_ARGV = list(sys.argv)  # the `--args` of `panel serve app --args ...` while this file runs
WARM_UP_AFTER_S = 8.0
_WARM_STARTED = threading.Event()
log = logging.getLogger("sophon.app")


def on_server_loaded(server_context):
    if _ROOT not in sys.path:  # bokeh restores sys.path after running this file: add it here
        sys.path.insert(0, _ROOT)
    from tornado.ioloop import IOLoop

    import app.explorer  # noqa: F401  (imported here, not in the preload thread)
    from app import app_hooks as hooks  # the module, not bokeh's copy of this file

    argv = _ARGV
    threading.Thread(target=hooks.preload, args=(argv,), name="sophon-preload",
                     daemon=True).start()
    threading.Thread(target=hooks.clean_outputs, args=(argv,), name="sophon-clean",
                     daemon=True).start()

    def warm_up(tries_left=150):  # on the server's main thread
        analysis = hooks.loaded_analysis(argv)
        if analysis is not None:
            hooks.start_warm_up(analysis)
        elif tries_left:  # still loading (or no dataset: then give up after a while)
            IOLoop.current().call_later(2.0, warm_up, tries_left - 1)

    IOLoop.current().call_later(WARM_UP_AFTER_S, warm_up)


def clean_outputs(argv: Sequence[str] | None = None) -> None:
    """Delete old rescored files from the output folder (housekeeping: never raises)."""
    try:
        from app.limits import Budget
        from app.state import data_path, output_dir

        # nothing is loaded yet but the configured dataset
        Budget(output_dir(argv), in_use=lambda: [data_path(argv)]).clean()
    except Exception:  # housekeeping only: never stop the server
        log.exception("cleaning the output folder failed")


def preload(argv: Sequence[str] | None = None):
    """Open the configured dataset and compute the first page's default views (server start,
    in a background thread): the first visitor does not wait for them. Returns the
    :class:`~sophon.analysis.DatasetAnalysis` or the :class:`~app.state.DatasetProblem`."""
    from app.explorer import Explorer
    from app.state import DatasetProblem, data_path, load_analysis

    start = time.perf_counter()
    loaded = load_analysis(data_path(argv))
    if isinstance(loaded, DatasetProblem):
        log.warning("dataset not available: %s", loaded.message)
        return loaded
    try:  # the first page's default discriminant: computed now, shared by every session
        Explorer(analysis=loaded)
    except Exception:
        log.exception("precomputing the default views failed")
    log.info("preloaded %s in %.1f s", loaded.dataset.path, time.perf_counter() - start)
    return loaded


def loaded_analysis(argv: Sequence[str] | None = None):
    """The configured dataset's analysis if it is already loaded (never waits), else None."""
    from app.state import cached_analysis, data_path

    return cached_analysis(data_path(argv))


def start_warm_up(analysis) -> None:
    """Compile the latent view's datashader kernels once per process, in a background thread.

    ``analysis``: a :class:`~sophon.analysis.DatasetAnalysis` (anything else is ignored). Call it
    from the server's main thread (a page's onload, or the IOLoop): the modules are imported
    here, not in the thread, because importing holoviews in two threads at once can see
    half-initialised modules."""
    from sophon.analysis import DatasetAnalysis

    if not isinstance(analysis, DatasetAnalysis) or _WARM_STARTED.is_set():
        return
    _WARM_STARTED.set()
    from app.views.latent import warm_up_latent

    def warm():
        start = time.perf_counter()
        try:
            warm_up_latent(analysis)
        except Exception:  # an optimisation only: never stop the server
            log.exception("warming up the latent view failed")
        log.info("latent view warmed up in %.1f s", time.perf_counter() - start)

    threading.Thread(target=warm, name="sophon-warm-up", daemon=True).start()
