"""Server hooks for ``panel serve app``: open the dataset while the server starts, so the first
visitor does not wait for it; compile the latent view's kernels once the first page is up (or
a few seconds after start), so that compiling does not slow the first page down; delete old
rescored files from the output folder (:mod:`app.limits`)."""

import sys
import threading
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
_ARGV = list(sys.argv)  # the `--args` of `panel serve app --args ...` while this file runs
WARM_UP_AFTER_S = 8.0


def on_server_loaded(server_context):
    if _ROOT not in sys.path:  # bokeh restores sys.path after running this file: add it here
        sys.path.insert(0, _ROOT)
    from tornado.ioloop import IOLoop

    import app.explorer  # noqa: F401  (imported here, not in the preload thread)
    from app.state import loaded_analysis, preload, start_warm_up

    threading.Thread(target=preload, args=(_ARGV,), name="sophon-preload", daemon=True).start()
    threading.Thread(target=_clean_outputs, name="sophon-clean", daemon=True).start()

    def warm_up(tries_left=150):  # on the server's main thread
        analysis = loaded_analysis(_ARGV)
        if analysis is not None:
            start_warm_up(analysis)
        elif tries_left:  # still loading (or no dataset: then give up after a while)
            IOLoop.current().call_later(2.0, warm_up, tries_left - 1)

    IOLoop.current().call_later(WARM_UP_AFTER_S, warm_up)


def _clean_outputs():
    import logging

    try:
        from app.limits import Budget
        from app.state import data_path, output_dir

        # nothing is loaded yet but the configured dataset
        Budget(output_dir(_ARGV), in_use=lambda: [data_path(_ARGV)]).clean()
    except Exception:  # housekeeping only: never stop the server
        logging.getLogger("sophon.app").exception("cleaning the output folder failed")
