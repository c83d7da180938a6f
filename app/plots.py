"""Plot helpers shared by the views: colours, labels and the 1-D histogram figures.

The 1-D plots (spectra, stacks, significance) are plain Bokeh figures fed by ColumnDataSources:
a view builds its figure once and then only replaces the sources' data, which costs about a
millisecond (a HoloViews overlay of ten curves costs tens). Log and linear y axes are switched in
place (:func:`set_log_y`: scale, ticker and tick labels). A figure is rebuilt only when the save
tool's format changes, since Bokeh fixes a figure's output backend when it is drawn; the save
tool in each toolbar writes PNG, or SVG once ``export_format`` is ``"SVG"``, under the name
:func:`set_save_name` gives it (the views name the discriminant, efficiency and dataset).

The legends beside the plots are made by :func:`side_legend`, which sizes their swatches for the
SVG backend too (see there): without it, SVG mode squashes a plot to a sliver.

What a physicist reads at a glance: y tick labels as ``0.01``, ``250``, ``12,000``, ``2.5×10⁷``
or ``10⁻³`` (:data:`READABLE_TICKS`, never ``2.500e+7``); a per-bin y label states the bin width
(``events / 5 GeV``, :func:`bin_width_label`); the log stack starts at :attr:`StackPlot.floor_ratio`
(1e-3) of its highest bin, so an empty bin is not a wall down to 1e-10 and a process a million
times smaller than QCD does not reach QCD's height; the stack's dotted lines are named in its
legend as the significance window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import panel as pn
from bokeh.models import (BasicTicker, ColumnDataSource, CustomJSTickFormatter, HoverTool,
                          Legend, LegendItem, LinearScale, LogScale, LogTicker, Range1d, SaveTool,
                          Span)
from bokeh.core.properties import value
from bokeh.palettes import Category10_10, Plasma256
from bokeh.plotting import figure

__all__ = [
    "efficiency_colors",
    "efficiency_label",
    "process_colors",
    "category_colors",
    "steps",
    "format_number",
    "bin_width_label",
    "readable_ticks",
    "new_figure",
    "MIN_PLOT_WIDTH",
    "plot_row",
    "set_export_format",
    "set_save_name",
    "set_log_y",
    "side_legend",
    "CurvesPlot",
    "StackPlot",
]

_QCD_COLOR = "#a6bddb"
_OTHER_COLOR = "#bdbdbd"
_CATEGORICAL = [c for c in Category10_10 if c != "#7f7f7f"]  # grey is kept for 'other'
_EXTRA = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
          "#31a354", "#756bb1", "#636363", "#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc"]
SELECTION_COLOR = "#111111"


def efficiency_colors(n: int) -> list[str]:
    """``n`` colours graded from dark (efficiency 1) to light orange (tightest cut)."""
    positions = np.linspace(0, 0.85, max(n, 1)) * (len(Plasma256) - 1)
    return [Plasma256[int(round(p))] for p in positions][:n]


def efficiency_label(efficiency: float) -> str:
    """``1``, ``0.32``, ``0.1``, ``0.032``, ``0.01``, ``3.2e-3``, ``1e-3``... for humans."""
    if efficiency >= 0.01:
        return f"{efficiency:.2g}"
    mantissa, exponent = f"{efficiency:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def category_colors(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per category; QCD and 'other' get neutral colours."""
    palette = _CATEGORICAL + _EXTRA
    colors: dict[str, str] = {}
    position = 0
    for name in names:
        if name == "QCD":
            colors[name] = _QCD_COLOR
        elif name == "other":
            colors[name] = _OTHER_COLOR
        else:
            colors[name] = palette[position % len(palette)]
            position += 1
    return colors


def process_colors(names: Sequence[str]) -> dict[str, str]:
    return category_colors(names)


def steps(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram as a step line: x = each inner edge twice, y = each value twice."""
    x = np.repeat(np.asarray(edges, dtype=np.float64), 2)[1:-1]
    y = np.repeat(np.asarray(values, dtype=np.float64), 2)
    return x, y


def format_number(value: float) -> str:
    """Thousands separators for large numbers, three significant digits for small ones."""
    if not np.isfinite(value):
        return "∞" if value > 0 else "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def bin_width_label(label: str, edges: np.ndarray, unit: str = "GeV") -> str:
    """``label`` with "bin" in "... / bin ..." replaced by the bin width of ``edges`` when the
    bins are equal: ``events / bin (138 fb⁻¹)`` -> ``events / 5 GeV (138 fb⁻¹)``. Unequal bins,
    or a label without "/ bin", are left as they are."""
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    if "/ bin" not in label or widths.size == 0 or not np.allclose(widths, widths[0]):
        return label
    return label.replace("/ bin", f"/ {float(widths[0]):g} {unit}".rstrip(), 1)


#: JavaScript for tick labels: 0, 0.01, 250, 12,000, then 2.5×10⁷; on a log axis (``log``)
#: the powers of ten as 1, 10, 10², 10⁻³.
_READABLE_TICKS_JS = """
const superscript = (n) => String(n).replace(/[-0-9]/g, (c) => "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"["-0123456789".indexOf(c)]);
if (tick === 0) { return "0"; }
const size = Math.abs(tick);
let exponent = Math.floor(Math.log10(size) + 1e-9);
let mantissa = Number((tick / Math.pow(10, exponent)).toPrecision(3));
if (Math.abs(mantissa) >= 10) { mantissa /= 10; exponent += 1; }
const power = exponent === 0 ? "1" : (exponent === 1 ? "10" : "10" + superscript(exponent));
if (log && Math.abs(mantissa) === 1) { return (mantissa < 0 ? "−" : "") + power; }
if (size >= 1e5 || size < 1e-3) {
  return mantissa === 1 ? power : (mantissa === -1 ? "−" + power : mantissa + "×" + power);
}
return tick.toLocaleString("en-US", {maximumSignificantDigits: 4});
"""


def readable_ticks(log: bool = False) -> CustomJSTickFormatter:
    """A tick formatter for counts and yields: ``0.01``, ``250``, ``12,000``, ``2.5×10⁷``
    (never ``2.500e+7``); with ``log``, powers of ten as ``1``, ``10``, ``10²``, ``10⁻³``."""
    return CustomJSTickFormatter(code=_READABLE_TICKS_JS, args={"log": bool(log)})


#: The narrowest a plot in a :func:`plot_row` gets (its legend included) before the row wraps:
#: a side legend naming the significance window takes about 210 px, the axes 75 px, and the
#: plotted area keeps at least 200 px.
MIN_PLOT_WIDTH = 500


def plot_row(*panes, **params) -> pn.FlexBox:
    """Plots side by side while each gets :data:`MIN_PLOT_WIDTH`, else one above the other (a
    laptop's 1024 or 1280 px beside the sidebar), never wider than the page."""
    basis = f".bk-Figure {{ flex: 1 1 {MIN_PLOT_WIDTH}px; width: auto; }}"
    return pn.FlexBox(*panes, flex_wrap="wrap", sizing_mode="stretch_width",
                      stylesheets=[basis], **params)


def new_figure(*, title: str, xlabel: str, ylabel: str, log_y: bool = False,
               log_x: bool = False, height: int = 330, export_format: str = "PNG",
               tools: str = "save,box_zoom,reset") -> figure:
    """A figure as wide as its place, the toolbar above, the save tool writing
    ``export_format``."""
    fig = figure(title=title, x_axis_label=xlabel, y_axis_label=ylabel, height=height,
                 sizing_mode="stretch_width", y_axis_type="log" if log_y else "linear",
                 x_axis_type="log" if log_x else "linear", tools=tools, toolbar_location="above",
                 min_border_right=10)
    fig.title.text_font_size = "11pt"
    for axis in fig.yaxis:
        axis.formatter = readable_ticks(log_y)
    set_export_format(fig, export_format)
    return fig


def set_export_format(fig: figure, export_format: str) -> None:
    """The save tool writes PNG (canvas backend) or SVG (svg backend)."""
    fig.output_backend = "svg" if export_format == "SVG" else "canvas"


def set_save_name(fig: figure, name: str) -> None:
    """The file name (without extension: Bokeh adds ``.png`` or ``.svg``) the figure's save tool
    writes, instead of asking for one. Only a changed name is sent to the browser. The tools
    are read from the toolbar: ``fig.select`` walks every model of the figure (70 ms a call on
    the default's plots, twice per refresh of the spectrum view)."""
    for tool in fig.toolbar.tools:
        if isinstance(tool, SaveTool) and tool.filename != name:
            tool.filename = name


def side_legend(items: Sequence[LegendItem], **style) -> Legend:
    """A legend for the panel beside a plot (``fig.add_layout(legend, "right")``), right in both
    output backends.

    Bokeh (3.9, bokeh/bokeh#15014) draws each swatch of an HTML legend into a layer of the
    figure's backend and sizes it through a class it puts on the layer's wrapper; with the SVG
    backend the swatch is the wrapper's ``<svg>``, which that rule misses, so it is first measured
    at an unsized SVG's 300 x 150 px. The side panel reserves that width, the frame keeps what is
    left (about 50 px), and the legend and toolbar land past the figure's edge. The stylesheet
    gives the ``<svg>`` swatch the glyph size itself (canvas swatches already have it).
    """
    legend = Legend(items=list(items), **style)
    swatch = f"width: {legend.glyph_width}px; height: {legend.glyph_height}px;"
    legend.stylesheets = [f".bk-item > svg {{ {swatch} flex: none; }}"]
    return legend


def set_log_y(fig: figure, log_y: bool) -> None:
    """Switch the y axis between log and linear in place (scale, ticker and tick labels)."""
    fig.y_scale = LogScale() if log_y else LinearScale()
    for axis in fig.yaxis:
        axis.ticker = LogTicker() if log_y else BasicTicker()
        axis.formatter = readable_ticks(log_y)
    for grid in fig.ygrid:
        grid.ticker = fig.yaxis[0].ticker


def _for_log(values: np.ndarray, log_y: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan) if log_y else values


class CurvesPlot:
    """Step curves, one per efficiency level, colour-graded, the chosen level thicker, plus a
    dashed overlay (the latent selection). ``update`` only replaces the source data."""

    def __init__(self, labels: Sequence[str], *, title: str, xlabel: str, ylabel: str,
                 log_y: bool, export_format: str = "PNG", height: int = 330,
                 overlay_label: str | None = "latent selection", x_unit: str = "GeV"):
        self.log_y = log_y
        self.x_unit = x_unit
        self.labels = list(labels)
        self.colors = efficiency_colors(len(self.labels))
        self.figure = new_figure(title=title, xlabel=xlabel, ylabel=ylabel, log_y=log_y,
                                 export_format=export_format, height=height)
        self.source = ColumnDataSource({"xs": [], "ys": [], "color": [], "width": [],
                                        "alpha": [], "label": []})
        self.overlay = ColumnDataSource({"x": [], "y": []})
        lines = self.figure.multi_line("xs", "ys", color="color", line_width="width",
                                       alpha="alpha", source=self.source)
        overlay = self.figure.line("x", "y", color=SELECTION_COLOR, line_dash="dashed",
                                   line_width=2.2, source=self.overlay)
        items = [LegendItem(label=label, renderers=[lines], index=i)
                 for i, label in enumerate(self.labels)]
        if overlay_label:
            items.append(LegendItem(label=overlay_label, renderers=[overlay]))
        self.figure.add_layout(side_legend(items, label_text_font_size="8pt", spacing=0,
                                           padding=4, click_policy="none"), "right")
        self.figure.add_tools(HoverTool(renderers=[lines], tooltips=[("", "@label"),
                                                                     ("mass", "$x{0}"),
                                                                     ("value", "$y{0.[000]}")]))

    def set_log_y(self, log_y: bool) -> None:
        """Log or linear y, in place (the caller then calls :meth:`update` again)."""
        self.log_y = log_y
        set_log_y(self.figure, log_y)

    def update(self, edges: np.ndarray, curves: np.ndarray, chosen: int,
               overlay: np.ndarray | None = None, ylabel: str | None = None) -> None:
        """``curves`` (levels, bins); ``overlay`` (bins,) or None."""
        xs, ys = [], []
        for values in curves:
            x, y = steps(edges, values)
            xs.append(x)
            ys.append(_for_log(y, self.log_y))
        n = len(xs)
        self.source.data = {
            "xs": xs, "ys": ys, "color": self.colors[:n],
            "width": [3.2 if i == chosen else 1.3 for i in range(n)],
            "alpha": [1.0 if i == chosen else 0.7 for i in range(n)],
            "label": self.labels[:n],
        }
        if overlay is None:
            self.overlay.data = {"x": [], "y": []}
        else:
            x, y = steps(edges, overlay)
            self.overlay.data = {"x": x, "y": _for_log(y, self.log_y)}
        if ylabel is not None:
            self.figure.yaxis.axis_label = bin_width_label(ylabel, edges, self.x_unit)

    def set_export_format(self, export_format: str) -> None:
        set_export_format(self.figure, export_format)


class StackPlot:
    """Per-category stacked step areas (the first category at the bottom) and the significance
    window as two dotted lines, named in the legend.

    On a log axis the plot starts at ``floor_ratio`` of its highest bin (set it for another
    depth): what lies below is not drawn, so an empty bin is not a wall and a process a million
    times smaller than the total stays at the bottom."""

    #: On a log axis, the y range starts at this fraction of the highest bin's total.
    floor_ratio = 1e-3

    def __init__(self, names: Sequence[str], *, title: str, xlabel: str, ylabel: str,
                 log_y: bool, export_format: str = "PNG", height: int = 330,
                 x_unit: str = "GeV", floor_ratio: float | None = None):
        self.names = list(names)
        self.log_y = log_y
        self.x_unit = x_unit
        if floor_ratio is not None:
            self.floor_ratio = float(floor_ratio)
        colors = process_colors(self.names)
        self.order = sorted(range(len(self.names)), key=lambda i: (self.names[i] != "QCD", i))
        self.figure = new_figure(title=title, xlabel=xlabel, ylabel=ylabel, log_y=log_y,
                                 export_format=export_format, height=height)
        # the y range is set by update (from the floor or 0 to above the highest bin), never
        # computed by the browser: a DataRange1d keeps the start and end it had when it was
        # first drawn, so in a notebook's output a log range outlived the switch to linear
        self.figure.y_range = Range1d(*self._empty_range())
        columns = {"x": []}
        for i in range(len(self.names)):
            columns[f"lower{i}"] = []
            columns[f"upper{i}"] = []
        self.source = ColumnDataSource(columns)
        items = []
        for i in reversed(self.order):
            renderer = self.figure.varea("x", f"lower{i}", f"upper{i}", source=self.source,
                                         fill_color=colors[self.names[i]], fill_alpha=0.85)
            items.append(LegendItem(label=self.names[i], renderers=[renderer]))
        # the total's MC statistical error, sqrt(sum of w^2) per bin, when asked for
        self.error_source = ColumnDataSource({"x": [], "lower": [], "upper": []})
        self.error_band = self.figure.varea("x", "lower", "upper", source=self.error_source,
                                            fill_color="#222222", fill_alpha=0.25,
                                            hatch_pattern="/", hatch_color="#222222",
                                            hatch_alpha=0.6, visible=False)
        items.insert(0, LegendItem(label="MC stat. error", renderers=[self.error_band]))
        # the window's legend entry: a dotted line without data, shown with the window
        self.window_key = self.figure.line([], [], line_color="#555555", line_dash="dotted",
                                           line_width=1.5, visible=False)
        self.window_item = LegendItem(label=value("significance window"),
                                      renderers=[self.window_key])
        items.append(self.window_item)
        self.figure.add_layout(side_legend(items, label_text_font_size="8pt", spacing=0,
                                           padding=4), "right")
        self.window_low = Span(location=0, dimension="height", line_color="#555555",
                               line_dash="dotted", line_width=1.5, visible=False)
        self.window_high = Span(location=0, dimension="height", line_color="#555555",
                                line_dash="dotted", line_width=1.5, visible=False)
        self.figure.add_layout(self.window_low)
        self.figure.add_layout(self.window_high)

    def set_log_y(self, log_y: bool) -> None:
        """Log or linear y, in place (the caller then calls :meth:`update` again)."""
        self.log_y = log_y
        set_log_y(self.figure, log_y)

    def _empty_range(self) -> tuple[float, float]:
        """The y range while nothing is stacked."""
        return (1.0, 10.0) if self.log_y else (0.0, 1.0)

    def update(self, edges: np.ndarray, stack: np.ndarray,
               window: tuple[float, float] | None = None, ylabel: str | None = None,
               errors: np.ndarray | None = None) -> None:
        """``stack`` (categories, bins) in the order of ``names``; ``errors`` (bins,) the
        standard deviation of the total, drawn as a band around it (None: no band)."""
        stack = np.asarray(stack, dtype=np.float64)
        top = float(stack.sum(axis=0).max(initial=0.0))
        floor = top * self.floor_ratio if (self.log_y and top > 0) else 0.0
        cumulative = np.zeros(stack.shape[1])
        data = {}
        x = steps(edges, cumulative)[0]
        for i in self.order:
            lower, upper = cumulative, cumulative + stack[i]
            y_lower, y_upper = steps(edges, lower)[1], steps(edges, upper)[1]
            if self.log_y:
                y_lower, y_upper = np.maximum(y_lower, floor), np.maximum(y_upper, floor)
            data[f"lower{i}"], data[f"upper{i}"] = y_lower, y_upper
            cumulative = upper
        self.source.data = {"x": x, **data}
        self.error_band.visible = errors is not None
        if errors is None:
            self.error_source.data = {"x": [], "lower": [], "upper": []}
        else:
            total = stack.sum(axis=0)
            lower = steps(edges, total - errors)[1]
            upper = steps(edges, total + errors)[1]
            if self.log_y:
                lower = np.maximum(lower, floor) if floor > 0 else _for_log(lower, True)
            self.error_source.data = {"x": x, "lower": lower, "upper": upper}
        # the range: from the floor (log) or 0 to above the highest bin; the reset tool returns
        # here, not to the range of the first drawing
        if top > 0:
            start, end = (floor, top * 2.5) if self.log_y else (0.0, top * 1.05)
        else:
            start, end = self._empty_range()
        self.figure.y_range.update(start=start, end=end, reset_start=start, reset_end=end)
        if window is not None:
            low, high = float(window[0]), float(window[1])
            self.window_low.update(location=low, visible=True)
            self.window_high.update(location=high, visible=True)
            self.window_item.label = value(f"significance window {low:g}–{high:g} {self.x_unit}")
        self.window_key.visible = window is not None
        if ylabel is not None:
            self.figure.yaxis.axis_label = bin_width_label(ylabel, edges, self.x_unit)

    def set_export_format(self, export_format: str) -> None:
        set_export_format(self.figure, export_format)

