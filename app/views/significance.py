"""Significance versus background efficiency in a mass window (the paper's Fig. 2).

For the chosen signal process and jet mSD window, the discriminant is cut at background
efficiencies from 1 to 1e-4 (background: every other process, all masses) and
Z = sqrt(2((s + b) ln(1 + s/b) - s)) is computed from the signal and background yields in the
window at the chosen luminosity.

The signal defaults to the process the discriminant targets, read from the data
(:meth:`sophon.analysis.DatasetAnalysis.target_process`, set by the explorer), and the page says
which processes make the background.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool

from sophon.spectrum import SignificanceCurve
from sophon.stats import asimov_significance

from app.plots import efficiency_label, format_number, new_figure
from app.state import cached_result
from app.views.base import ExplorerView, message, problem_message, push_to_notebook
from app.views.spectrum import ToggleGroup

__all__ = ["SignificanceView", "significance_values", "background_text"]

#: The x axis in words: Bokeh writes a subscript only through MathJax, and with MathJax loaded
#: Panel typesets the TeX of every HTML pane with it (the composer's KaTeX formula stopped
#: following the discriminant); the hover and the summary write ε<sub>B</sub> in HTML.
EFFICIENCY_AXIS_LABEL = "background efficiency"
HOVER_TEMPLATE = ("<div class='significance-hover'>ε<sub>B</sub> = @efficiency{0.[0000]e}<br>"
                  "s = @s{0.[00]}<br>b = @b{0.[00]}<br>Z = @z{0.[000]}</div>")


def background_text(signal: str, processes, target: str | None = None) -> str:
    """HTML: what the significance counts as signal and as background; ``target``: the process
    the discriminant targets (:meth:`~sophon.analysis.DatasetAnalysis.target_process`)."""
    others = [p for p in processes if p != signal]
    listed = ", ".join(html.escape(str(p)) for p in others) or "none"
    if target is None:
        why = ""
    elif target == signal:
        why = (" (the process this discriminant targets: the most significant one in its own "
               "mass window at ε = 10⁻³)")
    else:
        why = f" (this discriminant targets {html.escape(str(target))})"
    return (f"<div class='significance-background'><b>Signal:</b> "
            f"<span class='significance-signal'>{html.escape(str(signal))}</span> jets in the "
            f"window{why}. <b>Background:</b> every other "
            f"process ({listed}): its weight at all masses sets the cut (ε<sub>B</sub>), its "
            "jets in the window count as b.</div>")


def significance_values(curve: SignificanceCurve, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Background efficiency, s, b (events at the chosen luminosity) and Z for each cut."""
    s = curve.signal * scale
    b = curve.background * scale
    return {"efficiency": np.asarray(curve.background_efficiency, dtype=np.float64),
            "s": s, "b": b, "z": asimov_significance(s, b)}


class SignificanceView(ExplorerView):
    """Z versus background efficiency for a signal process in a mass window."""

    export_format = param.Selector(default="PNG", objects=["PNG", "SVG"])
    plot_height = param.Integer(default=360)

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        explorer = self.explorer
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width",
                                     css_classes=["significance-summary"])
        self._background = pn.pane.HTML("", sizing_mode="stretch_width")
        self._error = message("", "danger", visible=False)
        self._pane = pn.pane.Bokeh(sizing_mode="stretch_width")
        if not explorer.ready:
            return
        binning = explorer.analysis.binning
        width = (binning.high - binning.low) / binning.bins
        self._signal = pn.widgets.Select.from_param(explorer.param.signal, name="Signal process",
                                                    width=180)
        # the window is applied when the slider is released (value_throttled)
        self._window = pn.widgets.RangeSlider.from_param(
            explorer.param.window, name="Mass window (GeV)", start=binning.low,
            end=binning.high, step=width, throttled=True, sizing_mode="stretch_width")
        self._format = ToggleGroup.from_param(self.param.export_format, name="",
                                              options=["PNG", "SVG"])
        self.param.watch(self._make_figure, "export_format")

        self.source = ColumnDataSource({"efficiency": [], "s": [], "b": [], "z": []})
        self.best = ColumnDataSource({"efficiency": [], "z": []})
        self._make_figure()
        self.watch_explorer(self.refresh, ["significance", "luminosity", "error", "signal"])
        self.refresh()

    def _make_figure(self, *events) -> None:
        """The Z curve's figure (rebuilt for a new export format: bokeh fixes a figure's output
        backend when it is drawn); the data sources are kept."""
        self.figure = new_figure(title="Significance in the mass window", log_x=True,
                                 xlabel=EFFICIENCY_AXIS_LABEL,
                                 ylabel="Z = √(2((s+b)ln(1+s/b) − s))",
                                 height=self.plot_height, export_format=self.export_format)
        line = self.figure.line("efficiency", "z", source=self.source, line_width=2,
                                color="#3b4cc0")
        self.figure.scatter("efficiency", "z", source=self.source, size=5, color="#3b4cc0")
        self.figure.scatter("efficiency", "z", source=self.best, size=14, marker="star",
                            color="#d62728", legend_label="best Z")
        self.figure.legend.location = "top_left"
        self.figure.add_tools(HoverTool(renderers=[line], mode="vline", tooltips=HOVER_TEMPLATE))
        self._pane.object = self.figure

    def values(self) -> dict[str, np.ndarray] | None:
        curve = self.explorer.significance
        return None if curve is None else significance_values(curve, self.explorer.scale)

    def refresh(self, *events) -> None:
        explorer = self.explorer
        self._error.object = html.escape(explorer.error)
        self._error.visible = bool(explorer.error)
        if explorer.signal is not None:
            analysis, discriminant = explorer.analysis, explorer.discriminant
            try:
                target = cached_result(analysis, ("target_process", discriminant),
                                       lambda: analysis.target_process(discriminant))
            except ValueError:  # the explorer reports why
                target = None
            self._background.object = background_text(explorer.signal,
                                                      explorer.dataset.process_names, target)
        values = self.values()
        if values is None:
            return
        finite = np.where(np.isfinite(values["z"]), values["z"], np.nan)
        self.source.data = {key: value for key, value in values.items()} | {"z": finite}
        if np.isfinite(finite).any():
            best = int(np.nanargmax(finite))
            self.best.data = {"efficiency": [values["efficiency"][best]], "z": [finite[best]]}
            low, high = explorer.significance.window
            luminosity = (f" at {explorer.luminosity:g} fb⁻¹"
                          if explorer.weighted and explorer.luminosity else "")
            self._summary.object = (
                f"<div class='significance-text'><b>Best Z = "
                f"<span class='best-z'>{finite[best]:.3g}</span></b> at "
                f"ε<sub>B</sub> = {efficiency_label(values['efficiency'][best])}: "
                f"s = {format_number(values['s'][best])}, b = {format_number(values['b'][best])} "
                f"events of <b>{html.escape(str(explorer.signal))}</b> in "
                f"[{low:g}, {high:g}] GeV{luminosity} "
                f"(discriminant: {html.escape(explorer.discriminant.name)})</div>")
        else:
            self.best.data = {"efficiency": [], "z": []}
            self._summary.object = "<div class='significance-text'>No signal in the window.</div>"
        push_to_notebook(self._pane)

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(
            pn.Row(self._signal, self._window,
                   pn.Column(pn.pane.HTML("<small>save tool writes</small>", margin=(0, 5)),
                             self._format), sizing_mode="stretch_width"),
            self._summary, self._background, self._error, self._pane,
            sizing_mode="stretch_width",
            css_classes=["significance-view"])
