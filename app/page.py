"""The whole app as one component: the composer beside tabs of views, over one explorer."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import panel as pn
import param

from app.explorer import Explorer
from app.state import data_path
from app.urlstate import UrlState
from app.views.base import message_html, problem_message, text_message
from app.views.composer import ComposerView
from app.views.events import EventView
from app.views.rescoring import RescoringView
from app.views.significance import SignificanceView
from app.views.spectrum import SpectrumView
from sophon import __version__ as SOPHON_VERSION

__all__ = ["SophonApp", "TAB_NAMES"]

TAB_NAMES = ("Spectrum", "Significance", "Events", "Latent space", "Rescoring", "Learning")
TITLE = "Sophon Explorer"
log = logging.getLogger("sophon.app")


def _open(path: str | Path) -> Explorer:
    """The explorer on ``path``; any failure in its first computations (the first scan of the
    default discriminant) is the page's dataset problem too, never a blank page."""
    try:
        return Explorer.from_path(path)
    except Exception as error:
        log.exception("cannot open the explorer on %s", path)
        text = " ".join(str(error).split())[:500]
        return Explorer(problem=f"{path}: the first computation on the dataset failed "
                                f"({type(error).__name__}: {text})")


class SophonApp(pn.viewable.Viewer):
    """Every view over one :class:`Explorer`. ``SophonApp(data=PATH)`` in a notebook shows it
    inline; :meth:`page` is the served page."""

    explorer = param.ClassSelector(class_=Explorer, instantiate=False)

    def __init__(self, explorer: Explorer | None = None, *, data: str | Path | None = None,
                 **params):
        if explorer is None:
            explorer = _open(data if data is not None else data_path())
        super().__init__(explorer=explorer, **params)
        self.composer = ComposerView(explorer)
        self.header = pn.pane.HTML(self._header(), sizing_mode="stretch_width",
                                   css_classes=["dataset-header"])
        explorer.param.watch(lambda e: setattr(self.header, "object", self._header()), "analysis")
        self._views: dict[str, pn.viewable.Viewer] = {}
        if explorer.ready:
            # the first tab is built now, the others when first shown: a session that never
            # opens them never builds their figures
            tabs = [(TAB_NAMES[0], self.spectrum)]
            tabs += [(name, pn.pane.HTML(f"<i>{name}…</i>", sizing_mode="stretch_width"))
                     for name in TAB_NAMES[1:]]
            self.tabs = pn.Tabs(*tabs, dynamic=True, sizing_mode="stretch_width",
                                css_classes=["views"])
            self._built_tabs = {0}
            self.tabs.param.watch(self._build_tab, "active")
        else:
            self.tabs = pn.Tabs(("Dataset", problem_message(explorer)),
                                sizing_mode="stretch_width", css_classes=["views"])
        self.url = UrlState(explorer, self.tabs if explorer.ready else None)
        # what of the opened link was not applied, and why (quoted text: shown as text)
        self.link_notice = text_message("", "warning", visible=False, css_classes=["link-notice"])
        self.url.param.watch(self._show_link_notice, "notice")

    # --- the views, built on first use ------------------------------------------------------
    def _view(self, name: str, factory) -> pn.viewable.Viewer:
        if name not in self._views:
            self._views[name] = factory(self.explorer)
        return self._views[name]

    @property
    def spectrum(self) -> SpectrumView:
        return self._view("spectrum", SpectrumView)

    @property
    def significance(self) -> SignificanceView:
        return self._view("significance", SignificanceView)

    @property
    def events(self) -> EventView:
        return self._view("events", EventView)

    @property
    def latent(self):
        from app.views.latent import LatentView  # datashader: imported when first needed

        built = "latent" in self._views
        view = self._view("latent", LatentView)
        if not built:  # the link's colouring, and the view's in the link
            self.url.attach_latent(view)
        return view

    @property
    def jet_detail(self):
        from app.views.jet_detail import JetDetailView

        return self._view("jet_detail", JetDetailView)

    @property
    def rescoring(self) -> RescoringView:
        return self._view("rescoring", RescoringView)

    @property
    def learning(self):
        from app.views.learning import LearningView  # torch, scikit-learn: when first needed

        return self._view("learning", LearningView)

    def _build_tab(self, event) -> None:
        """Replace a tab's placeholder by its view when the tab is first shown."""
        index = event.new
        if index in self._built_tabs or not 0 <= index < len(TAB_NAMES):
            return
        self._built_tabs.add(index)
        name = TAB_NAMES[index]
        if name == "Significance":
            view = self.significance
        elif name == "Events":
            view = self.events
        elif name == "Latent space":
            view = pn.Column(self.latent, pn.pane.Markdown("**Jet detail**", margin=(0, 10)),
                             self.jet_detail, sizing_mode="stretch_width")
        elif name == "Learning":
            view = self.learning
        else:
            view = self.rescoring
        self.tabs[index] = (name, view)

    def _show_link_notice(self, event) -> None:
        self.link_notice.object = message_html(event.new, "link-notice-text")
        self.link_notice.visible = bool(event.new)

    def _header(self) -> str:
        explorer = self.explorer
        if not explorer.ready:
            return ""
        dataset, analysis = explorer.dataset, explorer.analysis
        metadata = dataset.metadata
        if analysis.scans_on_cluster:  # the dataset is the whole one's sample
            parts = [f"<b>{html.escape(str(analysis.path))}</b>",
                     f"{analysis.n_jets:,} jets, scanned on the Dask cluster",
                     f"per-jet views: {html.escape(analysis.sample_description())}"]
        else:
            parts = [f"<b>{html.escape(str(dataset.path))}</b>", f"{dataset.n_jets:,} jets"]
        if metadata.luminosity_fb:
            parts.append(f"{metadata.luminosity_fb:g} fb⁻¹")
        if metadata.model_id:
            parts.append(f"model {html.escape(metadata.model_id)}")
        badge = (" <span style='background:#c62828;color:white;padding:1px 6px;"
                 "border-radius:4px'>SYNTHETIC test data, not physics</span>"
                 if metadata.extra.get("synthetic") else "")
        return "Dataset: " + " · ".join(parts) + badge

    def sidebar(self) -> pn.viewable.Viewable:
        return pn.Column(pn.pane.Markdown("### Discriminant"), self.composer,
                         sizing_mode="stretch_width")

    def main(self) -> pn.viewable.Viewable:
        return pn.Column(self.link_notice, self.header, self.tabs, sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Row(pn.Column(self.sidebar(), width=420), self.main(),
                      sizing_mode="stretch_width")

    def page(self) -> pn.viewable.Viewable:
        """The served page (a plain layout: quicker to build than a template, and it loads no
        web fonts); syncs the URL with the session."""
        document = pn.state.curdoc
        if document is not None and document.session_context is not None:
            self.url.check_request(document.session_context.request)
        if pn.state.location is not None:
            self.url.sync(pn.state.location)
        header = pn.pane.HTML(
            f"<div style='display:flex;align-items:baseline;gap:14px'>"
            f"<span style='font-size:1.5em;font-weight:600'>{TITLE}</span>"
            "<span style='opacity:0.85'>jet-tagging discriminants from the Sophon foundation "
            "model (arXiv:2405.12972)</span>"
            f"<span class='sophon-version' style='margin-left:auto;opacity:0.7'>"
            f"v{html.escape(SOPHON_VERSION)}</span></div>",
            sizing_mode="stretch_width", margin=0,
            styles={"background": "#2c3e8c", "color": "white", "padding": "10px 18px"})
        sidebar = pn.Column(self.sidebar(), width=430, margin=(0, 10, 0, 0),
                            styles={"border-right": "1px solid #e0e0e0"})
        return pn.Column(header, pn.Row(sidebar, self.main(), sizing_mode="stretch_width"),
                         sizing_mode="stretch_width", css_classes=["sophon-page"])
