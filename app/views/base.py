"""What every view shares: the session's :class:`~app.explorer.Explorer` and problem messages."""

from __future__ import annotations

import html
from pathlib import Path

import panel as pn
import param

from app.explorer import Explorer
from app.state import data_path

__all__ = ["ExplorerView", "message", "problem_message"]


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


def message(text: str, kind: str = "info", **kwargs) -> pn.pane.Alert:
    """An inline message box (``kind``: info, warning, danger, success)."""
    return pn.pane.Alert(text, alert_type=kind, sizing_mode="stretch_width", **kwargs)


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
