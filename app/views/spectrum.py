"""Jet mSD spectra versus efficiency (the paper's Fig. 3), the per-process stack, the yield.

The curves are the spectra of the jets passing the discriminant cut at each efficiency from 1 to
1e-4 (log-spaced), colour-graded from the loosest to the tightest cut; the chosen efficiency is
drawn thicker. Everything is a slice of the session's one :class:`~sophon.spectrum.EfficiencyScan`:
the efficiency slider and player only re-slice it.

What a physicist takes away, each file named ``<discriminant>_eff<efficiency>_<dataset>``:

- the plots' save tools write ``..._spectra.png`` and ``..._stack.png`` (or ``.svg``);
- **Export histograms** (ROOT, npz or JSON; :func:`sophon.histograms.write_histograms`): the
  stack at the chosen efficiency (one histogram per process, and their ``total``) and the
  spectrum at every efficiency (``total_level_0`` ...), in events at the chosen luminosity
  (whether the page shows them normalised or not), with the discriminant, dataset, luminosity
  and what the efficiency counts in the file's metadata;
- **Publication figure** (PDF, PNG or SVG; :func:`sophon.figures.spectrum_figure`): both plots as
  drawn here (luminosity, normalised or not, log or linear) in the mplhep style.
"""

from __future__ import annotations

import html
import io
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import panel as pn
import param

from sophon import __version__ as SOPHON_VERSION
from sophon.discriminant import cut_on_d
from sophon.extras import MissingExtraError, require_all
from sophon.figures import save_figure, spectrum_figure
from sophon.histograms import write_histograms
from sophon.spectrum import EfficiencyScan

from app.explorer import EFFICIENCIES, Explorer
from app.plots import (CurvesPlot, StackPlot, efficiency_label, format_number, plot_row,
                       set_save_name)
from app.views.base import (ExplorerView, file_name_part, message, message_html,
                            problem_message, push_to_notebook, text_message)
from app.views.composer import in_document_lock

__all__ = ["SpectrumView", "ScanView", "curve_values", "stack_values", "efficiency_widgets",
           "scan_summary", "efficiency_reference", "written_bytes", "LOW_STATISTICS",
           "HISTOGRAM_FORMATS", "FIGURE_FORMATS"]

log = logging.getLogger("sophon.app")

#: Below this effective number of jets a spectrum is a handful of weighted jets: say so.
LOW_STATISTICS = 25.0
#: The histogram export's formats: button -> file suffix (sophon.histograms.FORMATS).
HISTOGRAM_FORMATS = {"ROOT": ".root", "npz": ".npz", "JSON": ".json"}
#: The publication figure's formats: button -> file suffix (sophon.figures.FIGURE_FORMATS).
FIGURE_FORMATS = {"PDF": ".pdf", "PNG": ".png", "SVG": ".svg"}
# What an export needs beyond the core: (extra, modules it cannot do without, what it is).
_ROOT_NEEDS = ("root", ("uproot",), "writing ROOT histogram files")
_FIGURE_NEEDS = ("figures", ("matplotlib",), "drawing publication figures")


class ToggleGroup(pn.widgets.RadioButtonGroup):
    """A button group whose chosen button is filled."""

    color = param.Selector(default="primary")
    variant = param.Selector(default="outline")


def efficiency_widgets(explorer: Explorer) -> tuple[pn.widgets.DiscreteSlider,
                                                    pn.widgets.DiscretePlayer]:
    """A slider and a player over the scan's efficiencies, both bound to ``explorer.efficiency``."""
    options = {efficiency_label(e): e for e in EFFICIENCIES}
    slider = pn.widgets.DiscreteSlider.from_param(explorer.param.efficiency, name="Efficiency",
                                                  options=options,
                                                  sizing_mode="stretch_width",
                                                  css_classes=["efficiency-slider"])
    player = pn.widgets.DiscretePlayer.from_param(
        explorer.param.efficiency, name="Play over efficiency", options=list(EFFICIENCIES),
        interval=800, show_value=False, loop_policy="once", width=300, show_loop_controls=False,
        visible_buttons=["slower", "previous", "pause", "play", "next", "faster"])
    return slider, player


def _shown(values: np.ndarray, normalise: bool, scale: float) -> np.ndarray:
    """Events at the chosen luminosity (``scale`` = chosen / dataset luminosity), or unit area."""
    values = values.astype(np.float64)
    if normalise:
        total = values.sum()
        return values / total if total > 0 else np.zeros_like(values)
    return values * scale


def curve_values(scan: EfficiencyScan, level: int, *, normalise: bool = False,
                 scale: float = 1.0) -> np.ndarray:
    """(bins,) what the curve at ``level`` shows."""
    return _shown(scan.spectrum(level), normalise, scale)


def stack_values(scan: EfficiencyScan, level: int, *, normalise: bool = False,
                 scale: float = 1.0) -> np.ndarray:
    """(processes, bins) the per-process stack at ``level``, normalised to unit total area."""
    return _shown(scan.stack(level), normalise, scale)


def stack_errors(scan: EfficiencyScan, level: int, *, normalise: bool = False,
                 scale: float = 1.0) -> np.ndarray:
    """(bins,) the MC statistical error sqrt(sum w^2) of the stack's total, in its units."""
    errors = np.sqrt(scan.spectrum_variance(level))
    if normalise:
        total = scan.spectrum(level).sum()
        return errors / total if total > 0 else np.zeros_like(errors)
    return errors * scale


def efficiency_reference(explorer: Explorer) -> str:
    """What the efficiency counts, in words: ``all jets`` or ``QCD jets``, of each event's leading
    jet only (``all leading jets``, ``leading QCD jets``) when the spectra are of leading jets."""
    if explorer.jets == "leading":
        return "leading QCD jets" if explorer.reference == "QCD" else "all leading jets"
    return "QCD jets" if explorer.reference == "QCD" else "all jets"


def written_bytes(file_name: str, write: Callable[[Path], object]) -> bytes:
    """The bytes of the file that ``write(path)`` writes at ``path``, named ``file_name``, in a
    new temporary folder removed afterwards: a library writer (atomic) made into a download."""
    with tempfile.TemporaryDirectory(prefix="sophon-download-") as folder:
        path = Path(folder) / file_name
        write(path)
        return path.read_bytes()


def _missing(needs: tuple[str, tuple[str, ...], str]) -> str:
    """Why an export cannot be made here ('' when it can): the modules it needs and the pip
    command that installs them."""
    extra, modules, purpose = needs
    try:
        require_all(extra, purpose, modules)
    except MissingExtraError as error:
        return str(error)
    return ""


def y_label(explorer: Explorer) -> str:
    if explorer.normalise:
        return "fraction / bin"
    if explorer.weighted and explorer.luminosity:
        return f"events / bin ({explorer.luminosity:g} fb⁻¹)"
    return "jets / bin"


def achieved_html(scan: EfficiencyScan, level: int) -> str:
    """HTML: ' (achieved 0.0102)', the efficiency the cut at ``level`` really passes (to three
    digits, so that it differs from the requested one where the cut does); '' when unknown."""
    achieved = float(scan.achieved_efficiencies[level])
    if not np.isfinite(achieved):
        return ""
    return f" (achieved <span class='achieved-efficiency'>{achieved:.3g}</span>)"


def scan_summary(explorer: Explorer, scan: EfficiencyScan | None, *, unit: str = "jets",
                 reference: str | None = None, event_level: bool = False) -> str:
    """HTML: the chosen efficiency, its cut, the selected count and the weighted yield."""
    if scan is None:
        return ""
    level = min(explorer.level, scan.n_levels - 1)
    threshold = float(scan.thresholds[level])
    count = scan.selected_jets(level)
    weighted = scan.selected_yield(level) * explorer.scale
    if reference is None:
        reference = "QCD jets" if explorer.reference == "QCD" else "all jets"
    luminosity = (f" at {explorer.luminosity:g} fb⁻¹"
                  if explorer.weighted and explorer.luminosity else "")
    if event_level:
        cut = f"D<sub>j1</sub> + D<sub>j2</sub> ≥ {threshold:.4g}"
    else:
        cut = f"ln(g<sub>A</sub>/g<sub>B</sub>) ≥ {threshold:.3g} (D ≥ {cut_on_d(threshold):.4g})"
    per_process = " · ".join(
        f"{html.escape(name)} {format_number(value * explorer.scale)}"
        for name, value in zip(scan.process_names, scan.sum_of_weights[level].sum(axis=1)))
    effective = scan.effective_jets(level)
    achieved_text = achieved_html(scan, level)
    warning = ""
    if count and effective < LOW_STATISTICS:
        warning = (f"<div class='low-statistics-warning' style='color:#a94400'>⚠ Few simulated "
                   f"{unit}: this selection carries the statistics of only {effective:.1f} "
                   f"equal-weight {unit} (the heaviest one is "
                   f"{100 * scan.largest_weight_share(level):.0f} % of the yield); its shape is "
                   f"mostly noise. Loosen the cut or switch on the MC errors.</div>")
    return (f"<div class='scan-summary'>"
            f"<b>ε = {efficiency_label(scan.efficiencies[level])}</b>{achieved_text} of "
            f"{reference} · cut {cut}<br>"
            f"<b>Selected {unit}: <span class='selected-count'>{count:,}</span></b> "
            f"(effective <span class='effective-count'>{effective:,.1f}</span>) · "
            f"<b>weighted yield: <span class='selected-yield'>{format_number(weighted)}</span>"
            f"</b> events{luminosity}<br>"
            f"<span style='font-size:0.85em;color:#555'>per process: {per_process}</span>"
            f"{warning}</div>")


class ScanView(ExplorerView):
    """Curves at every efficiency + the stack at the chosen one, for one scan of the explorer
    (the jet scan here, the event scan in :class:`~app.views.events.EventView`)."""

    export_format = param.Selector(default="PNG", objects=["PNG", "SVG"],
                                   doc="What the plots' save tool writes.")
    plot_height = param.Integer(default=330)

    scan_name = "scan"
    overlay_name: str | None = "selection_scan"
    xlabel = "jet mSD [GeV]"
    curves_title = "Jet mSD at each efficiency"
    stack_title = "Per-process stack at the chosen efficiency"
    show_window = True
    #: what the save tools' files are called after :meth:`export_stem`: (curves, stack)
    save_names = ("spectra", "stack")

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self._curves_pane = pn.pane.Bokeh(sizing_mode="stretch_width")
        self._stack_pane = pn.pane.Bokeh(sizing_mode="stretch_width")
        self.curves_plot: CurvesPlot | None = None
        self.stack_plot: StackPlot | None = None
        self._stats = pn.pane.HTML("", sizing_mode="stretch_width",
                                   css_classes=[f"{self.scan_name}-stats"])
        self._error = message("", "danger", visible=False)
        # a scan on a Dask cluster runs in the background: say so while it does (as text)
        self._computing_text = pn.pane.Str("", css_classes=["computing-text"])
        self._computing = pn.Row(pn.indicators.LoadingSpinner(value=True, size=20,
                                                              margin=(5, 10)),
                                 self._computing_text, visible=False,
                                 css_classes=[f"{self.scan_name}-computing"])
        self.watch_explorer(self._show_computing, ["computing"])
        self._show_computing()
        if self.explorer.ready:
            self._build_figures()
            watched = [self.scan_name, "efficiency", "normalise", "luminosity", "window", "error",
                       "show_errors"]
            if self.overlay_name:
                watched.append(self.overlay_name)
            self.watch_explorer(self.refresh, watched)
            self.watch_explorer(self._build_figures, ["analysis"])
            self.watch_explorer(self._on_log_y, ["log_y"])
            self.param.watch(self._on_format, ["export_format"])

    def _build_figures(self, *events) -> None:
        """New figures: at start, or for a new dataset."""
        explorer = self.explorer
        if not explorer.ready:
            return
        labels = [f"ε = {efficiency_label(e)}" for e in EFFICIENCIES]
        self.curves_plot = CurvesPlot(labels, title=self.curves_title, xlabel=self.xlabel,
                                      ylabel=y_label(explorer), log_y=explorer.log_y,
                                      export_format=self.export_format, height=self.plot_height,
                                      overlay_label=("latent selection" if self.overlay_name
                                                     else None))
        self.stack_plot = StackPlot(explorer.dataset.process_names, title=self.stack_title,
                                    xlabel=self.xlabel, ylabel=y_label(explorer),
                                    log_y=explorer.log_y, export_format=self.export_format,
                                    height=self.plot_height)
        self.refresh()
        self._curves_pane.object = self.curves_plot.figure
        self._stack_pane.object = self.stack_plot.figure

    def _show_computing(self, *events) -> None:
        self._computing_text.object = self.explorer.computing
        self._computing.visible = bool(self.explorer.computing)

    def _on_log_y(self, event) -> None:
        """Switch the axes in place and redraw (zeros are gaps on a log axis)."""
        for plot in (self.curves_plot, self.stack_plot):
            if plot is not None:
                plot.set_log_y(event.new)
        self.refresh()

    def _on_format(self, event) -> None:
        """Bokeh fixes a figure's output backend when it is drawn: new figures in the format."""
        self._build_figures()

    @property
    def current_scan(self) -> EfficiencyScan | None:
        return getattr(self.explorer, self.scan_name)

    def export_stem(self) -> str:
        """The name of what is shown, for files: ``<discriminant>_eff<efficiency>_<dataset>``
        (names made safe by :func:`~app.views.base.file_name_part`), e.g.
        ``A1_X_cs_eff1e-3_default``."""
        explorer = self.explorer
        return (f"{file_name_part(explorer.discriminant.name, 'discriminant')}"
                f"_eff{efficiency_label(EFFICIENCIES[explorer.level])}"
                f"_{file_name_part(explorer.dataset.path.stem, 'dataset')}")

    def curves(self) -> np.ndarray:
        """(levels, bins) what the curves show now."""
        explorer, scan = self.explorer, self.current_scan
        return np.array([curve_values(scan, level, normalise=explorer.normalise,
                                      scale=explorer.scale) for level in range(scan.n_levels)])

    def refresh(self, *events) -> None:
        """Re-slice the current scan into the figures and the summary (no jet is touched)."""
        explorer, scan = self.explorer, self.current_scan
        self._error.object = html.escape(explorer.error)
        self._error.visible = bool(explorer.error)
        if scan is None or self.curves_plot is None:
            self._stats.object = ""
            return
        level = min(explorer.level, scan.n_levels - 1)
        overlay_scan = getattr(explorer, self.overlay_name) if self.overlay_name else None
        overlay = (None if overlay_scan is None else
                   curve_values(overlay_scan, level, normalise=explorer.normalise,
                                scale=explorer.scale))
        ylabel = y_label(explorer)
        self.curves_plot.update(scan.binning.edges, self.curves(), level, overlay, ylabel)
        errors = (stack_errors(scan, level, normalise=explorer.normalise, scale=explorer.scale)
                  if explorer.show_errors else None)
        self.stack_plot.update(scan.binning.edges,
                               stack_values(scan, level, normalise=explorer.normalise,
                                            scale=explorer.scale),
                               explorer.window if self.show_window else None, ylabel, errors)
        stem = self.export_stem()
        set_save_name(self.curves_plot.figure, f"{stem}_{self.save_names[0]}")
        set_save_name(self.stack_plot.figure, f"{stem}_{self.save_names[1]}")
        self._stats.object = self.summary()
        push_to_notebook(self._curves_pane, self._stack_pane)

    def summary(self) -> str:
        explorer = self.explorer
        text = scan_summary(explorer, explorer.scan)
        if explorer.selection is not None and explorer.selection_scan is not None \
                and explorer.scan is not None:
            level = min(explorer.level, explorer.scan.n_levels - 1)
            selected = explorer.selection_scan
            # the selection is cut with the whole dataset's thresholds: its efficiency is theirs
            text += (f"<div class='selection-summary'>Latent selection "
                     f"({html.escape(explorer.selection_label)}): "
                     f"<b><span class='selection-count'>{len(explorer.selection):,}</span></b> "
                     f"jets; passing the cut at <span class='selection-efficiency'>ε = "
                     f"{efficiency_label(explorer.scan.efficiencies[level])}"
                     f"{achieved_html(explorer.scan, level)}</span>: "
                     f"<b><span class='selection-passing'>{selected.selected_jets(level):,}"
                     f"</span></b> "
                     f"(yield {format_number(selected.selected_yield(level) * explorer.scale)})"
                     "</div>")
        return text

    def controls(self) -> pn.viewable.Viewable:
        return pn.Row()

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(self.controls(), self._computing, self._stats, self._error,
                         plot_row(self._curves_pane, self._stack_pane),
                         sizing_mode="stretch_width", css_classes=[f"{self.scan_name}-view"])


class SpectrumView(ScanView):
    """Jet mSD spectrum versus efficiency, the per-process stack and the selected yield.

    Controls: efficiency slider and player; absolute (events at the luminosity) or normalised;
    log or linear; efficiency counted over all jets or over QCD jets; the save tool's format;
    the histogram export (:meth:`histogram_file`) and the publication figure
    (:meth:`figure_file`), each in the format chosen beside its button.
    """

    histogram_format = param.Selector(default="ROOT", objects=list(HISTOGRAM_FORMATS),
                                      doc="What 'Export histograms' writes.")
    figure_format = param.Selector(default="PDF", objects=list(FIGURE_FORMATS),
                                   doc="What 'Publication figure' writes.")

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        explorer = self.explorer
        self._histogram_buttons = ToggleGroup.from_param(self.param.histogram_format, name="",
                                                         css_classes=["histogram-format"])
        self._histogram_download = pn.widgets.FileDownload(
            callback=self._histogram_download_file, filename="histograms.root",
            label="Export histograms", color="primary", width=160,
            css_classes=["histogram-download"])
        self._figure_buttons = ToggleGroup.from_param(self.param.figure_format, name="",
                                                      css_classes=["figure-format"])
        self._figure_download = pn.widgets.FileDownload(
            callback=self._figure_download_file, filename="figure.pdf",
            label="Publication figure", color="primary", width=160,
            css_classes=["figure-download"])
        self._export_error = text_message("", "danger", visible=False,
                                          css_classes=["export-error"])
        self.param.watch(self._check_exports, ["histogram_format"])
        self.watch_explorer(self._check_exports, ["scan"])
        self._check_exports()
        self._slider, self._player = efficiency_widgets(explorer)
        self._mode = ToggleGroup.from_param(explorer.param.normalise, name="",
                                            options={"absolute": False, "normalised": True})
        self._yscale = ToggleGroup.from_param(explorer.param.log_y, name="",
                                              options={"log": True, "linear": False})
        self._reference = ToggleGroup.from_param(
            explorer.param.reference, name="",
            options={"ε over all jets": "all", "ε over QCD jets": "QCD"})
        # not bound to the parameter: a typed value is checked first (luminosity_problem), and
        # a refused one gives a message and the field shows the last valid one again
        self._luminosity = pn.widgets.FloatInput(
            label="Luminosity (fb⁻¹)", value=explorer.luminosity, step=10, width=130,
            disabled=not explorer.weighted, css_classes=["luminosity"])
        self._luminosity_error = text_message("", "danger", visible=False,
                                              css_classes=["luminosity-error"])
        self._luminosity.param.watch(self._on_luminosity_input, "value")
        self.watch_explorer(self._show_luminosity, "luminosity")
        self._format = ToggleGroup.from_param(self.param.export_format, name="",
                                              options=["PNG", "SVG"], css_classes=["save-format"])
        self._jets = ToggleGroup.from_param(
            explorer.param.jets, name="", options={"all jets": "all", "leading jet": "leading"},
            disabled=not (explorer.ready and explorer.dataset.has("jet_rank")))
        self._errors = pn.widgets.Checkbox.from_param(explorer.param.show_errors,
                                                      name="MC errors", css_classes=["mc-errors"])

    def _on_luminosity_input(self, event) -> None:
        value = event.new
        in_document_lock(lambda: self.apply_luminosity(value))

    def apply_luminosity(self, value) -> bool:
        """Make ``value`` (as typed: a number, or None for an empty field) the luminosity, or say
        why it is refused and show the last valid one again."""
        explorer = self.explorer
        if value is not None and explorer.luminosity is not None and \
                value == explorer.luminosity:
            return True  # the field shows the luminosity (again)
        problem = explorer.luminosity_problem(value)
        if problem:
            kept = ("" if explorer.luminosity is None else
                    f"; it stays {explorer.luminosity:g} fb⁻¹")
            self._luminosity_error.object = message_html(
                f"Luminosity not applied: {problem} (expected a positive number of fb⁻¹ up to "
                f"{explorer.max_luminosity:,.0f}){kept}.", "luminosity-error-text")
            self._luminosity_error.visible = True
            self._luminosity.value = explorer.luminosity
            return False
        self._luminosity_error.visible = False
        explorer.luminosity = float(value)
        return True

    def _show_luminosity(self, event) -> None:
        if self._luminosity.value != event.new:
            self._luminosity.value = event.new

    # --- exports ------------------------------------------------------------------------------
    def export_scan(self) -> EfficiencyScan:
        """The session's jet scan in events at the chosen luminosity (the dataset's weights
        times :attr:`~app.explorer.Explorer.scale`)."""
        return self.explorer.scan.scaled(self.explorer.scale)

    def export_metadata(self) -> dict:
        """What the exported histograms were made from, for their files' metadata: the
        discriminant (name and definition), the dataset's file name, the luminosity (fb^-1;
        None for an unweighted dataset), what the efficiency counts, all or leading jets."""
        explorer = self.explorer
        return {"discriminant": explorer.discriminant.name,
                "discriminant_definition": explorer.discriminant.to_dict(),
                "dataset": explorer.dataset.path.name,
                "luminosity_fb": explorer.luminosity if explorer.weighted else None,
                "efficiency_reference": efficiency_reference(explorer),
                "jets": explorer.jets, "sophon_version": SOPHON_VERSION}

    def histogram_file(self, histogram_format: str | None = None) -> tuple[str, bytes]:
        """(file name, contents) of the histograms shown, in ``histogram_format`` (one of
        :data:`HISTOGRAM_FORMATS`; default: the chosen one): the stack at the chosen efficiency
        and the spectrum at every efficiency (:func:`sophon.histograms.write_histograms` with
        ``every_level``), in events at the chosen luminosity."""
        suffix = HISTOGRAM_FORMATS[histogram_format or self.histogram_format]
        name = f"{self.export_stem()}{suffix}"
        scan, level, metadata = self.export_scan(), self.explorer.level, self.export_metadata()
        return name, written_bytes(name, lambda path: write_histograms(
            scan, level, path, metadata=metadata, every_level=True))

    def figure_file(self, figure_format: str | None = None) -> tuple[str, bytes]:
        """(file name, contents) of the publication figure of what is shown
        (:func:`sophon.figures.spectrum_figure`: the spectrum at every efficiency and the stack
        at the chosen one, at the chosen luminosity, normalised or not, log or linear), in
        ``figure_format`` (one of :data:`FIGURE_FORMATS`; default: the chosen one)."""
        explorer = self.explorer
        suffix = FIGURE_FORMATS[figure_format or self.figure_format]
        name = f"{self.export_stem()}{suffix}"
        figure = spectrum_figure(
            self.export_scan(), explorer.level, discriminant=explorer.discriminant,
            luminosity_fb=explorer.luminosity if explorer.weighted else None,
            reference=efficiency_reference(explorer), normalise=explorer.normalise,
            log=explorer.log_y)
        title = (f"{explorer.discriminant.name}: jet mass spectra versus efficiency and the "
                 f"stack at efficiency {efficiency_label(EFFICIENCIES[explorer.level])} of "
                 f"{efficiency_reference(explorer)}, {explorer.dataset.path.name}")
        return name, written_bytes(name, lambda path: save_figure(figure, path, title=title))

    def _download(self, make: Callable[[], tuple[str, bytes]],
                  button: pn.widgets.FileDownload) -> io.BytesIO:
        """A FileDownload callback: the file ``make`` gives, named on ``button`` before Panel
        reads the name (the same click downloads it, under the name of what is shown now)."""
        try:
            name, data = make()
        except (MissingExtraError, OSError, ValueError) as error:
            log.exception("export from the spectrum view failed")
            self._export_error.object = message_html(f"Export failed: {error}",
                                                     "export-error-text")
            self._export_error.visible = True
            raise
        self._export_error.visible = False
        button.filename = name
        return io.BytesIO(data)

    def _histogram_download_file(self) -> io.BytesIO:
        return self._download(self.histogram_file, self._histogram_download)

    def _figure_download_file(self) -> io.BytesIO:
        return self._download(self.figure_file, self._figure_download)

    def _check_exports(self, *events) -> None:
        """Offer only the exports that can be made: a scan to export, and the extras they need
        (ROOT files: uproot; figures: matplotlib), else say what to install."""
        no_scan = self.explorer.scan is None
        histogram_problem = _missing(_ROOT_NEEDS) if self.histogram_format == "ROOT" else ""
        figure_problem = _missing(_FIGURE_NEEDS)
        self._histogram_download.disabled = no_scan or bool(histogram_problem)
        self._figure_download.disabled = no_scan or bool(figure_problem)
        problems = "\n".join(p for p in (histogram_problem, figure_problem) if p)
        self._export_error.object = message_html(problems, "export-error-text")
        self._export_error.visible = bool(problems)

    def exports(self) -> pn.viewable.Viewable:
        """The export buttons, each with its format."""
        return pn.Column(pn.FlexBox(
            pn.Column(pn.pane.HTML("<small>histograms (stack and every efficiency)</small>",
                                   margin=(0, 5)),
                      pn.Row(self._histogram_buttons, self._histogram_download)),
            pn.Column(pn.pane.HTML("<small>publication figure (mplhep style)</small>",
                                   margin=(0, 5)),
                      pn.Row(self._figure_buttons, self._figure_download)),
            sizing_mode="stretch_width"), self._export_error,
            sizing_mode="stretch_width", css_classes=["spectrum-exports"])

    def __panel__(self):
        view = super().__panel__()
        if self.explorer.ready:
            view.append(self.exports())
        return view

    def controls(self):
        return pn.Column(pn.FlexBox(  # wraps on a narrow screen
            pn.Column(self._slider, self._player, width=330),
            pn.Column(pn.Row(self._mode, self._yscale), self._reference),
            pn.Column(self._jets, self._errors),
            self._luminosity,
            pn.Column(pn.pane.HTML("<small>save tool writes</small>", margin=(0, 5)),
                      self._format),
            sizing_mode="stretch_width"), self._luminosity_error, sizing_mode="stretch_width")
