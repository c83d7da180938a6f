"""Significance versus background efficiency in a mass window (the paper's Fig. 2).

For the chosen signal process and jet mSD window, the discriminant is cut at background
efficiencies from 1 to 1e-4 (background: every other process, all masses) and
Z = sqrt(2((s + b) ln(1 + s/b) - s)) is computed from the signal and background yields in the
window at the chosen luminosity.
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
from app.views.base import ExplorerView, message, problem_message
from app.views.spectrum import ToggleGroup

__all__ = ["SignificanceView", "significance_values"]


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
        explorer.param.watch(self.refresh, ["significance", "luminosity", "error"])
        self.refresh()

    def _make_figure(self, *events) -> None:
        """The Z curve's figure (rebuilt for a new export format: bokeh fixes a figure's output
        backend when it is drawn); the data sources are kept."""
        self.figure = new_figure(title="Significance in the mass window", log_x=True,
                                 xlabel="background efficiency ε_B",
                                 ylabel="Z = √(2((s+b)ln(1+s/b) − s))",
                                 height=self.plot_height, export_format=self.export_format)
        line = self.figure.line("efficiency", "z", source=self.source, line_width=2,
                                color="#3b4cc0")
        self.figure.scatter("efficiency", "z", source=self.source, size=5, color="#3b4cc0")
        self.figure.scatter("efficiency", "z", source=self.best, size=14, marker="star",
                            color="#d62728", legend_label="best Z")
        self.figure.legend.location = "top_left"
        self.figure.add_tools(HoverTool(renderers=[line], mode="vline", tooltips=[
            ("ε_B", "@efficiency{0.[0000]e}"), ("s", "@s{0.[00]}"), ("b", "@b{0.[00]}"),
            ("Z", "@z{0.[000]}")]))
        self._pane.object = self.figure

    def values(self) -> dict[str, np.ndarray] | None:
        curve = self.explorer.significance
        return None if curve is None else significance_values(curve, self.explorer.scale)

    def refresh(self, *events) -> None:
        explorer = self.explorer
        self._error.object = html.escape(explorer.error)
        self._error.visible = bool(explorer.error)
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

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(
            pn.Row(self._signal, self._window,
                   pn.Column(pn.pane.HTML("<small>save tool writes</small>", margin=(0, 5)),
                             self._format), sizing_mode="stretch_width"),
            self._summary, self._error, self._pane, sizing_mode="stretch_width",
            css_classes=["significance-view"])
