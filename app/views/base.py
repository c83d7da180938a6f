"""What every view shares: the session's :class:`~app.explorer.Explorer` and problem messages."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import panel as pn
import param
from panel.io.state import set_curdoc

from app.explorer import Explorer
from app.state import data_path

__all__ = ["ExplorerView", "in_document_lock", "push_to_notebook", "notebook_documents",
           "notebook_dist_url", "message", "text_message", "message_html", "problem_message",
           "file_name_part"]

#: The longest piece of a downloaded file's name made from a discriminant's or dataset's name.
FILE_NAME_PART_LENGTH = 60


def in_document_lock(action: Callable[[], None]) -> None:
    """Run ``action`` where Bokeh holds the session's document lock: on a served page at the
    server's next tick (``pn.state.execute(action, schedule=True)``, a next-tick callback that
    Bokeh runs with the lock held), elsewhere (a notebook, tests) now.

    Panel handles a widget event (Enter in a text field, a button click, a stream event from a
    plot) that arrives while a change of the same session is still pending in a coroutine that
    runs WITHOUT the document lock, and the pending change's watchers run there too. Panel's own
    models cope, but a Bokeh model changed directly in such a watcher (the figures' data
    sources) makes Bokeh raise ``RuntimeError: _pending_writes should be non-None when we have a
    document lock`` half way through the watchers, leaving the page's parts apart. So every
    handler that changes the session, or writes Bokeh models, is run from here.
    """
    pn.state.execute(action, schedule=True)


def push_to_notebook(*panes: pn.viewable.Viewable) -> None:
    """Send what a handler changed directly in the Bokeh models of ``panes`` (a figure's data
    sources, its y scale and axis labels) to the page of a notebook that shows them.

    A served page receives every change of its document. A notebook's output does not: Panel
    holds the notebook's document and sends only when one of its own objects changes, and the
    handling of a click in the output releases whatever is left unsent. So a widget whose only
    effect is on Bokeh models (the log/linear and absolute/normalised toggles of the spectrum
    view) did not redraw inline, and the next redraw sent a mix of both states. Nothing to do
    outside a notebook (Panel's ``push_notebook`` finds no notebook connection).
    """
    pn.io.push_notebook(*panes)


def notebook_documents(objects: Iterable[object]) -> list:
    """The Bokeh documents of the notebook outputs that show any of ``objects`` (Panel objects;
    others are skipped). Empty on a served page: its views have no notebook connection."""
    documents = []
    for item in objects:
        for ref in getattr(item, "_models", None) or ():
            shown = pn.state._views.get(ref)
            if shown is not None and shown[3] is not None and shown[2] not in documents:
                documents.append(shown[2])
    return documents


def notebook_dist_url() -> str:
    """Where a notebook's page loads the Panel stylesheets of what changes after an output was
    first drawn: Panel's Jupyter server extension (installed with Panel) serves its files under
    ``panel-preview/static/extensions/panel/`` of the Jupyter server (behind JupyterHub's prefix
    when there is one), so they never come from Panel's CDN."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    return f"{prefix.rstrip('/')}/panel-preview/static/extensions/panel/"


def file_name_part(text: str, fallback: str) -> str:
    """``text`` (a discriminant's or a dataset's name, as typed) as a piece of a file name: every
    run of characters outside ``[A-Za-z0-9]`` one ``_``, at most
    :data:`FILE_NAME_PART_LENGTH` characters; ``fallback`` when nothing is left
    (``"A1: X->cs"`` -> ``"A1_X_cs"``)."""
    part = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    return part[:FILE_NAME_PART_LENGTH].rstrip("_") or fallback


class ExplorerView(pn.viewable.Viewer):
    """Base of the views: each is a :class:`panel.viewable.Viewer` over one ``explorer``.

    Views that share an explorer show the same discriminant and efficiency. Without one, a view
    opens (the process-shared) dataset ``data`` itself, so a notebook can write
    ``SpectrumView(data="jets.parquet")``.
    """

    explorer = param.ClassSelector(class_=Explorer, instantiate=False,
                                   doc="The session state this view shows.")

    def __init__(self, explorer: Explorer | None = None, *, data: str | Path | None = None,
                 **params):
        if explorer is None:
            explorer = Explorer.from_path(data if data is not None else data_path())
        super().__init__(explorer=explorer, **params)

    def watch_explorer(self, callback: Callable[..., None], names) -> param.parameterized.Watcher:
        """``explorer.param.watch(callback, names)``, the callback run in this view's own
        notebook output (:meth:`own_notebook_document`)."""
        def run(*events) -> None:
            with self.own_notebook_document():
                callback(*events)

        return self.explorer.param.watch(run, names)

    @contextmanager
    def own_notebook_document(self) -> Iterator[None]:
        """Run what follows as a change of the notebook output that shows this view.

        Views that share an explorer may each stand in their own notebook output (a Bokeh
        document of its own). A change made in one output (a click in the composer) updates the
        views of the others in the same call, and Panel gives their updated panes the
        stylesheets it keeps for the output the change came from: Bokeh then refused the update
        ("Models must be owned by only a single document") and the view stopped following.
        Panel also sends a pane's stylesheets again with each update, from its CDN unless the
        document names a local copy, although the first drawing carried them inline
        (``pn.extension(inline=True)``): offline, the composer's formula lost KaTeX's styles
        and showed its text twice. Here the view's own document is the current one, and it
        names Panel's files on the Jupyter server (:func:`notebook_dist_url`). On a served page
        (one document, no notebook) nothing changes.
        """
        documents = notebook_documents(value for value in vars(self).values()
                                       if isinstance(value, pn.viewable.Viewable))
        for document in documents:
            document._template_variables.setdefault("dist_url", notebook_dist_url())
        if len(documents) == 1 and pn.state.curdoc is not documents[0]:
            with set_curdoc(documents[0]):
                yield
        else:
            yield


def message(text: str, kind: str = "info", **kwargs) -> pn.pane.Alert:
    """An inline message box (``kind``: info, warning, danger, success)."""
    return pn.pane.Alert(text, alert_type=kind, sizing_mode="stretch_width", **kwargs)


_TEXT_MESSAGE_COLOURS = {  # background, border, text
    "danger": ("#fdecea", "#e0a5a5", "#611a15"), "warning": ("#fff4e5", "#f0c36d", "#663c00"),
    "info": ("#e8f4fd", "#9fc9ea", "#0c4a6e"), "success": ("#edf7ed", "#a5d6a7", "#1e4620")}


def message_html(text: str, text_class: str) -> str:
    """``text`` as HTML that shows it literally: escaped, in a div of class ``text_class``."""
    return f"<div class='{text_class}'>{html.escape(text)}</div>"


def text_message(text: str = "", kind: str = "info", **kwargs) -> pn.pane.HTML:
    """An inline message box like :func:`message` for text that quotes what someone typed or
    sent: set its ``object`` with :func:`message_html`; it is never read as Markdown, and line
    breaks are kept."""
    background, border, colour = _TEXT_MESSAGE_COLOURS[kind]
    styles = {"background": background, "border": f"1px solid {border}", "color": colour,
              "border-radius": "6px", "padding": "8px 12px", "white-space": "pre-wrap",
              "overflow-wrap": "anywhere"}
    return pn.pane.HTML(html.escape(text), sizing_mode="stretch_width", styles=styles, **kwargs)


def problem_message(explorer: Explorer) -> pn.pane.HTML:
    """The page's message when the dataset could not be opened: what failed and what to do."""
    return pn.pane.HTML(
        "<div class='sophon-problem-text' style='border:1px solid #e0a5a5;background:#fdecea;"
        "color:#611a15;border-radius:6px;padding:12px 16px'>"
        "<b>The dataset could not be opened.</b><br>"
        f"<code>{html.escape(explorer.problem)}</code><br><br>"
        "Start the app on another dataset with <code>panel serve app --args --data PATH</code> "
        "or set the environment variable <code>SOPHON_DATA=PATH</code>.</div>",
        sizing_mode="stretch_width", css_classes=["sophon-problem"])
