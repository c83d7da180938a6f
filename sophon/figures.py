"""Publication figures of an efficiency scan: the mass spectrum at every efficiency and the stack by
process at one, in the mplhep style, saved as PDF, PNG or SVG.

:func:`spectrum_figure` draws a ``matplotlib.figure.Figure`` (no pyplot, so no global state: safe
in a server thread) with two panels:

- left: the weighted mass spectrum (GeV) at every efficiency of the scan, coloured from loose to
  tight, the chosen level drawn thick, with its simulation-statistics band (sqrt(sum w^2));
- right: the stack by process at the chosen level, with the same band on the total.

Both carry the label "Simulation" with the luminosity (fb^-1) and centre-of-mass energy, and the
discriminant's formula (LaTeX, drawn with matplotlib's mathtext). The style is mplhep's ``ROOT``
style when mplhep is installed, else an mplhep-like plain matplotlib style (inward ticks on all
sides, minor ticks, the label drawn the same way). :func:`save_figure` writes a figure atomically
in the format of the file's suffix; :func:`save_spectrum_figure` draws and saves in one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sophon import atomic
from sophon.spectrum import EfficiencyScan

__all__ = ["FIGURE_FORMATS", "DEFAULT_FIGSIZE", "spectrum_figure", "roc_figure",
           "learning_curves_figure", "save_figure", "save_spectrum_figure"]

FIGURE_FORMATS = (".pdf", ".png", ".svg")
# inches: 12 x 5.5 at the default 150 dpi is a 1800 x 825 pixel PNG
DEFAULT_FIGSIZE = (12.0, 5.5)
DEFAULT_DPI = 150

_PANEL_SIZES = {"font.size": 13, "axes.labelsize": 17, "axes.titlesize": 15,
                "xtick.labelsize": 15, "ytick.labelsize": 15, "legend.fontsize": 11}
# An mplhep-like style for a machine without mplhep.
_PLAIN_STYLE = {
    **_PANEL_SIZES,
    "legend.frameon": False, "xtick.direction": "in", "ytick.direction": "in",
    "xtick.top": True, "ytick.right": True, "xtick.minor.visible": True,
    "ytick.minor.visible": True, "xtick.major.size": 8, "ytick.major.size": 8,
    "xtick.minor.size": 4, "ytick.minor.size": 4, "axes.linewidth": 1.2,
    "axes.labelpad": 6, "mathtext.fontset": "dejavusans",
}


def _matplotlib():
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        from sophon.extras import MissingExtraError

        raise MissingExtraError("publication figures (sophon.figures)", "figures",
                                ("matplotlib",)) from None
    return matplotlib


def _mplhep():
    try:
        import mplhep
    except ModuleNotFoundError:
        return None
    return mplhep


@contextmanager
def _style():
    matplotlib = _matplotlib()
    import matplotlib.style

    mplhep = _mplhep()
    # mplhep's sizes are made for one panel per figure; two side by side need smaller text
    style = [mplhep.style.ROOT, _PANEL_SIZES] if mplhep is not None else [_PLAIN_STYLE]
    with matplotlib.style.context(style):
        yield mplhep


def _label(ax, mplhep, luminosity_fb: float | None, energy_tev: float) -> None:
    """"Simulation" at the top left, luminosity and energy at the top right, above the axes."""
    lumi = None if luminosity_fb is None else f"{luminosity_fb:g}"
    if mplhep is not None:
        # data=False is what writes "Simulation" after the name
        mplhep.label.exp_label(exp="Sophon", data=False, lumi=lumi, com=f"{energy_tev:g}",
                               loc=0, ax=ax, fontsize=14)
        return
    ax.text(0.0, 1.01, r"$\bf{Sophon}$ $\it{Simulation}$", transform=ax.transAxes,
            ha="left", va="bottom", fontsize=13)
    right = f"({energy_tev:g} TeV)" if lumi is None else f"{lumi} fb$^{{-1}}$ ({energy_tev:g} TeV)"
    ax.text(1.0, 1.01, right, transform=ax.transAxes, ha="right", va="bottom", fontsize=12)


def _literal(text: str) -> str:
    """``text`` (a discriminant's or a process's name) drawn as it is: every ``$`` escaped, so
    that matplotlib never reads a part of it as mathtext (which could fail to parse)."""
    return str(text).replace("$", r"\$")


def _efficiency_text(efficiency: float) -> str:
    exponent = np.log10(efficiency)
    if abs(exponent - round(exponent)) < 1e-9:
        return "1" if round(exponent) == 0 else f"$10^{{{int(round(exponent))}}}$"
    return f"$10^{{{exponent:.1f}}}$"


def _band(ax, edges: np.ndarray, values: np.ndarray, variances: np.ndarray, **style) -> None:
    error = np.sqrt(variances)
    ax.stairs(values + error, edges, baseline=values - error, fill=True, alpha=0.3,
              linewidth=0, **style)


def _positive_floor(arrays: Sequence[np.ndarray]) -> float:
    positive = np.concatenate([a[a > 0] for a in arrays] + [np.array([np.inf])])
    return float(positive.min()) * 0.5 if np.isfinite(positive.min()) else 1e-3


def spectrum_figure(scan: EfficiencyScan, level: int, *, discriminant=None,
                    formula: str | None = None, luminosity_fb: float | None = None,
                    reference: str = "all jets", normalise: bool = False, log: bool = True,
                    rebin: int = 1, energy_tev: float = 13.0,
                    figsize: tuple[float, float] = DEFAULT_FIGSIZE):
    """The spectrum-versus-efficiency and the stack at ``level`` of ``scan`` as a matplotlib
    ``Figure`` (two axes, left and right).

    ``discriminant`` (a :class:`~sophon.discriminant.Discriminant`) gives the formula and name
    drawn on the figure; ``formula`` (LaTeX without ``$``) overrides it. ``luminosity_fb``
    (fb^-1) goes into the label; the scan's weights are taken as expected events at it, so the
    y axis reads "events / bin" (``normalise``: each spectrum divided by its own sum, "fraction
    / bin"). ``reference`` names what the efficiency counts ("all jets", "QCD jets").
    ``rebin`` merges that many adjacent mass bins (it must divide the scan's bin count).
    ``figsize`` in inches.
    """
    if not 0 <= level < scan.n_levels:
        raise ValueError(f"level {level} is outside the scan's 0..{scan.n_levels - 1}")
    if rebin < 1 or scan.binning.bins % rebin:
        raise ValueError(f"rebin {rebin} does not divide the scan's {scan.binning.bins} bins")
    if formula is None and discriminant is not None:
        formula = discriminant.latex()
    bins = scan.binning.bins // rebin
    edges = np.linspace(scan.binning.low, scan.binning.high, bins + 1)
    width = (scan.binning.high - scan.binning.low) / bins

    def merged(values: np.ndarray) -> np.ndarray:  # (..., scan bins) -> (..., bins)
        return values.reshape(*values.shape[:-1], bins, rebin).sum(axis=-1)

    spectra = merged(scan.spectra())
    variances = merged(scan.sum_of_weights_squared.sum(axis=1)[:, 1:-1])
    if normalise:
        totals = spectra.sum(axis=1, keepdims=True)
        scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        spectra, variances = spectra * scale, variances * scale ** 2
    unit = "fraction" if normalise else ("events" if luminosity_fb is not None else
                                         "sum of weights")
    y_label = f"{unit} / {width:g} GeV"

    with _style() as mplhep:
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        figure = Figure(figsize=figsize, layout="constrained")
        left, right = figure.subplots(1, 2)
        colours = colormaps["viridis"](np.linspace(0.0, 0.9, scan.n_levels))
        for index in range(scan.n_levels):
            chosen = index == level
            left.stairs(spectra[index], edges, color="black" if chosen else colours[index],
                        linewidth=2.6 if chosen else 1.3, zorder=3 if chosen else 2,
                        label=rf"$\varepsilon$ = {_efficiency_text(scan.efficiencies[index])}")
        _band(left, edges, spectra[level], variances[level], color="black", zorder=1)
        left.set_xlabel(scan.mass_label)
        left.set_ylabel(y_label)
        left.legend(loc="upper right", ncol=1, title=f"efficiency of {reference}",
                    title_fontsize=10, fontsize=9)

        stack = merged(scan.stack(level).astype(np.float64))
        stack_variance = merged(scan.sum_of_weights_squared[level][:, 1:-1].sum(axis=0))
        if normalise:
            total = stack.sum()
            factor = 1.0 / total if total > 0 else 0.0
            stack, stack_variance = stack * factor, stack_variance * factor ** 2
        order = np.argsort(stack.sum(axis=1))  # largest process on top of the stack
        process_colours = colormaps["tab10"](np.arange(len(scan.process_names)) % 10)
        baseline = np.zeros(bins)
        for code in order:
            top = baseline + stack[code]
            right.stairs(top, edges, baseline=baseline.copy(), fill=True, color=process_colours[code],
                         label=_literal(scan.process_names[code]), linewidth=0)
            baseline = top
        right.stairs(baseline, edges, color="black", linewidth=1.2)
        _band(right, edges, baseline, stack_variance, color="black",
              label="sim. stat. unc.")
        right.set_xlabel(scan.mass_label)
        right.set_ylabel(y_label)
        handles, labels = right.get_legend_handles_labels()
        right.legend(handles[::-1], labels[::-1], loc="upper right", fontsize=10,
                     title=rf"$\varepsilon$ = {_efficiency_text(scan.efficiencies[level])} "
                           f"of {reference}", title_fontsize=10)

        for ax, arrays in ((left, list(spectra)), (right, [baseline])):
            ax.set_xlim(scan.binning.low, scan.binning.high)
            if log:
                ax.set_yscale("log")
                top = max(float(np.max(a)) for a in arrays)
                floor = _positive_floor(arrays)
                # the upper third of the axes left to the legend and the label
                ax.set_ylim(floor, floor * (max(top, floor) / floor) ** 1.5)
            else:
                ax.set_ylim(0, max(float(np.max(a)) for a in arrays) * 1.35 or 1.0)
            _label(ax, mplhep, luminosity_fb, energy_tev)
        if formula:
            name = getattr(discriminant, "name", None)
            text = f"${formula}$" if not name else f"{_literal(name)}:  ${formula}$"
            right.text(0.03, 0.96, text, transform=right.transAxes, ha="left", va="top",
                       fontsize=10)
            left.text(0.03, 0.96, text, transform=left.transAxes, ha="left", va="top",
                      fontsize=10)
    return figure


def roc_figure(curves, *, luminosity_fb: float | None = None, energy_tev: float = 13.0,
               figsize: tuple[float, float] = (6.5, 5.5)):
    """ROC curves (:class:`sophon.tagging.RocCurve`, ``curves``: label -> curve) as a matplotlib
    ``Figure``: background efficiency (log) against signal efficiency, each with its MC band
    (the background efficiency's sqrt(sum w^2) error), in the style of :func:`spectrum_figure`."""
    with _style() as mplhep:
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        figure = Figure(figsize=figsize, layout="constrained")
        ax = figure.subplots()
        colours = colormaps["tab10"](np.arange(len(curves)) % 10)
        floor = 1.0
        for colour, (label, curve) in zip(colours, curves.items()):
            x, y, error = curve.signal_efficiency, curve.background_efficiency, curve.background_error
            positive = y > 0
            ax.plot(x[positive], y[positive], color=colour, linewidth=1.8,
                    label=f"{_literal(label)} (AUC {curve.auc:.3f})")
            ax.fill_between(x[positive], np.maximum(y - error, y * 1e-3)[positive],
                            (y + error)[positive], color=colour, alpha=0.25, linewidth=0)
            if positive.any():
                floor = min(floor, float(y[positive].min()))
        ax.plot([0, 1], [0, 1], color="grey", linestyle="dotted", linewidth=1, label="random")
        ax.set_yscale("log")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(max(floor * 0.5, 1e-7), 1.5)
        ax.set_xlabel("signal efficiency")
        ax.set_ylabel("background efficiency")
        ax.legend(loc="lower right", fontsize=9)
        _label(ax, mplhep, luminosity_fb, energy_tev)
    return figure


def learning_curves_figure(history: Sequence[dict], *, signal_efficiency: str = "60%",
                           figsize: tuple[float, float] = (12.0, 4.8)):
    """A training's learning curves (``history``: the per-epoch records of ``sophon train``'s
    ``.json``) as a matplotlib ``Figure``: left, the training and validation loss per epoch
    (both under the training's draw weights, so a gap between them is over-fitting, not a
    different class mix); right, the validation QCD rejection of each preset at
    ``signal_efficiency``, with its binomial error (1 / QCD efficiency from the number of
    passing QCD jets), the best epoch marked."""
    epochs = np.array([record["epoch"] for record in history], dtype=float)
    with _style():
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        figure = Figure(figsize=figsize, layout="constrained")
        losses, rejections = figure.subplots(1, 2)
        losses.plot(epochs, [r["loss"] for r in history], "o-", label="training")
        losses.plot(epochs, [r["validation_loss"] for r in history], "s-", label="validation")
        losses.set_xlabel("epoch")
        losses.set_ylabel("cross-entropy loss")
        losses.legend()
        presets = list(history[-1].get("tagging", {}))
        colours = colormaps["tab10"](np.arange(len(presets)) % 10)
        for colour, preset in zip(colours, presets):
            rows = [(epoch, r["tagging"][preset]) for epoch, r in zip(epochs, history)
                    if preset in r.get("tagging", {})]
            x = np.array([epoch for epoch, _ in rows])
            passing = np.array([cell[signal_efficiency]["qcd_passing"] for _, cell in rows],
                               dtype=float)
            total = np.array([cell["qcd_jets"] for _, cell in rows], dtype=float)
            rejection = total / np.maximum(passing, 1.0)
            # a rejection from n passing jets is known to about 1/sqrt(n)
            error = rejection / np.sqrt(np.maximum(passing, 1.0))
            rejections.errorbar(x, rejection, yerr=error, fmt="o-", color=colour, capsize=2,
                                label=_literal(preset))
        best = [epoch for epoch, r in zip(epochs, history) if r.get("best")]
        if best:
            rejections.axvline(best[-1], color="grey", linestyle="dotted",
                               label=f"best epoch ({best[-1]:.0f})")
        rejections.set_yscale("log")
        rejections.set_xlabel("epoch")
        rejections.set_ylabel(f"QCD rejection at {signal_efficiency} signal efficiency")
        rejections.legend(fontsize=9)
    return figure


def save_figure(figure, path: str | os.PathLike, *, dpi: int = DEFAULT_DPI,
                title: str | None = None) -> Path:
    """Write ``figure`` to ``path`` in the format of its suffix (``.pdf``, ``.png``, ``.svg``),
    atomically (a temporary file beside it, then a rename). A PNG is ``figsize * dpi`` pixels.
    ``title`` (what the figure shows) goes into the file's metadata: the PDF's Title, the SVG's
    ``dc:title``, the PNG's ``Title`` text chunk."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"{path}: unknown figure format {path.suffix!r}; use one of "
                         f"{', '.join(FIGURE_FORMATS)}")
    with _style(), atomic.atomic_output(path) as temporary:
        figure.savefig(temporary, format=suffix[1:], dpi=dpi,
                       metadata=_file_metadata(suffix, title))
    return path


def _file_metadata(suffix: str, title: str | None = None) -> dict:
    # no creation date: the same figure gives the same file
    if suffix == ".pdf":
        metadata = {"Creator": "sophon.figures", "CreationDate": None}
    elif suffix == ".svg":
        metadata = {"Creator": "sophon.figures", "Date": None}
    else:
        metadata = {"Software": "sophon.figures"}
    if title:
        metadata["Title"] = title
    return metadata


def save_spectrum_figure(scan: EfficiencyScan, level: int,
                         paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                         dpi: int = DEFAULT_DPI, title: str | None = None,
                         **options) -> list[Path]:
    """Draw :func:`spectrum_figure` (``options`` are its keywords) and save it to each of
    ``paths`` (one or several of PDF, PNG, SVG), with ``title`` in the files' metadata.
    Returns the paths written."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    figure = spectrum_figure(scan, level, **options)
    return [save_figure(figure, path, dpi=dpi, title=title) for path in paths]
