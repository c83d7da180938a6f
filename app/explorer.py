"""One session's state: the current discriminant and what is computed from it.

Data flows one way::

    dataset (shared) -> discriminant -> thresholds -> histograms (EfficiencyScan) -> views

:class:`Explorer` owns the session's choices (discriminant, efficiency reference, efficiency,
luminosity, signal process and mass window, latent selection and its shape, chosen jet) and the
results built
from them: the jet scan, the event scan, the significance curve and the selection's spectra are
computed ONCE per change of what they depend on. Views only re-slice them: moving the efficiency
slider never touches the jets.

Per-session memory stays small: the dataset arrays live in the shared
:class:`~sophon.analysis.DatasetAnalysis`; a session holds only histogram cubes and, while there
is a latent-space selection, the selected jets' indices.

*On a Dask cluster* (:class:`~sophon.cluster_analysis.ClusterAnalysis`, ``--dask``) a scan
takes seconds to minutes, and a watcher that waited for it would hold Tornado's event loop,
which every session of the server shares. There, a discriminant change starts the scans in a
thread of :data:`CLUSTER_SCANS` and returns at once with :attr:`Explorer.computing` set (the
views show it with a spinner); the result reaches the session as a next-tick callback of its
page's document (Bokeh runs it on the event loop, holding the document lock), and a result
overtaken by a newer change is dropped. The scans hold every efficiency level, so the slider
stays instant. In memory, everything stays synchronous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import param

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS, Discriminant, DiscriminantError
from sophon.labels import QueryError
from sophon.spectrum import DEFAULT_EFFICIENCIES, EfficiencyScan, SignificanceCurve, nearest_level
from sophon.store import DatasetError

from app import selection as jet_selection
from app.state import DatasetProblem, cached_result, load_analysis, ready_result

__all__ = ["Explorer", "DEFAULT_DISCRIMINANT", "EFFICIENCIES", "MAX_LUMINOSITY",
           "MAX_LASSO_VERTICES", "SELECTION_DIGITS", "CLUSTER_SCANS", "session_delivery"]

log = logging.getLogger("sophon.app")

DEFAULT_DISCRIMINANT = PRESETS["X->bb vs QCD"]
EFFICIENCIES: tuple[float, ...] = tuple(float(e) for e in DEFAULT_EFFICIENCIES)
_ERRORS = (DiscriminantError, QueryError, DatasetError, ValueError, KeyError, IndexError)
#: what a cluster scan may also raise and the page says as it is: a pass past its time limit
_CLUSTER_ERRORS = (*_ERRORS, TimeoutError)

#: The largest luminosity (fb^-1) the app accepts: 100 ab^-1, beyond any planned collider run
#: (a dataset generated for more keeps its own as the maximum).
MAX_LUMINOSITY = 1e5
#: A lasso is kept (and linked) with at most this many vertices, evenly thinned from what was
#: drawn; the selection is made from the kept ones, so a link gives the same jets.
MAX_LASSO_VERTICES = 100
#: Selection geometry is rounded to this many significant digits before jets are selected (the
#: same numbers then reach the link, which selects the same jets).
SELECTION_DIGITS = 6
#: The threads that wait for cluster scans, shared by every session of the process (a thread
#: only waits: the cluster computes; two sessions on one discriminant share one scan).
CLUSTER_SCANS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sophon-cluster-scan")


class FiniteNumber(param.Number):
    """A number parameter that also refuses NaN and infinities (param's bounds let NaN pass)."""

    def _validate_value(self, value, allow_None):
        super()._validate_value(value, allow_None)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, not {value!r}")


def rounded(value: float) -> float:
    """``value`` to :data:`SELECTION_DIGITS` significant digits."""
    return float(f"{float(value):.{SELECTION_DIGITS}g}")


def lasso_vertices(vertices) -> tuple[tuple[float, float], ...]:
    """The finite vertices of a drawn lasso, evenly thinned to at most
    :data:`MAX_LASSO_VERTICES` and rounded (:func:`rounded`)."""
    points = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) > MAX_LASSO_VERTICES:
        keep = np.unique(np.linspace(0, len(points) - 1, MAX_LASSO_VERTICES).round().astype(int))
        points = points[keep]
    return tuple((rounded(x), rounded(y)) for x, y in points)


def session_delivery() -> Callable[[Callable[[], None]], None]:
    """How a result computed in another thread reaches the current session: on a served page, a
    next-tick callback of the page's document (``pn.state.execute(..., schedule=True)``:
    Bokeh runs it on the event loop with the document lock held, as Panel's own callbacks); with
    no served page (a notebook, tests, the server's preload) at once, in the computing thread."""
    import panel as pn  # the app's UI library, only when a cluster scan is started
    from panel.io.state import set_curdoc

    document = pn.state.curdoc
    if document is None or document.session_context is None:
        return lambda action: action()

    def deliver(action: Callable[[], None]) -> None:
        try:
            with set_curdoc(document):
                pn.state.execute(action, schedule=True)
        except Exception:  # the page was closed meanwhile: nobody to show it to
            log.info("a cluster result found its session gone", exc_info=True)

    return deliver


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
    luminosity = FiniteNumber(default=None, allow_None=True, bounds=(0, MAX_LUMINOSITY),
                              inclusive_bounds=(False, True),
                              doc="Integrated luminosity in fb^-1 for absolute yields (positive, "
                              "finite, at most MAX_LUMINOSITY).")
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
    selection_shape = param.Parameter(default=None, doc="What was drawn: ('box', (x0, y0, x1, "
                                      "y1)) or ('lasso', ((x, y), ...)), rounded; None without "
                                      "a selection.")
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
    computing = param.String(default="", doc="What is being computed in the background, in "
                             "words ('' when nothing): the scans on a Dask cluster.")

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
    def max_luminosity(self) -> float:
        """The largest luminosity accepted (:data:`MAX_LUMINOSITY`, or the dataset's own if
        larger)."""
        return float(self.param.luminosity.bounds[1])

    def luminosity_problem(self, value) -> str:
        """Why ``value`` (a number, text or None) cannot be the luminosity ('' when it can)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return "it is empty"
        if isinstance(value, bool):
            return f"{value!r} is not a number"
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return f"{str(value)[:40]!r} is not a number"
        if not math.isfinite(number):
            return f"{number:g} is not a finite number"
        if number <= 0:
            return f"{number:g} fb⁻¹ is not positive"
        if number > self.max_luminosity:
            return f"{number:g} fb⁻¹ is above the maximum of {self.max_luminosity:,.0f} fb⁻¹"
        return ""

    @property
    def level(self) -> int:
        """The scan level of the chosen efficiency."""
        return nearest_level(EFFICIENCIES, self.efficiency)

    @property
    def has_latent(self) -> bool:
        return self.ready and self.dataset.has("umap_x") and self.dataset.has("umap_y")

    def __init__(self, **params):
        self._scan_generation = 0  # scan requests so far: a cluster result of an older one is stale
        self._pending_scans: Future | None = None
        super().__init__(**params)
        # a new discriminant's signal and significance: after every other watcher
        # (param.depends watchers run at precedence -1), so the page shows the discriminant
        # first (see target_signal)
        self.param.watch(self._significance_follows_discriminant, ["discriminant"],
                         precedence=100)

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
                              selection_scan=None, jet=None, computing="")
            return
        dataset = self.analysis.dataset
        processes = list(dataset.process_names)
        signals = [p for p in processes if p != "QCD"] or processes
        self.param.signal.objects = signals
        updates = {"problem": "", "selection": None, "selection_label": "",
                   "selection_shape": None, "jet": None}
        if self.signal not in signals:
            updates["signal"] = signals[0]
            updates["window"] = self._default_window(signals[0])
        native = dataset.metadata.luminosity_fb
        if native and native > self.param.luminosity.bounds[1]:
            self.param.luminosity.bounds = (0, float(native))
        if self.luminosity is None:
            updates["luminosity"] = native
        self.param.update(**updates)  # the significance follows the signal and window
        self._update_scans()
        self._update_significance()

    @param.depends("discriminant", "reference", "jets", watch=True)
    def _update_scans(self):
        """The jet scan, event scan and the selection's scan: once per discriminant change (on a
        cluster, in the background: :meth:`_start_cluster_scans`)."""
        self._scan_generation += 1
        if self.analysis is None:
            return
        if self.analysis.scans_on_cluster:
            self._start_cluster_scans()
            return
        try:
            results = self._compute_scans(self._scan_jobs())
        except _ERRORS as error:
            self.error = f"Could not compute the spectra: {error}"
            return
        self._apply_scans(results, **({"computing": ""} if self.computing else {}))

    def _scan_jobs(self) -> dict[str, tuple[tuple, Callable[[], EfficiencyScan]]]:
        """The scans the current choices need: parameter -> (cache key, computation)."""
        analysis, discriminant, reference = self.analysis, self.discriminant, self.reference
        jets = self.jets if analysis.dataset.has("jet_rank") else "all"
        jobs = {"scan": (("jet_scan", discriminant, reference, jets),
                         lambda: analysis.jet_scan(discriminant, efficiencies=EFFICIENCIES,
                                                   reference=reference, jets=jets))}
        if analysis.has_events:
            jobs["event_scan"] = (("event_scan", discriminant),
                                  lambda: analysis.event_scan(discriminant,
                                                              efficiencies=EFFICIENCIES))
        return jobs

    def _compute_scans(self, jobs, analysis: DatasetAnalysis | None = None) -> dict:
        """The scans of ``jobs`` (:meth:`_scan_jobs`), from the process-wide cache or computed."""
        analysis = self.analysis if analysis is None else analysis
        results = {"scan": None, "event_scan": None}
        for name, (key, compute) in jobs.items():
            results[name] = cached_result(analysis, key, compute)
        return results

    def _apply_scans(self, results: dict, **updates) -> None:
        """Show new scans (and the selection's spectra under their thresholds), in one update."""
        self._selection_order = None
        scan = results["scan"]
        self.param.update(scan=scan, event_scan=results["event_scan"],
                          selection_scan=self._subset_scan(scan, self.selection), error="",
                          scans_built=self.scans_built + 1, **updates)

    # --- the scans on a cluster -------------------------------------------------------------
    @property
    def pending_scans(self) -> Future | None:
        """The cluster scans last started (done once their result was delivered, or dropped as
        stale: :func:`session_delivery`); None before any."""
        return self._pending_scans

    def _start_cluster_scans(self) -> None:
        """The scans of the current choices on the cluster: at once when the process already
        has them (going back to a discriminant, a second session on it), else in a thread of
        :data:`CLUSTER_SCANS`, :attr:`computing` saying so meanwhile."""
        analysis, jobs, generation = self.analysis, self._scan_jobs(), self._scan_generation
        ready = {name: ready_result(analysis, key) for name, (key, _) in jobs.items()}
        if all(result is not None for result in ready.values()):
            self._apply_scans({"scan": None, "event_scan": None, **ready}, computing="")
            return
        self.computing = (f"Computing the spectra on the cluster ({analysis.partitions:,} "
                          f"partitions of {analysis.n_jets:,} jets)…")
        deliver, name = session_delivery(), self.discriminant.name

        def run() -> None:
            try:
                results = self._compute_scans(jobs, analysis)
            except Exception as error:  # the cluster's failures too: text for the page
                if not isinstance(error, _CLUSTER_ERRORS):
                    log.exception("the cluster scan of %s failed", name)
                # partial binds the error now: the name is unbound once this block ends, and a
                # served page runs the callback later
                deliver(partial(self._finish_cluster_scans, generation, analysis, error=error))
            else:
                deliver(partial(self._finish_cluster_scans, generation, analysis, results))

        self._pending_scans = CLUSTER_SCANS.submit(run)

    def _finish_cluster_scans(self, generation: int, analysis: DatasetAnalysis,
                              results: dict | None = None,
                              error: Exception | None = None) -> None:
        """Show the scans of request ``generation``, or its error; nothing when the choices or
        the dataset changed meanwhile (a newer request is on its way, or done)."""
        if generation != self._scan_generation or analysis is not self.analysis:
            return
        if error is not None:
            text = str(error) if isinstance(error, _CLUSTER_ERRORS) else \
                f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            self.param.update(error=f"Could not compute the spectra on the cluster: {text}",
                              computing="")
            return
        self._apply_scans(results, computing="")

    @param.depends("signal", watch=True)
    def _on_signal(self):
        """A new signal process gets a mass window around its peak."""
        window = self._default_window(self.signal)
        if tuple(window) != tuple(self.window):
            self.window = window  # recomputes through _update_significance
        else:
            self._update_significance()

    def _significance_follows_discriminant(self, event=None) -> None:
        """The significance of a new discriminant, computed once: for its target signal when
        that changes the signal (the new window then recomputes it), else for the signal as
        it is."""
        signal = self.signal
        self.target_signal()
        if self.signal == signal:
            self._update_significance()

    @param.depends("window", watch=True)
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
        # while a cluster scan is on its way, self.scan holds the previous discriminant's
        # thresholds: the selection's spectra come with the new scan (_apply_scans)
        self.selection_scan = (None if self.computing else
                               self._subset_scan(self.scan, self.selection))

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
        """Select the jets inside ``bounds = (x0, y0, x1, y1)`` of the latent plane.

        The bounds are rounded to :data:`SELECTION_DIGITS` significant digits first (what a
        link holds)."""
        x0, y0, x1, y1 = (rounded(b) for b in bounds)
        x, y = self.latent_coordinates()
        indices = jet_selection.box_indices(x, y, (x0, y0, x1, y1))
        self._set_selection(indices, f"box x ∈ [{min(x0, x1):.2f}, {max(x0, x1):.2f}], "
                                     f"y ∈ [{min(y0, y1):.2f}, {max(y0, y1):.2f}]",
                            ("box", (x0, y0, x1, y1)))
        return indices

    def select_polygon(self, vertices: np.ndarray) -> np.ndarray:
        """Select the jets inside the lasso polygon ``vertices`` (V, 2), thinned to at most
        :data:`MAX_LASSO_VERTICES` vertices and rounded first (:func:`lasso_vertices`: what a
        link holds)."""
        kept = lasso_vertices(vertices)
        x, y = self.latent_coordinates()
        indices = jet_selection.polygon_indices(x, y, np.array(kept, dtype=np.float64))
        self._set_selection(indices, f"lasso of {len(kept)} points", ("lasso", kept))
        return indices

    def select_indices(self, indices: np.ndarray, label: str = "indices") -> None:
        """Select the jets ``indices`` (dataset rows, e.g. a notebook's nearest neighbours)."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if self.ready and indices.size and (indices[0] < 0 or indices[-1] >= self.dataset.n_jets):
            raise IndexError(f"jet indices must lie in [0, {self.dataset.n_jets})")
        self.clear_selection()  # also forgets the shape of a previous box or lasso
        self.param.update(selection=indices, selection_label=label)

    def clear_selection(self) -> None:
        self.param.update(selection=None, selection_label="", selection_shape=None)

    def _set_selection(self, indices: np.ndarray, label: str, shape: tuple) -> None:
        self.param.update(selection=np.asarray(indices, dtype=np.int64), selection_label=label,
                          selection_shape=shape)

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

    # --- the significance's default signal (issue 14.12) ----------------------------------
    @param.depends("analysis", watch=True, on_init=True)
    def target_signal(self) -> str | None:
        """The signal becomes the process the discriminant targets, read from the data
        (:meth:`DatasetAnalysis.target_process`: the most significant one in its own mass window
        at a tight cut), for each new dataset and each new discriminant; returns it (None when
        there is none). A discriminant's watcher runs this after every other one (precedence),
        so the page has shown the new discriminant first, and a link's signal, applied after
        its discriminant, stays."""
        if self.analysis is None:
            return None
        analysis, discriminant = self.analysis, self.discriminant
        try:
            target = cached_result(analysis, ("target_process", discriminant),
                                   lambda: analysis.target_process(discriminant))
        except _ERRORS:
            return None
        if target is not None and target in self.param.signal.objects and target != self.signal:
            self.signal = target  # its window follows (_on_signal)
        return target
