"""The latent space: a datashaded UMAP of every jet, box/lasso selection, the selected jets.

All jets are drawn (datashader: rasterize/datashade + dynspread, no point cap), coloured by
process, true class group, most probable class, or the discriminant value. Box and lasso tools
report only their geometry (HoloViews ``BoundsXY`` and ``Lasso`` streams, read raw: linked
selections on datashaded plots are unreliable); the jets inside are found by
:mod:`app.selection` on the raw coordinates. The selection's spectrum is overlaid on the spectrum
view, and the selected jets are listed below the plot a page at a time (most signal-like first)
with their top-5 classes and whether they carry constituents, ready to download as CSV or
Parquet.

Hovering names the category of the jet under the cursor in the browser itself: next to the
datashaded image (one sample jet per pixel, ``selector=ds.first()``) goes an invisible image of
that jet's category code, whose hover maps the code to its name and shows nothing over an empty
pixel (HoloViews' own selector hover asks the server for each position and shows
``undefined``, or the previous pixel's category, until it answers). The live selection is drawn
by the view (a dashed outline from the explorer's selection), not left to the select tools'
overlays: it goes with "Clear selection" and stays when the colouring changes. The outline is a
Bokeh line on the figure, fed by one data source the view updates in place (an overlaid
DynamicMap would make HoloViews shade every jet again for each new selection).
"""

from __future__ import annotations

import html
import io
import threading

import datashader as ds
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh renderer)
import holoviews.operation.datashader as hd
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import (BoxSelectTool, ColumnDataSource, CustomJS, CustomJSHover, HoverTool,
                          LassoSelectTool)

from sophon.analysis import DatasetAnalysis, selection_frame
from sophon.discriminant import Discriminant
from sophon.labels import LABELS, N_CLASSES, TRUTH_GROUP_OF_CLASS, TRUTH_GROUPS

from app.plots import SELECTION_COLOR, category_colors
from app.state import shared
from app.views.base import (ExplorerView, in_document_lock, message, problem_message,
                            push_to_notebook)
from app.views.jet_detail import stored_constituents

__all__ = ["LatentView", "LatentData", "SelectionTable", "latent_data", "jet_table",
           "COLOR_OPTIONS"]

COLOR_OPTIONS = {"process": "process", "true class group": "truth",
                 "most probable class": "top", "discriminant value D": "D"}
TOP_CLASSES_SHOWN = 12  # the most frequent top classes get a colour; the rest are 'other'


class LatentData:
    """The latent-plane arrays of one dataset, built once per process and shared read-only by
    all sessions: coordinates and, lazily, one categorical frame per colouring."""

    def __init__(self, analysis: DatasetAnalysis):
        dataset = analysis.dataset
        self.analysis = analysis
        self.x = dataset.column("umap_x")
        self.y = dataset.column("umap_y")
        finite = np.isfinite(self.x) & np.isfinite(self.y)
        self.x_range = (float(self.x[finite].min()), float(self.x[finite].max())) if finite.any() \
            else (0.0, 1.0)
        self.y_range = (float(self.y[finite].min()), float(self.y[finite].max())) if finite.any() \
            else (0.0, 1.0)
        self._frames: dict[str, tuple[pd.DataFrame, list[str]]] = {}
        self._lock = threading.Lock()

    def available(self, kind: str) -> bool:
        if kind == "truth":
            # SM samples carry jet_label = -1 (no class): there is no truth to colour by
            dataset = self.analysis.dataset
            return dataset.has("jet_label") and bool((dataset.column("jet_label") >= 0).any())
        return True

    def categorical(self, kind: str) -> tuple[pd.DataFrame, list[str]]:
        """A DataFrame (x, y, ``kind`` categorical) sharing the coordinate arrays, and the
        category names in display order."""
        with self._lock:
            if kind not in self._frames:
                codes, names = self._codes(kind)
                column = pd.Categorical.from_codes(codes, categories=names)
                frame = pd.DataFrame({"x": self.x, "y": self.y, kind: column}, copy=False)
                self._frames[kind] = (frame, names)
            return self._frames[kind]

    def _codes(self, kind: str) -> tuple[np.ndarray, list[str]]:
        dataset = self.analysis.dataset
        if kind == "process":
            return dataset.process_codes.astype(np.int16), list(dataset.process_names)
        if kind == "truth":
            labels = dataset.column("jet_label").astype(np.int64)
            valid = (labels >= 0) & (labels < N_CLASSES)
            codes = np.where(valid, TRUTH_GROUP_OF_CLASS[np.clip(labels, 0, N_CLASSES - 1)], -1)
            return codes.astype(np.int8), list(TRUTH_GROUPS)
        if kind == "top":
            best = self.analysis.most_probable_class
            counts = np.bincount(best, minlength=N_CLASSES)
            frequent = [int(i) for i in np.argsort(-counts)[:TOP_CLASSES_SHOWN] if counts[i] > 0]
            lookup = np.full(N_CLASSES, len(frequent), dtype=np.int16)
            lookup[frequent] = np.arange(len(frequent), dtype=np.int16)
            names = [LABELS[i] for i in frequent]
            if len(frequent) < np.count_nonzero(counts):
                names.append("other")
            return lookup[best], names
        raise ValueError(f"unknown colouring {kind!r}")

    def continuous(self, values: np.ndarray, name: str = "D") -> pd.DataFrame:
        """A per-call DataFrame (x, y, ``name``) over the shared coordinates (no copies)."""
        return pd.DataFrame({"x": self.x, "y": self.y, name: values}, copy=False)


def latent_data(analysis: DatasetAnalysis) -> LatentData:
    return shared(analysis, "latent", lambda: LatentData(analysis))


HOVER_SAMPLE_MAX_JETS = 500_000  # above this, the hover sample is off by default (speed)


def _shade(points, kind: str, data: LatentData, dynamic: bool = True, hover: bool = True):
    """rasterize (mean D) or datashade (count by category) + dynspread. ``hover``: datashade
    also keeps one sample jet per pixel (``selector=ds.first()``) so that hovering names its
    category; it about doubles the aggregation time."""
    if kind == "D":
        shaded = hd.rasterize(points, aggregator=ds.mean("D"), dynamic=dynamic)
    else:
        _, names = data.categorical(kind)
        extra = {"selector": ds.first()} if hover else {}
        shaded = hd.datashade(points, aggregator=ds.count_cat(kind),
                              color_key=category_colors(names), dynamic=dynamic, **extra)
    return hd.dynspread(shaded, threshold=0.5, max_px=3, dynamic=dynamic)


def _category_codes(shaded: hv.RGB, kind: str, data: LatentData) -> hv.Image:
    """The category code of the sample jet of each pixel of the datashaded ``shaded`` (its
    ``__index__`` selector column), as an image on the same grid; an empty pixel takes a drawn
    neighbour's code, NaN where there is none."""
    frame, _ = data.categorical(kind)
    grid = shaded.data
    index = np.asarray(grid["__index__"].values)
    codes = np.asarray(frame[kind].cat.codes.values)
    values = np.where(index >= 0, codes[np.clip(index, 0, None)], -1).astype(np.float32)
    values[values < 0] = np.nan
    # an empty pixel next to a drawn one names that one: a point is a pixel or two wide, and the
    # cursor (or the screen's rounding) is often one off
    padded = np.pad(values, 1, constant_values=np.nan)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
        neighbour = padded[1 + dy:1 + dy + values.shape[0], 1 + dx:1 + dx + values.shape[1]]
        empty = np.isnan(values)
        values[empty] = neighbour[empty]
    return hv.Image((grid["x"].values, grid["y"].values, values), ["x", "y"], [f"{kind}_code"])


def _category_hover(label: str, names: list[str]) -> HoverTool:
    """A hover tool over the code image: the category's name, nothing over an empty pixel."""
    name = CustomJSHover(args={"names": names}, code=(
        "const code = Math.round(value); "
        "return (code >= 0 && code < names.length) ? names[code] : '';"))
    keep = CustomJS(code="export default (args, tool, {value}) => "
                         "Number.isFinite(value) && value >= 0")
    return HoverTool(tooltips=[(label, "@image{name}")], formatters={"@image": name},
                     filters={"@image": keep}, description="hover names the category")


def selection_outline(shape) -> dict[str, list[float]]:
    """The closed outline of a latent selection ``shape``, ``("box", (x0, y0, x1, y1))`` or
    ``("lasso", ((x, y), ...))``, as the data of a line (``{"x": [...], "y": [...]}``, UMAP
    units); empty lists for None."""
    if shape is None:
        return {"x": [], "y": []}
    kind, geometry = shape
    if kind == "box":
        x0, y0, x1, y1 = (float(v) for v in geometry)
        vertices = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    else:
        vertices = [tuple(map(float, v)) for v in geometry]
    vertices.append(vertices[0])
    return {"x": [x for x, _ in vertices], "y": [y for _, y in vertices]}


_OUTLINE_STYLE = dict(line_color=SELECTION_COLOR, line_width=2.0, line_dash="dashed")
_OUTLINE_NAME = "selection-outline"


def _outline_hook(source: ColumnDataSource):
    """A HoloViews plot hook that draws ``source`` as the selection's outline on the figure,
    once per figure (hooks run again on every update)."""
    def hook(plot, element) -> None:
        figure = plot.state
        if not any(renderer.name == _OUTLINE_NAME for renderer in figure.renderers):
            figure.line("x", "y", source=source, name=_OUTLINE_NAME, **_OUTLINE_STYLE)
    return hook


def latent_plot(data: LatentData, kind: str, points=None, *, height: int = 480,
                hover: bool = True, outline: ColumnDataSource | None = None, streams=()):
    """The datashaded latent plot coloured by ``kind`` (every jet drawn, no point cap), with
    box and lasso selection tools. ``points``: the D-coloured points (a DynamicMap following the
    discriminant) when ``kind == "D"``; ``outline``: the data source of the selection's outline
    (:func:`selection_outline`), drawn on top; ``streams``: the selection streams (BoundsXY,
    Lasso), linked to the datashaded layer (HoloViews links none to an overlay of layers)."""
    # the tools' own overlays go when a gesture ends: the view draws the selection (outline)
    tools = [BoxSelectTool(persistent=False), LassoSelectTool(persistent=False)]
    common = dict(responsive=True, min_height=height, xlabel="UMAP x", ylabel="UMAP y",
                  active_tools=["box_select", "wheel_zoom"],
                  title="Latent space (UMAP of the 128-d latent)", toolbar="above",
                  xlim=data.x_range, ylim=data.y_range,
                  hooks=[] if outline is None else [_outline_hook(outline)])
    if kind == "D":
        plot = _shade(points, kind, data).opts(
            cmap="viridis", colorbar=True, clim=(0, 1), clabel="mean D", tools=["hover", *tools],
            hover_tooltips=[("mean D", "@image{0.000}")], **common)
        for stream in streams:
            stream.source = plot
        return plot
    frame, names = data.categorical(kind)
    label = {value: name for name, value in COLOR_OPTIONS.items()}[kind]
    plot = _shade(hv.Points(frame, ["x", "y"], [kind]), kind, data, hover=hover).opts(
        show_legend=True, legend_position="right", tools=tools, **common)
    for stream in streams:
        stream.source = plot
    if hover:
        codes = plot.apply(_category_codes, kind=kind, data=data).opts(
            alpha=0, colorbar=False, cmap="gray", tools=[_category_hover(label, names)])
        plot = plot * codes
    return plot


# --- the selected jets ------------------------------------------------------------------------
_TABLE_COLUMNS = {"process": "process", "jet_sdmass": "mSD", "jet_pt": "pT", "jet_eta": "η"}


def jet_table(analysis: DatasetAnalysis, rows: np.ndarray, discriminant: Discriminant,
              k: int = 5) -> pd.DataFrame:
    """One display row per jet: index, whether it carries constituents (``✓ 37``: 37 stored;
    ``—``: none; only where the dataset stores constituents), process, mSD, pT, η, D and the
    top-``k`` classes."""
    rows = np.asarray(rows, dtype=np.int64)
    dataset = analysis.dataset
    data: dict[str, object] = {"jet": rows}
    counts = stored_constituents(analysis)
    if counts is not None:
        data["constituents"] = pd.Series([f"✓ {n}" if n else "—" for n in counts[rows]],
                                         dtype=object)
    for column, title in _TABLE_COLUMNS.items():
        if dataset.has(column):
            values = dataset.column(column)[rows]
            data[title] = (pd.Series(values, dtype=object) if column == "process"
                           else np.round(values.astype(float), 2))
    data["D"] = np.round(analysis.discriminant(discriminant)[rows].astype(float), 4)
    top, probabilities = analysis.top_classes(rows, k=k)
    for position in range(k):
        # object dtype: the table widget does not serialise pandas' arrow-backed strings
        data[f"top {position + 1}"] = pd.Series(
            [f"{LABELS[c]} {p:.3f}" for c, p in zip(top[:, position], probabilities[:, position])],
            dtype=object)
    return pd.DataFrame(data)


class SelectionTable(ExplorerView):
    """The selected jets, a page at a time, most signal-like (highest D) first; click a row to
    show the jet; download the whole selection."""

    page_size = param.Integer(default=12, bounds=(1, 500))
    page = param.Integer(default=1, bounds=(1, None))

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self._table = pn.widgets.Tabulator(pd.DataFrame(), show_index=False, disabled=True,
                                           selectable=1, sizing_mode="stretch_width",
                                           layout="fit_data_table", height=380,
                                           css_classes=["selection-table"])
        self._previous = pn.widgets.Button(label="‹ previous", width=90)
        self._next = pn.widgets.Button(label="next ›", width=90)
        self._page_info = pn.pane.HTML("", css_classes=["page-info"])
        self._format = pn.widgets.RadioButtonGroup(options=["CSV", "Parquet"], value="CSV",
                                                   color="primary", variant="outline")
        self._download = pn.widgets.FileDownload(callback=self._download_file,
                                                 filename="selection.csv",
                                                 label="Download selection",
                                                 color="primary", width=190)
        self._previous.on_click(lambda e: in_document_lock(lambda: self._turn(-1)))
        self._next.on_click(lambda e: in_document_lock(lambda: self._turn(+1)))
        self._format.param.watch(self._on_format, "value")
        self._table.param.watch(self._on_row, "selection")
        self._rows = np.zeros(0, dtype=np.int64)
        self.watch_explorer(self._reset, ["selection", "discriminant", "analysis"])
        self.param.watch(self.refresh, ["page", "page_size"])
        self.refresh()

    @property
    def n_pages(self) -> int:
        count = 0 if self.explorer.selection is None else len(self.explorer.selection)
        return max(1, -(-count // self.page_size))

    def _turn(self, step: int) -> None:
        self.page = int(np.clip(self.page + step, 1, self.n_pages))

    def _reset(self, *events) -> None:
        if self.page != 1:
            self.page = 1  # refreshes
        else:
            self.refresh()

    def page_rows(self) -> np.ndarray:
        order = self.explorer.selection_order()
        start = (self.page - 1) * self.page_size
        return order[start:start + self.page_size]

    def refresh(self, *events) -> None:
        explorer = self.explorer
        if not explorer.ready:
            return
        self._rows = self.page_rows()
        frame = jet_table(explorer.analysis, self._rows, explorer.discriminant)
        self._table.selection = []
        self._table.value = frame
        count = 0 if explorer.selection is None else len(explorer.selection)
        self._page_info.object = (f"<span class='selected-jets'>{count:,}</span> selected jets · "
                                  f"page {self.page} of {self.n_pages}")
        self._previous.disabled = self.page <= 1
        self._next.disabled = self.page >= self.n_pages
        self._download.disabled = count == 0

    def _on_row(self, event) -> None:
        if event.new:
            position = event.new[0]
            if position < len(self._rows):
                jet = int(self._rows[position])
                in_document_lock(lambda: setattr(self.explorer, "jet", jet))

    def _on_format(self, event) -> None:
        self._download.filename = "selection.csv" if event.new == "CSV" else "selection.parquet"

    def _download_file(self):
        explorer = self.explorer
        frame = selection_frame(explorer.analysis, explorer.selection_order(),
                                explorer.discriminant)
        buffer = io.BytesIO()
        if self._format.value == "CSV":
            frame.write_csv(buffer)
        else:
            frame.write_parquet(buffer)
        buffer.seek(0)
        return buffer

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(
            pn.Row(self._previous, self._next, self._page_info, sizing_mode="stretch_width"),
            self._table,
            pn.Row(self._format, self._download),
            sizing_mode="stretch_width", css_classes=["selection-table-view"])


class LatentView(ExplorerView):
    """The UMAP of every jet, datashaded, with box and lasso selection."""

    color_by = param.Selector(default="process", objects=list(COLOR_OPTIONS.values()))
    hover = param.Boolean(default=None, allow_None=True, doc="""
        Name the category under the cursor (one sample jet per pixel); default: on up to
        500k jets, off above (it about doubles the time to redraw).""")
    plot_height = param.Integer(default=480)

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        explorer = self.explorer
        self._pane = pn.pane.HoloViews(sizing_mode="stretch_width", min_height=self.plot_height,
                                       css_classes=["latent-plot"])
        self._info = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["latent-info"])
        self._note = pn.pane.HTML("", margin=(0, 10), sizing_mode="stretch_width")
        self.table = SelectionTable(explorer)
        self.streams: list[hv.streams.Stream] = []
        self._shape = None  # the last drawn selection (when the explorer keeps no shape)
        self._outline = ColumnDataSource(selection_outline(None))  # drawn on every plot
        if not explorer.has_latent:
            return
        self.data = latent_data(explorer.analysis)
        options = {label: value for label, value in COLOR_OPTIONS.items()
                   if self.data.available(value)}
        self._color = pn.widgets.Select(label="Colour by", options=options, value=self.color_by,
                                        width=200)
        self._color.param.watch(
            lambda event: in_document_lock(lambda: setattr(self, "color_by", event.new)),
            "value")
        if self.hover is None:
            self.hover = explorer.dataset.n_jets <= HOVER_SAMPLE_MAX_JETS
        self._hover = pn.widgets.Checkbox(label="hover names the category", value=self.hover,
                                          width=190)
        self._hover.param.watch(
            lambda event: in_document_lock(lambda: setattr(self, "hover", event.new)), "value")
        self._clear = pn.widgets.Button(label="Clear selection", width=130)
        self._clear.on_click(lambda e: in_document_lock(explorer.clear_selection))
        self.param.watch(self._build, ["color_by", "hover"])
        self.watch_explorer(self._update_info, ["selection"])
        self.watch_explorer(self._update_outline,
                           [p for p in ("selection", "selection_shape") if p in explorer.param])
        self.watch_explorer(self._on_analysis, ["analysis"])
        self._build()
        self._update_info()

    # --- the plot -------------------------------------------------------------------------
    def _points(self, discriminant=None, **_) -> hv.Points:
        explorer = self.explorer
        values = explorer.analysis.discriminant(explorer.discriminant)
        return hv.Points(self.data.continuous(values), ["x", "y"], ["D"])

    def plot(self):
        """The datashaded plot for the current colouring (a DynamicMap)."""
        if self.color_by == "D":
            points = hv.DynamicMap(self._points, streams=[
                hv.streams.Params(self.explorer, ["discriminant"])])
        else:
            points = None
        self._update_outline()
        box, lasso = hv.streams.BoundsXY(), hv.streams.Lasso()
        box.add_subscriber(self._on_box)
        lasso.add_subscriber(self._on_lasso)
        self.streams = [box, lasso]
        return latent_plot(self.data, self.color_by, points, height=self.plot_height,
                           hover=self.hover, outline=self._outline, streams=self.streams)

    def _build(self, *events) -> None:
        for stream in self.streams:
            stream.clear()
            stream.source = None
        plot = self.plot()  # with new selection streams
        self._pane.object = plot
        note = (f" The {TOP_CLASSES_SHOWN} most frequent most-probable classes are coloured; "
                "the rest are 'other'." if self.color_by == "top" else "")
        description = self.explorer.analysis.sample_description()  # a sample, on a cluster
        shown = html.escape(description[:1].upper() + description[1:])
        self._note.object = f"<small>{shown}, datashaded.{note}</small>"

    def _on_analysis(self, event) -> None:
        if self.explorer.has_latent:
            self.data = latent_data(self.explorer.analysis)
            self._build()

    # --- selection ------------------------------------------------------------------------
    def selection_shape(self):
        """What the live selection is: ``("box", bounds)``, ``("lasso", vertices)`` or None."""
        explorer = self.explorer
        if explorer.selection is None:
            return None
        if "selection_shape" in explorer.param and explorer.selection_shape is not None:
            return explorer.selection_shape
        return self._shape

    def _update_outline(self, *events) -> None:
        self._outline.data = selection_outline(self.selection_shape())
        push_to_notebook(self._pane)

    def _on_box(self, bounds=None, **_) -> None:
        if bounds is None:
            return
        bounds = tuple(float(b) for b in bounds)

        def select() -> None:
            self._shape = ("box", bounds)
            self.explorer.select_box(bounds)

        in_document_lock(select)

    def _on_lasso(self, geometry=None, **_) -> None:
        if geometry is None or len(geometry) < 3:
            return
        vertices = np.asarray(geometry, dtype=np.float64)

        def select() -> None:
            self._shape = ("lasso", tuple(map(tuple, vertices)))
            self.explorer.select_polygon(vertices)

        in_document_lock(select)

    def _update_info(self, *events) -> None:
        explorer = self.explorer
        if explorer.selection is None:
            self._info.object = ("<div class='latent-help'>Drag a box (or switch to the lasso in "
                                 "the toolbar) to select jets: their spectrum is overlaid in the "
                                 "spectrum view.</div>")
            return
        self._info.object = (f"<div class='latent-selection'><b><span class='latent-selected'>"
                             f"{len(explorer.selection):,}</span> jets selected</b> "
                             f"(<span class='latent-bounds'>"
                             f"{html.escape(explorer.selection_label)}</span>)</div>")

    def __panel__(self):
        explorer = self.explorer
        if not explorer.ready:
            return problem_message(explorer)
        if not explorer.has_latent:
            return message("This dataset has no latent-space coordinates (columns `umap_x`, "
                           "`umap_y`). Compute them with `sophon embed` and reopen it.", "warning",
                           css_classes=["no-latent"])
        return pn.Column(
            pn.Row(self._color, pn.Column(self._clear, self._hover), self._info,
                   sizing_mode="stretch_width"),
            self._note,
            self._pane,
            pn.pane.Markdown("**Selected jets** (most signal-like first; click a row for the "
                             "jet detail)", margin=(0, 10)),
            self.table,
            sizing_mode="stretch_width", css_classes=["latent-view"])


def warm_up_latent(analysis: DatasetAnalysis) -> None:
    """Build the shared latent frames and run the datashader operations once on the whole
    dataset (compiling their kernels), so the first session's latent plot renders at full speed.
    Pure computation: no Panel or bokeh objects, so it is safe in a background thread."""
    if not (analysis.dataset.has("umap_x") and analysis.dataset.has("umap_y")):
        return
    data = latent_data(analysis)
    frame, _ = data.categorical("process")
    _shade(hv.Points(frame, ["x", "y"], ["process"]), "process", data, dynamic=False,
           hover=analysis.dataset.n_jets <= HOVER_SAMPLE_MAX_JETS)
    values = np.zeros(len(data.x), dtype=np.float32)
    _shade(hv.Points(data.continuous(values), ["x", "y"], ["D"]), "D", data, dynamic=False)
