"""One dataset's analysis state, shared by every user of a server process.

:class:`DatasetAnalysis` holds what does not depend on the discriminant (mass-bin indices, the
event table of the two leading jets, QCD reference masks) and small caches of what does
(class-set sums, discriminant values). Every method is a pure function of its arguments plus
those caches, so concurrent sessions can call it freely; caches are guarded by a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import vector

from sophon.discriminant import Discriminant, event_sum
from sophon.labels import LABELS
from sophon.labels import mask as class_mask
from sophon.spectrum import (DEFAULT_EFFICIENCIES, DEFAULT_MASS_BINNING, EfficiencyScan,
                             DIJET_MASS_LABEL, MassBinning, SignificanceCurve, densest_window,
                             significance_scan, thresholds_for_efficiencies)
from sophon.stats import asimov_significance
from sophon.store import JetDataset
from sophon.tagging import RocCurve, weighted_roc

__all__ = ["DatasetAnalysis", "EventTable", "BuildOnceCache", "DIJET_MASS_BINNING",
           "most_probable_class", "selection_frame", "EXPORT_COLUMNS"]

DIJET_MASS_BINNING = MassBinning(bins=100, low=0.0, high=5000.0)
EfficiencyReference = Literal["all", "QCD"]
JetChoice = Literal["all", "leading"]


class BuildOnceCache:
    """A thread-safe mapping whose values are built once per key.

    :meth:`get_or_build` builds a missing value with the given function while other threads
    asking for the same key wait for it (other keys build meanwhile); a build that raises
    stores nothing. With ``size``, the least recently used entries go first. Also the small
    mapping protocol :meth:`Discriminant.components` fills (``in``, ``[]``, ``[] =``).
    """

    def __init__(self, size: int | None = None):
        self.size = size
        self._lock = threading.Lock()
        self._key_locks: dict = {}
        self._values: OrderedDict = OrderedDict()

    def get_or_build(self, key, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._values:
                    return self._values[key]
            try:
                value = build()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            self[key] = value
            return value

    def get(self, key, default=None):
        with self._lock:
            return self._values.get(key, default)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._values

    def __getitem__(self, key):
        with self._lock:
            self._values.move_to_end(key)
            return self._values[key]

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while self.size is not None and len(self._values) > self.size:
                self._values.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def pop(self, key, default=None):
        """Remove ``key``'s value and return it (``default`` when there is none)."""
        with self._lock:
            return self._values.pop(key, default)

    def items(self) -> list:
        """A snapshot of the entries."""
        with self._lock:
            return list(self._values.items())

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


@dataclass(frozen=True)
class EventTable:
    """The events of a dataset, built from their two leading jets (``jet_rank`` 0 and 1).

    ``event_of_jet`` (N,) dense event number of each jet; ``leading`` (N,) bool: the jet is one of
    the two leading jets; per event: ``weight``, ``process_code``, ``dijet_mass`` (GeV, NaN when
    the event has fewer than two jets).
    """

    event_of_jet: np.ndarray
    leading: np.ndarray
    weight: np.ndarray
    process_code: np.ndarray
    dijet_mass: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.weight)


class DatasetAnalysis:
    """Discriminant scans on one :class:`~sophon.store.JetDataset`."""

    #: whether each scan is a pass over a cluster (long work: a user interface runs it in the
    #: background) rather than arithmetic on arrays in memory
    scans_on_cluster: bool = False

    def __init__(self, dataset: JetDataset, *, binning: MassBinning = DEFAULT_MASS_BINNING,
                 cache_size: int = 8):
        self.dataset = dataset
        self.binning = binning
        self._class_sums = BuildOnceCache(cache_size)  # filled by Discriminant.components
        self._values = BuildOnceCache(cache_size)
        self._windows = BuildOnceCache()  # (process, fraction) -> mass window: few, kept

    # --- what it is -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The dataset the scans cover."""
        return self.dataset.path

    @property
    def n_jets(self) -> int:
        """Jets the scans cover."""
        return self.dataset.n_jets

    def sample_description(self) -> str:
        """What the per-jet views (:attr:`dataset`) show of the scanned jets, in words."""
        return f"all {self.n_jets:,} jets"

    # --- discriminant-independent arrays ------------------------------------------------------
    @cached_property
    def mass_index(self) -> np.ndarray:
        return self.binning.index(self.dataset.column("jet_sdmass"))

    @cached_property
    def qcd_reference(self) -> np.ndarray:
        """(N,) bool: QCD jets, by ``process`` when present, else by true class."""
        dataset = self.dataset
        if dataset.has("process"):
            names = dataset.process_names
            if "QCD" in names:
                return dataset.process_codes == names.index("QCD")
        if dataset.has("jet_label"):
            labels = dataset.column("jet_label")
            # -1 (no truth class, e.g. Delphes or SM jets) is not QCD: never index with it
            return (labels >= 0) & class_mask("QCD")[np.clip(labels, 0, None)]
        raise ValueError(f"{dataset.path}: no 'process' or 'jet_label' column to find QCD jets")

    @cached_property
    def leading_jets(self) -> np.ndarray:
        """Indices of each event's leading jet (``jet_rank`` 0), as the paper's Fig. 3 draws."""
        if not self.dataset.has("jet_rank"):
            raise ValueError(f"{self.dataset.path}: the leading-jet spectrum needs 'jet_rank'")
        return np.flatnonzero(self.dataset.column("jet_rank") == 0)

    @cached_property
    def most_probable_class(self) -> np.ndarray:
        """(N,) int16: each jet's most probable class."""
        return most_probable_class(self.dataset.scores)

    def signal_window(self, process: str, fraction: float = 0.5) -> tuple[float, float]:
        """The narrowest jet-mSD window (GeV, on bin edges) holding ``fraction`` of the weight of
        ``process``'s jets: where its peak is (:func:`sophon.spectrum.densest_window`)."""
        dataset = self.dataset
        names = list(dataset.process_names)
        if process not in names:
            raise ValueError(f"unknown process {process!r}; processes are {names}")

        def build() -> tuple[float, float]:
            members = dataset.process_codes == names.index(process)
            return densest_window(dataset.column("jet_sdmass")[members],
                                  dataset.weights[members], self.binning, fraction)

        # discriminant-independent, asked on every discriminant change (target_process)
        return self._windows.get_or_build((process, fraction), build)

    def target_process(self, discriminant: Discriminant, efficiency: float = 1e-3,
                       candidates: Sequence[str] | None = None) -> str | None:
        """The process ``discriminant`` selects: the one it finds most significantly.

        Cut ``discriminant`` where the jets above it carry the fraction ``efficiency`` of the
        weight of all jets; for each candidate process p (default: every process but QCD) count,
        among the passing jets in p's own mass window (:meth:`signal_window`), p's weight s and
        the weight b of every other process, and take the p with the largest Asimov
        Z(s, b) (ties: the larger s). That is the signal of a significance in a mass window
        this tagger was built for: W+jets for X->cs, Z+jets or Higgs for X->bb, ttbar for
        X->bqq, read from the data rather than from the discriminant's name. None when no
        candidate has a passing jet in its window.
        """
        dataset = self.dataset
        names = list(dataset.process_names)
        if candidates is None:
            candidates = [name for name in names if name != "QCD"] or names
        unknown = [name for name in candidates if name not in names]
        if unknown:
            raise ValueError(f"unknown processes {unknown}; processes are {names}")
        values, weights = self.log_odds(discriminant), dataset.weights
        threshold = thresholds_for_efficiencies(values, weights, [efficiency])[0]
        passing = values >= threshold
        codes, mass = dataset.process_codes[passing], dataset.column("jet_sdmass")[passing]
        passing_weights = weights[passing]
        best, best_key = None, (0.0, 0.0)
        for name in candidates:
            low, high = self.signal_window(name)
            in_window = (mass >= low) & (mass < high)
            is_process = codes == names.index(name)
            s = float(passing_weights[in_window & is_process].sum())
            b = float(passing_weights[in_window & ~is_process].sum())
            key = (float(asimov_significance(s, b)), s)
            if s > 0 and key > best_key:
                best, best_key = name, key
        return best

    @property
    def has_events(self) -> bool:
        return self.dataset.has("event_id") and self.dataset.has("jet_rank")

    @cached_property
    def events(self) -> EventTable:
        dataset = self.dataset
        if not self.has_events:
            raise ValueError(f"{dataset.path}: event-level views need 'event_id' and 'jet_rank'")
        _, event_of_jet = np.unique(dataset.column("event_id"), return_inverse=True)
        event_of_jet = event_of_jet.astype(np.int64)
        n_events = int(event_of_jet.max()) + 1
        rank = dataset.column("jet_rank")
        jets = vector.array({name: dataset.column(column).astype(np.float64) for name, column in
                             (("pt", "jet_pt"), ("eta", "jet_eta"), ("phi", "jet_phi"),
                              ("energy", "jet_energy"))})
        # each event's leading and second jet (-1: none), the dijet where it has both
        first, second = (np.full(n_events, -1, dtype=np.int64) for _ in range(2))
        for position, jet_of_event in enumerate((first, second)):
            rows = np.flatnonzero(rank == position)
            jet_of_event[event_of_jet[rows]] = rows
        both = (first >= 0) & (second >= 0)
        dijet_mass = np.full(n_events, np.nan)
        # a pair of physical jets is timelike; rounding may leave m^2 a hair below zero
        dijet_mass[both] = np.maximum((jets[first[both]] + jets[second[both]]).mass, 0.0)
        first_jet = np.zeros(n_events, dtype=np.int64)
        first_jet[event_of_jet[::-1]] = np.arange(len(event_of_jet))[::-1]
        return EventTable(event_of_jet=event_of_jet, leading=rank < 2,
                          weight=dataset.weights[first_jet],
                          process_code=dataset.process_codes[first_jet], dijet_mass=dijet_mass)

    # --- discriminant values ------------------------------------------------------------------
    def discriminant(self, discriminant: Discriminant) -> np.ndarray:
        """Jet-level D (N,) float32."""
        return self._cached_values(("D", discriminant), lambda: discriminant.evaluate(
            self.dataset.scores, self._class_sums))

    def log_odds(self, discriminant: Discriminant) -> np.ndarray:
        """Jet-level ln(g_A/g_B) (N,) float32: same order as D, resolvable at tight cuts."""
        return self._cached_values(("log_odds", discriminant), lambda: discriminant.log_odds(
            self.dataset.scores, self._class_sums))

    def event_discriminant(self, discriminant: Discriminant) -> np.ndarray:
        """Per event: the sum of D over the two leading jets (eq. 7), float64 (events,)."""
        events = self.events
        return event_sum(self.discriminant(discriminant).astype(np.float64), events.event_of_jet,
                         events.n_events, events.leading)

    def _cached_values(self, key, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Per-jet values computed once per key (read-only: every session shares them)."""
        def build() -> np.ndarray:
            values = compute()
            values.flags.writeable = False
            return values

        return self._values.get_or_build(key, build)

    # --- scans --------------------------------------------------------------------------------
    def jet_scan(self, discriminant: Discriminant, *,
                 efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                 reference: EfficiencyReference = "all", jets: JetChoice = "all"
                 ) -> EfficiencyScan:
        """Jet mSD spectra at each efficiency of ``discriminant``; efficiencies count all jets'
        weight or only QCD jets' (``reference``). ``jets="leading"``: only each event's leading
        jet enters, cuts and spectra alike (paper Fig. 3)."""
        dataset = self.dataset
        values, mass_index = self.log_odds(discriminant), self.mass_index
        weights, codes = dataset.weights, dataset.process_codes
        reference_mask = None if reference == "all" else self.qcd_reference
        if jets == "leading":
            rows = self.leading_jets
            values, mass_index, weights, codes = (a[rows] for a in (values, mass_index, weights,
                                                                    codes))
            reference_mask = None if reference_mask is None else reference_mask[rows]
        elif jets != "all":
            raise ValueError(f"jets must be 'all' or 'leading', not {jets!r}")
        return EfficiencyScan.build(values, mass_index, weights, codes, dataset.process_names,
                                    efficiencies=efficiencies, reference=reference_mask,
                                    binning=self.binning)

    def subset_scan(self, discriminant: Discriminant, scan: EfficiencyScan,
                    subset: np.ndarray) -> EfficiencyScan:
        """The spectra of the jets ``subset`` (indices, e.g. a latent-space selection) under the
        thresholds of ``scan``, which were set on the whole dataset."""
        subset = np.asarray(subset)
        dataset = self.dataset
        return EfficiencyScan.from_thresholds(
            self.log_odds(discriminant)[subset], self.mass_index[subset],
            dataset.weights[subset], dataset.process_codes[subset], scan.process_names,
            efficiencies=scan.efficiencies, thresholds=scan.thresholds, binning=scan.binning)

    def event_scan(self, discriminant: Discriminant, *,
                   efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                   binning: MassBinning = DIJET_MASS_BINNING) -> EfficiencyScan:
        """Dijet-mass spectra at each event efficiency of the event-level D."""
        events = self.events
        return EfficiencyScan.build(self.event_discriminant(discriminant),
                                    binning.index(events.dijet_mass), events.weight,
                                    events.process_code, self.dataset.process_names,
                                    efficiencies=efficiencies, binning=binning,
                                    mass_label=DIJET_MASS_LABEL)

    def significance(self, discriminant: Discriminant, signal: str,
                     window: tuple[float, float]) -> SignificanceCurve:
        """Z of process ``signal`` in the jet mSD window (GeV) versus background efficiency."""
        dataset = self.dataset
        return significance_scan(self.log_odds(discriminant), self.mass_index, dataset.weights,
                                 dataset.process_codes, dataset.process_names, signal, window,
                                 binning=self.binning)

    def event_significance(self, discriminant: Discriminant, signal: str,
                           window: tuple[float, float], *,
                           binning: MassBinning = DIJET_MASS_BINNING) -> SignificanceCurve:
        """Z of process ``signal`` in the dijet-mass window (GeV) versus the background
        efficiency of the event-level D (the sum over the two leading jets, eq. 7)."""
        events = self.events
        return significance_scan(self.event_discriminant(discriminant),
                                 binning.index(events.dijet_mass), events.weight,
                                 events.process_code, self.dataset.process_names, signal, window,
                                 binning=binning, mass_label=DIJET_MASS_LABEL)

    def roc(self, discriminant: Discriminant, signal: str, background: str = "QCD") -> RocCurve:
        """The weighted ROC curve of ``discriminant`` for the jets of process ``signal`` against
        those of process ``background`` (:func:`sophon.tagging.weighted_roc`)."""
        dataset = self.dataset
        names = list(dataset.process_names)
        for name in (signal, background):
            if name not in names:
                raise ValueError(f"unknown process {name!r}; processes are {names}")
        codes = dataset.process_codes
        return weighted_roc(self.log_odds(discriminant), dataset.weights,
                            codes == names.index(signal), codes == names.index(background))

    def top_classes(self, rows: np.ndarray, k: int = 5,
                    chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """For jets ``rows``: the indices (len, k) and probabilities (len, k) of their k most
        probable classes, most probable first; ``chunk`` rows of scores at a time, so that a
        large selection never copies more than that."""
        rows = np.asarray(rows, dtype=np.int64)
        top = np.zeros((len(rows), k), dtype=np.int64)
        probabilities = np.zeros((len(rows), k), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            scores = self.dataset.scores[rows[start:start + chunk]]
            best = np.argsort(-scores, axis=1)[:, :k]
            top[start:start + chunk] = best
            probabilities[start:start + chunk] = np.take_along_axis(scores, best, axis=1)
        return top, probabilities


def most_probable_class(scores: np.ndarray) -> np.ndarray:
    """(N,) int16 index of each jet's most probable class of ``scores`` (N, classes), one
    column at a time (the store's score matrix is column-major, so argmax over rows would copy
    it)."""
    best = np.zeros(len(scores), dtype=np.int16)
    best_value = np.array(scores[:, 0], dtype=np.float32)
    for index in range(1, scores.shape[1]):
        column = scores[:, index]
        better = column > best_value
        best[better] = index
        np.maximum(best_value, column, out=best_value)
    return best


#: The jet columns a selection download carries, where the dataset has them.
EXPORT_COLUMNS = ("event_id", "jet_rank", "process", "weight", "jet_label", "jet_pt", "jet_eta",
                  "jet_phi", "jet_energy", "jet_sdmass", "jet_nparticles", "jet_tau1", "jet_tau2",
                  "jet_tau3", "jet_tau4", "umap_x", "umap_y")


def selection_frame(analysis: DatasetAnalysis, rows: np.ndarray, discriminant: Discriminant,
                    k: int = 5) -> pl.DataFrame:
    """Jets ``rows`` as a table: the dataset's :data:`EXPORT_COLUMNS`, D, ln(g_A/g_B), and the
    top-``k`` classes with their probabilities (GeV for masses and momenta)."""
    rows = np.asarray(rows, dtype=np.int64)
    dataset = analysis.dataset
    columns: dict[str, object] = {"jet": rows}
    for name in EXPORT_COLUMNS:
        if dataset.has(name):
            values = dataset.column(name)[rows]
            columns[name] = list(values) if values.dtype == object else values
    columns["D"] = analysis.discriminant(discriminant)[rows]
    columns["log_odds"] = analysis.log_odds(discriminant)[rows]
    top, probabilities = analysis.top_classes(rows, k)
    labels = np.array(LABELS, dtype=object)
    for position in range(k):
        columns[f"top{position + 1}_class"] = list(labels[top[:, position]])
        columns[f"top{position + 1}_prob"] = probabilities[:, position]
    return pl.DataFrame(columns)
