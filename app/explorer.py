"""One session's state: the current discriminant and what is computed from it.

Data flows one way::

    dataset (shared) -> discriminant -> thresholds -> histograms (EfficiencyScan) -> views

:class:`Explorer` owns the session's choices (discriminant, efficiency reference, efficiency,
luminosity, signal process and mass window, latent selection, chosen jet) and the results built
from them: the jet scan, the event scan, the significance curve and the selection's spectra are
computed ONCE per change of what they depend on. Views only re-slice them: moving the efficiency
slider never touches the jets.

Per-session memory stays small: the dataset arrays live in the shared
:class:`~sophon.analysis.DatasetAnalysis`; a session holds only histogram cubes and, while there
is a latent-space selection, the selected jets' indices.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import param

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS, Discriminant, DiscriminantError
from sophon.labels import QueryError
from sophon.spectrum import DEFAULT_EFFICIENCIES, EfficiencyScan, SignificanceCurve, nearest_level
from sophon.store import DatasetError

from app import selection as jet_selection
from app.state import DatasetProblem, cached_result, load_analysis

__all__ = ["Explorer", "DEFAULT_DISCRIMINANT", "EFFICIENCIES"]

log = logging.getLogger("sophon.app")

DEFAULT_DISCRIMINANT = PRESETS["X->bb vs QCD"]
EFFICIENCIES: tuple[float, ...] = tuple(float(e) for e in DEFAULT_EFFICIENCIES)
_ERRORS = (DiscriminantError, QueryError, DatasetError, ValueError, KeyError, IndexError)


class Explorer(param.Parameterized):
    """The state of one session (or one notebook) over one shared dataset."""

    analysis = param.ClassSelector(class_=DatasetAnalysis, default=None, allow_None=True,
                                   instantiate=False, doc="The shared dataset analysis.")
    problem = param.String(default="", doc="Why the dataset could not be opened, if it could not.")
    discriminant = param.ClassSelector(class_=Discriminant, default=DEFAULT_DISCRIMINANT,
                                       instantiate=False, doc="The discriminant every view uses.")
    reference = param.Selector(default="all", objects=["all", "QCD"],
                               doc="Efficiencies count the weight of all jets or of QCD jets.")
    efficiency = param.Number(default=1e-2, bounds=(1e-4, 1.0),
                              doc="The chosen efficiency (snapped to the scan's levels).")
    luminosity = param.Number(default=None, allow_None=True, bounds=(0, None),
                              doc="Integrated luminosity in fb^-1 for absolute yields.")
    jets = param.Selector(default="all", objects=["all", "leading"],
                          doc="Jet spectra of all jets, or of each event's leading jet only.")
    show_errors = param.Boolean(default=False, doc="Draw MC statistical errors on the stack.")
    normalise = param.Boolean(default=False, doc="Show unit-area spectra.")
    log_y = param.Boolean(default=True, doc="Logarithmic y axes for spectra.")
    signal = param.Selector(default=None, objects=[], allow_None=True, check_on_set=False,
                            doc="Signal process for the significance.")
    window = param.Range(default=(100.0, 150.0), doc="Mass window (GeV) for the significance.")
    selection = param.Array(default=None, allow_None=True,
                            doc="Sorted indices of the jets selected in the latent space.")
    selection_label = param.String(default="", doc="How the selection was made.")
    jet = param.Integer(default=None, allow_None=True, doc="The jet shown in the jet detail.")

    # results, computed here and only read by the views
    scan = param.ClassSelector(class_=EfficiencyScan, default=None, allow_None=True,
                               instantiate=False)
    event_scan = param.ClassSelector(class_=EfficiencyScan, default=None, allow_None=True,
                                     instantiate=False)
    selection_scan = param.ClassSelector(class_=EfficiencyScan, default=None, allow_None=True,
                                         instantiate=False)
    significance = param.ClassSelector(class_=SignificanceCurve, default=None, allow_None=True,
                                       instantiate=False)
    error = param.String(default="", doc="The last computation error, for the page.")
    scans_built = param.Integer(default=0, doc="How many times this session's jet scan was "
                                "computed (or taken from the process-wide cache).")

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | Path, **params) -> Explorer:
        """An explorer on the (process-shared) dataset at ``path``; a bad dataset gives an
        explorer with ``problem`` set instead of an exception."""
        loaded = load_analysis(path)
        if isinstance(loaded, DatasetProblem):
            return cls(problem=f"{loaded.message}", **params)
        return cls(analysis=loaded, **params)

    # --- derived quantities ---------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.analysis is not None

    @property
    def dataset(self):
        return None if self.analysis is None else self.analysis.dataset

    @property
    def dataset_luminosity(self) -> float | None:
        return None if self.analysis is None else self.analysis.dataset.metadata.luminosity_fb

    @property
    def scale(self) -> float:
        """Factor from the dataset's weights to events at :attr:`luminosity`."""
        native = self.dataset_luminosity
        if not native or self.luminosity is None:
            return 1.0
        return float(self.luminosity) / float(native)

    @property
    def weighted(self) -> bool:
        return self.dataset_luminosity is not None

    @property
    def level(self) -> int:
        """The scan level of the chosen efficiency."""
        return nearest_level(EFFICIENCIES, self.efficiency)

    @property
    def has_latent(self) -> bool:
        return self.ready and self.dataset.has("umap_x") and self.dataset.has("umap_y")

    # --- watchers -------------------------------------------------------------------------
    @param.depends("efficiency", watch=True)
    def _snap_efficiency(self):
        snapped = EFFICIENCIES[self.level]
        if snapped != self.efficiency:
            self.efficiency = snapped

    @param.depends("analysis", watch=True, on_init=True)
    def _on_analysis(self):
        """A new dataset (or the first): its signals, default window and luminosity in one
        update, then the scans."""
        self._selection_order: tuple | None = None
        if self.analysis is None:
            self.param.update(scan=None, event_scan=None, significance=None, selection=None,
                              selection_scan=None, jet=None)
            return
        dataset = self.analysis.dataset
        processes = list(dataset.process_names)
        signals = [p for p in processes if p != "QCD"] or processes
        self.param.signal.objects = signals
        updates = {"problem": "", "selection": None, "selection_label": "", "jet": None}
        if self.signal not in signals:
            updates["signal"] = signals[0]
            updates["window"] = self._default_window(signals[0])
        if self.luminosity is None:
            updates["luminosity"] = dataset.metadata.luminosity_fb
        self.param.update(**updates)  # the significance follows the signal and window
        self._update_scans()
        self._update_significance()

    @param.depends("discriminant", "reference", "jets", watch=True)
    def _update_scans(self):
        """The jet scan, event scan and the selection's scan: once per discriminant change."""
        if self.analysis is None:
            return
        analysis, discriminant = self.analysis, self.discriminant
        try:
            jets = self.jets if analysis.dataset.has("jet_rank") else "all"
            scan = cached_result(analysis, ("jet_scan", discriminant, self.reference, jets),
                                 lambda: analysis.jet_scan(discriminant, efficiencies=EFFICIENCIES,
                                                           reference=self.reference, jets=jets))
            event_scan = None
            if analysis.has_events:
                event_scan = cached_result(
                    analysis, ("event_scan", discriminant),
                    lambda: analysis.event_scan(discriminant, efficiencies=EFFICIENCIES))
        except _ERRORS as error:
            self.error = f"Could not compute the spectra: {error}"
            return
        self._selection_order = None
        self.param.update(scan=scan, event_scan=event_scan,
                          selection_scan=self._subset_scan(scan, self.selection), error="",
                          scans_built=self.scans_built + 1)

    @param.depends("signal", watch=True)
    def _on_signal(self):
        """A new signal process gets a mass window around its peak."""
        window = self._default_window(self.signal)
        if tuple(window) != tuple(self.window):
            self.window = window  # recomputes through _update_significance
        else:
            self._update_significance()

    @param.depends("discriminant", "window", watch=True)
    def _update_significance(self):
        if self.analysis is None or self.signal is None:
            return
        analysis, discriminant = self.analysis, self.discriminant
        signal, window = self.signal, tuple(float(w) for w in self.window)
        try:
            curve = cached_result(analysis, ("significance", discriminant, signal, window),
                                  lambda: analysis.significance(discriminant, signal, window))
        except _ERRORS as error:
            self.error = f"Could not compute the significance: {error}"
            return
        self.significance = curve

    @param.depends("selection", watch=True)
    def _update_selection(self):
        self._selection_order = None
        self.selection_scan = self._subset_scan(self.scan, self.selection)

    def _subset_scan(self, scan: EfficiencyScan | None,
                     subset: np.ndarray | None) -> EfficiencyScan | None:
        """The selection's spectra with the thresholds of the whole dataset."""
        if scan is None or subset is None or self.analysis is None:
            return None
        if self.jets == "leading" and self.analysis.dataset.has("jet_rank"):
            subset = np.intersect1d(subset, self.analysis.leading_jets, assume_unique=True)
        return self.analysis.subset_scan(self.discriminant, scan, subset)

    def _default_window(self, signal: str | None) -> tuple[float, float]:
        """The signal's peak window (:meth:`DatasetAnalysis.signal_window`), or the current
        window when there is no such signal."""
        if self.analysis is None or signal not in self.analysis.dataset.process_names:
            return tuple(self.window)
        return self.analysis.signal_window(signal)

    # --- actions --------------------------------------------------------------------------
    def latent_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        dataset = self.dataset
        return dataset.column("umap_x"), dataset.column("umap_y")

    def select_box(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Select the jets inside ``bounds = (x0, y0, x1, y1)`` of the latent plane."""
        x, y = self.latent_coordinates()
        indices = jet_selection.box_indices(x, y, bounds)
        x0, y0, x1, y1 = bounds
        self._set_selection(indices, f"box x ∈ [{min(x0, x1):.2f}, {max(x0, x1):.2f}], "
                                     f"y ∈ [{min(y0, y1):.2f}, {max(y0, y1):.2f}]")
        return indices

    def select_polygon(self, vertices: np.ndarray) -> np.ndarray:
        """Select the jets inside the lasso polygon ``vertices`` (V, 2)."""
        x, y = self.latent_coordinates()
        indices = jet_selection.polygon_indices(x, y, vertices)
        self._set_selection(indices, f"lasso of {len(np.asarray(vertices))} points")
        return indices

    def select_indices(self, indices: np.ndarray, label: str = "indices") -> None:
        """Select the jets ``indices`` (dataset rows, e.g. a notebook's nearest neighbours)."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if self.ready and indices.size and (indices[0] < 0 or indices[-1] >= self.dataset.n_jets):
            raise IndexError(f"jet indices must lie in [0, {self.dataset.n_jets})")
        self.clear_selection()  # also forgets the shape of a previous box or lasso
        self.param.update(selection=indices, selection_label=label)

    def clear_selection(self) -> None:
        self.param.update(selection=None, selection_label="")

    def _set_selection(self, indices: np.ndarray, label: str) -> None:
        self.param.update(selection=np.asarray(indices, dtype=np.int64), selection_label=label)

    def selection_order(self) -> np.ndarray:
        """The selected jets, most signal-like (highest D) first; cached per selection and
        discriminant."""
        if self.selection is None or self.analysis is None:
            return np.zeros(0, dtype=np.int64)
        key = (id(self.selection), self.discriminant)
        if self._selection_order is None or self._selection_order[0] != key:
            values = self.analysis.log_odds(self.discriminant)[self.selection]
            order = self.selection[np.argsort(-values, kind="stable")]
            self._selection_order = (key, order)
        return self._selection_order[1]

    # --- numbers for the page -------------------------------------------------------------
    def selected_yield(self) -> float:
        return 0.0 if self.scan is None else self.scan.selected_yield(self.level) * self.scale
