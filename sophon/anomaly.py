"""Weakly supervised resonance searches on jet latents or high-level features (arXiv:2405.12972
section IV, Figs. 4-5): a sliding-window bump hunt that needs no signal model.

*Windows.* For a mass hypothesis m0 (GeV) the signal region (SR) is [m0 - 15, m0 + 15), the
sidebands (SB) [m0 - 25, m0 - 15) and [m0 + 15, m0 + 25), and a window's classifier is applied to
the jets in [m0 - 5, m0 + 5) (:class:`MassWindow`); m0 slides from 65 to 295 GeV in steps of
10 GeV (:func:`sliding_windows`), so the application windows tile 60-300 GeV without gaps or
overlaps (half-open intervals) and their selected jets stack into one mSD histogram.

*Data and simulation from one simulated sample.* A search compares "data" with a "background
simulation". On a simulated dataset both come from the same jets, split so that they share none
(:func:`split_sample`): the background-process jets (QCD) of a random half of the events are the
background simulation, the other half's QCD plus every non-QCD jet is the data (the dataset's SM
mixture, or only the injected processes: :func:`data_weights`). Both halves' weights are scaled
up by the inverse of their share, so each stands for the dataset's full luminosity. Every event
is also given one of ``folds`` folds: each window's classifiers are trained on the other folds
and applied to this one (k-fold with swap; 2 folds: two halves that swap), so no jet is scored
by a classifier that saw it. Jets of one event share their role and fold.

*Methods* (:data:`METHODS`), each a binary classifier trained per window and fold:

- ``salad`` (SALAD): a first classifier learns the density ratio data / simulation in the
  sidebands from the features and the mass; the simulated SR jets are reweighted by it
  (extrapolated in mass into the SR), then a second classifier separates SR data from the
  reweighted SR simulation;
- ``cwola`` (CWoLa): SR data against SB data, no simulation in training;
- ``iad`` (idealized anomaly detection): SR data against SR simulation, the best a weakly
  supervised search can do when the simulation is perfect (here it is: data and simulation are
  the same QCD).

*Working point.* In each fold the score cut keeps ``efficiency`` (default 1e-3) of the
background simulation's weight in the application window (:func:`sophon.spectrum.
thresholds_for_efficiencies`; for every method, also CWoLa, the simulation only calibrates the
cut), so the background expected to pass is known: ``efficiency`` x the simulated QCD weight in
the window (:attr:`WindowResult.background_prediction`). A window is enhanced when the selected
data exceed it beyond its statistical error (:attr:`WindowResult.excess_significance`); on
simulation the truth also gives the non-QCD share of the selected jets by process against its
share before selection. The prediction holds only where the cut is resolved: where at least
:data:`MIN_WORKING_POINT_JETS` effective simulated jets pass it (1e-3 of a window's QCD needs
some 10^4 simulated QCD jets in each 10 GeV window); an unresolved window is reported as such
(:attr:`WindowResult.resolved`) and never counted as enhanced.

*Weights.* Jet weights (expected events) span orders of magnitude (on the embedded default a QCD
jet stands for 173 to 12,516 events, a Higgs jet for 0.3 to 21). Each classifier is trained with the jets' physical
weights, normalised so that each class sums to half the training jets (mean weight 1): the
classes balance, so the output's odds are the density ratio of the two classes, and the
non-QCD jets keep their physical share of the data, which is what a search on real data would
see. Weights are not clipped (that would change the mixture the classifier learns) nor
resampled (that would drop jets); their spread costs statistics, reported as Kish's effective
jet counts (sum w)^2 / sum w^2. SALAD's reweighting factors alone are clipped at
:data:`MAX_REWEIGHT`, so a few simulated jets in a region where the sideband classifier
extrapolates cannot carry the SR training.

The default classifier is scikit-learn's histogram gradient boosting (:func:`default_classifier`,
fast on a few CPU cores); any factory of an estimator with ``fit(X, y, sample_weight)`` and
``decision_function`` or ``predict_proba`` can replace it. :func:`significance_improvement`
gives the IAD's significance improvement eps_S / sqrt(eps_B) against the injected signal, over
repeated trainings (Fig. 5).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sophon import stats
from sophon.cli import report_json
from sophon.extras import require
from sophon.spectrum import thresholds_for_efficiencies
from sophon.stats import asimov_significance
from sophon.store import JetDataset

__all__ = [
    "METHODS", "FEATURE_SETS", "HIGHLEVEL_FEATURES", "DEFAULT_EFFICIENCY", "MAX_REWEIGHT",
    "AnomalyError", "MassWindow", "sliding_windows", "SearchSample", "sample_from_dataset",
    "SearchSplit", "split_sample", "data_weights", "QuantileBoosting", "default_classifier",
    "effective_count",
    "WindowResult", "ScanResult", "sliding_window_scan", "SignificanceImprovement",
    "significance_improvement", "register_cli",
]

#: half-widths of the signal region and of the application window, and the sidebands' width (GeV)
SIGNAL_REGION_HALF_WIDTH = 15.0
SIDEBAND_WIDTH = 10.0
APPLICATION_HALF_WIDTH = 5.0
#: the paper's scan: m0 from 65 to 295 GeV in steps of 10 GeV
DEFAULT_START, DEFAULT_STOP, DEFAULT_STEP = 65.0, 295.0, 10.0
#: the share of the background simulation's weight that a window's score cut keeps
DEFAULT_EFFICIENCY = 1e-3
METHODS = ("salad", "cwola", "iad")
FEATURE_SETS = ("latent", "highlevel")
#: mass-independent substructure ratios and the jet pT (GeV): the high-level comparison set
HIGHLEVEL_FEATURES = ("tau21", "tau32", "tau43", "jet_pt")
#: SALAD: the largest data/simulation density ratio given to one simulated jet
MAX_REWEIGHT = 10.0
#: a window counts as enhanced when its selected data exceed the prediction by this many sigma
ENHANCEMENT_SIGMA = 3.0
#: a working point is resolved when the simulated background passing it (all folds) amounts to
#: at least this many effective jets: a cut at the last few simulated jets predicts too little
#: background (the data's chance to score above the best of n simulated jets is 1/(n+1), not
#: the asked share), so an unresolved window's excess is biased upwards
MIN_WORKING_POINT_JETS = 10.0
#: bounds on what a caller may ask for (every input is bounded)
MAX_WINDOWS = 1000
MAX_FOLDS = 10
MAX_REPEATS = 50
MAX_SIGNAL_SCALE = 1e6
MASS_LIMIT = 1e5  # GeV
#: random streams of the split and of the training subsample, apart from any default_rng(seed)
SPLIT_STREAM, SUBSAMPLE_STREAM = 0x5A1AD, 0xC3013

#: an estimator factory: seed -> an unfitted binary classifier
ClassifierFactory = Callable[[int], object]
#: a progress report: (windows or trainings done, total); raise from it to cancel
Progress = Callable[[int, int], None]


class AnomalyError(ValueError):
    """An anomaly search cannot run as asked; the message names the value."""


@dataclass(frozen=True)
class MassWindow:
    """The regions of one mass hypothesis ``centre`` = m0 (GeV), each a half-open [low, high)."""

    centre: float

    @property
    def signal_region(self) -> tuple[float, float]:
        return (self.centre - SIGNAL_REGION_HALF_WIDTH, self.centre + SIGNAL_REGION_HALF_WIDTH)

    @property
    def sidebands(self) -> tuple[tuple[float, float], tuple[float, float]]:
        low, high = self.signal_region
        return ((low - SIDEBAND_WIDTH, low), (high, high + SIDEBAND_WIDTH))

    @property
    def application(self) -> tuple[float, float]:
        """Where the window's classifier selects jets: [m0 - 5, m0 + 5)."""
        return (self.centre - APPLICATION_HALF_WIDTH, self.centre + APPLICATION_HALF_WIDTH)

    @property
    def outer(self) -> tuple[float, float]:
        """From the lower sideband's low edge to the upper one's high edge."""
        return (self.sidebands[0][0], self.sidebands[1][1])

    def in_signal_region(self, mass: np.ndarray) -> np.ndarray:
        return _inside(mass, self.signal_region)

    def in_sidebands(self, mass: np.ndarray) -> np.ndarray:
        lower, upper = self.sidebands
        return _inside(mass, lower) | _inside(mass, upper)

    def in_application(self, mass: np.ndarray) -> np.ndarray:
        return _inside(mass, self.application)


def _inside(mass: np.ndarray, interval: tuple[float, float]) -> np.ndarray:
    return (mass >= interval[0]) & (mass < interval[1])


def sliding_windows(start: float = DEFAULT_START, stop: float = DEFAULT_STOP,
                    step: float = DEFAULT_STEP) -> tuple[MassWindow, ...]:
    """Windows with centres start, start + step, ... up to ``stop`` included (GeV)."""
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) \
                or abs(value) > MASS_LIMIT:
            raise AnomalyError(f"window {name} is {value!r}; expected a finite mass in GeV")
    if step <= 0:
        raise AnomalyError(f"window step is {step} GeV; it must be positive")
    if stop < start:
        raise AnomalyError(f"window stop {stop} GeV lies below start {start} GeV")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_WINDOWS:
        raise AnomalyError(f"{start}-{stop} GeV in steps of {step} GeV gives {count} windows; "
                           f"at most {MAX_WINDOWS}")
    return tuple(MassWindow(float(start + index * step)) for index in range(count))


@dataclass(frozen=True)
class SearchSample:
    """The jets of a search, columnar: ``features`` (N, F) float32 (named by
    ``feature_names``), ``mass`` (N,) soft-drop mass in GeV, ``weight`` (N,) expected events,
    ``process`` (N,) int32 codes into ``process_names``, ``event`` (N,) int64 event ids (jets of
    one event share their role and fold); ``background`` the process the background simulation
    is made of."""

    features: np.ndarray
    mass: np.ndarray
    weight: np.ndarray
    process: np.ndarray
    process_names: tuple[str, ...]
    event: np.ndarray
    feature_names: tuple[str, ...]
    background: str = "QCD"

    def __post_init__(self):
        n_jets = len(self.mass)
        if self.features.ndim != 2 or self.features.shape[0] != n_jets:
            raise AnomalyError(f"features have shape {self.features.shape}; expected "
                               f"({n_jets}, F) for {n_jets} jets")
        if len(self.feature_names) != self.features.shape[1]:
            raise AnomalyError(f"{len(self.feature_names)} feature names for "
                               f"{self.features.shape[1]} features")
        for name in ("weight", "process", "event"):
            if len(getattr(self, name)) != n_jets:
                raise AnomalyError(f"{name} has {len(getattr(self, name))} entries for "
                                   f"{n_jets} jets")
        if n_jets == 0:
            raise AnomalyError("the sample holds no jets")
        if not np.isfinite(self.features).all():
            row = int(np.argmin(np.isfinite(self.features).all(axis=1)))
            raise AnomalyError(f"jet {row} has a non-finite feature")
        if not np.isfinite(self.mass).all():
            raise AnomalyError(f"jet {int(np.argmin(np.isfinite(self.mass)))} has a non-finite "
                               "mass")
        bad = ~np.isfinite(self.weight) | (self.weight < 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise AnomalyError(f"jet {row} has weight {self.weight[row]}; weights must be "
                               "finite and non-negative (expected events)")
        if self.process.min() < 0 or self.process.max() >= len(self.process_names):
            raise AnomalyError(f"process codes run from {self.process.min()} to "
                               f"{self.process.max()}; expected 0 to "
                               f"{len(self.process_names) - 1}")
        if self.background not in self.process_names:
            raise AnomalyError(f"background process {self.background!r} is not in the sample "
                               f"(processes: {', '.join(self.process_names)})")

    def __len__(self) -> int:
        return len(self.mass)

    @property
    def is_background(self) -> np.ndarray:
        return self.process == self.process_names.index(self.background)

    def process_code(self, name: str) -> int:
        """The code of process ``name``; AnomalyError naming it when the sample has none."""
        if name not in self.process_names:
            raise AnomalyError(f"unknown process {name!r}; the sample has "
                               f"{', '.join(self.process_names)}")
        return self.process_names.index(name)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a jet with no N-1 prongs)."""
    numerator = numerator.astype(np.float32)
    denominator = denominator.astype(np.float32)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def sample_from_dataset(dataset: JetDataset, features: str = "latent", *,
                        leading_only: bool = True, background: str = "QCD") -> SearchSample:
    """A :class:`SearchSample` of ``dataset``'s jets: ``features`` "latent" (the 128-d latent)
    or "highlevel" (:data:`HIGHLEVEL_FEATURES`: tau2/tau1, tau3/tau2, tau4/tau3 and pT in GeV);
    ``leading_only``: only the leading jet of each event (``jet_rank`` 0), as in the paper's
    stacked leading-jet mSD (a dataset without ``jet_rank`` keeps every jet)."""
    if features not in FEATURE_SETS:
        raise AnomalyError(f"unknown feature set {features!r}; expected one of "
                           f"{', '.join(FEATURE_SETS)}")
    if features == "latent":
        if not dataset.has("latent"):
            raise AnomalyError(f"{dataset.path}: the dataset has no latents (column 'latent'); "
                               "use the high-level features")
        matrix = dataset.latents
        names = tuple(f"latent_{i}" for i in range(matrix.shape[1]))
    else:
        missing = [f"jet_tau{i}" for i in range(1, 5) if not dataset.has(f"jet_tau{i}")]
        if missing:
            raise AnomalyError(f"{dataset.path}: the high-level features need {missing}")
        tau = [dataset.column(f"jet_tau{i}") for i in range(1, 5)]
        matrix = np.column_stack([_ratio(tau[1], tau[0]), _ratio(tau[2], tau[1]),
                                  _ratio(tau[3], tau[2]),
                                  dataset.column("jet_pt").astype(np.float32)])
        names = HIGHLEVEL_FEATURES
    keep = (dataset.column("jet_rank") == 0 if leading_only and dataset.has("jet_rank")
            else np.ones(dataset.n_jets, dtype=bool))
    process = dataset.process_codes
    if dataset.has("event_id"):
        # an event id is unique within a process's generation, not across processes
        pairs = np.column_stack([process.astype(np.int64), dataset.column("event_id")])
        event = np.unique(pairs[keep], axis=0, return_inverse=True)[1].reshape(-1)
    else:
        event = np.arange(int(keep.sum()))
    return SearchSample(features=np.ascontiguousarray(matrix[keep], dtype=np.float32),
                        mass=dataset.column("jet_sdmass")[keep].astype(np.float64),
                        weight=dataset.weights[keep], process=process[keep],
                        process_names=dataset.process_names, event=event.astype(np.int64),
                        feature_names=tuple(names), background=background)


@dataclass(frozen=True)
class SearchSplit:
    """The independent roles and folds of a sample's jets: ``fold`` (N,) the fold a jet is
    tested in, ``is_simulation`` (N,) the background jets set aside as background simulation,
    ``weight`` (N,) expected events with each role scaled to the full luminosity."""

    fold: np.ndarray
    is_simulation: np.ndarray
    weight: np.ndarray
    folds: int


def split_sample(sample: SearchSample, *, folds: int = 2, simulation_fraction: float = 0.5,
                 seed: int = 0) -> SearchSplit:
    """Draw each event's role and fold at random (``seed``): its background jets are background
    simulation with probability ``simulation_fraction``, else data; simulated weights are scaled
    by 1 / ``simulation_fraction``, data background weights by 1 / (1 - it)."""
    if not isinstance(folds, int) or not 2 <= folds <= MAX_FOLDS:
        raise AnomalyError(f"folds is {folds!r}; expected 2 to {MAX_FOLDS}")
    if not 0.05 <= simulation_fraction <= 0.95:
        raise AnomalyError(f"simulation fraction is {simulation_fraction}; expected 0.05 to 0.95")
    # a stream of its own: a sample drawn with default_rng(seed) must not decide the roles
    rng = np.random.default_rng((SPLIT_STREAM, seed))
    n_events = int(sample.event.max()) + 1
    event_role, event_fold = rng.random(n_events), rng.integers(0, folds, n_events)
    is_background = sample.is_background
    is_simulation = is_background & (event_role[sample.event] < simulation_fraction)
    scale = np.where(is_simulation, 1.0 / simulation_fraction,
                     np.where(is_background, 1.0 / (1.0 - simulation_fraction), 1.0))
    return SearchSplit(fold=event_fold[sample.event].astype(np.int8), is_simulation=is_simulation,
                       weight=sample.weight * scale, folds=folds)


def data_weights(sample: SearchSample, split: SearchSplit, *,
                 signal_processes: Sequence[str] | None = None,
                 signal_scale: float = 1.0) -> np.ndarray:
    """(N,) each jet's weight as "data" (0: not data): the data half of the background, plus
    the jets of ``signal_processes`` (None: every non-background process, the dataset's SM
    mixture) with their weights times ``signal_scale`` (0: the background-only control)."""
    if not isinstance(signal_scale, (int, float)) or not 0 <= signal_scale <= MAX_SIGNAL_SCALE:
        raise AnomalyError(f"signal scale is {signal_scale!r}; expected 0 to {MAX_SIGNAL_SCALE:g}")
    background_code = sample.process_names.index(sample.background)
    if signal_processes is None:
        codes = [c for c in range(len(sample.process_names)) if c != background_code]
    else:
        codes = [sample.process_code(name) for name in signal_processes]
        if background_code in codes:
            raise AnomalyError(f"{sample.background!r} is the background; it cannot be injected "
                               "as signal")
    is_signal = np.isin(sample.process, codes)
    weight = np.where(is_signal, split.weight * signal_scale, 0.0)
    return np.where(sample.is_background & ~split.is_simulation, split.weight, weight)


class QuantileBoosting:
    """A histogram gradient boosting classifier on per-feature quantile codes: each feature is
    replaced by its rank among 255 unweighted quantiles of the training jets. Why: given sample
    weights, scikit-learn finds each feature's bin edges by 254 weighted percentiles, which costs
    far more than the boosting (20x on six features); a feature with at most 255 distinct values
    is binned as it is. Trees depend only on a feature's order, so the codes lose no more than
    the boosting's own 255 bins would."""

    QUANTILES = np.linspace(0.0, 1.0, 256)[1:-1]

    def __init__(self, booster):
        self.booster = booster
        self.edges: np.ndarray | None = None  # (254, F) feature values at the quantiles

    def _codes(self, features: np.ndarray) -> np.ndarray:
        return np.column_stack([np.searchsorted(self.edges[:, column], features[:, column],
                                                side="right")
                                for column in range(features.shape[1])]).astype(np.float32)

    def fit(self, features: np.ndarray, label: np.ndarray, sample_weight: np.ndarray | None = None):
        self.edges = np.quantile(features, self.QUANTILES, axis=0)
        self.booster.fit(self._codes(features), label, sample_weight=sample_weight)
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return self.booster.decision_function(self._codes(features))


def default_classifier(seed: int, *, max_iter: int = 100) -> QuantileBoosting:
    """scikit-learn's HistGradientBoostingClassifier (on quantile codes: :class:`QuantileBoosting`)
    with shallow trees and early stopping on a weighted validation share (data and simulation
    overlap almost everywhere, so more trees learn only fluctuations). Its threads follow
    OMP_NUM_THREADS."""
    require("sklearn", "anomaly", "the weakly supervised search's default classifier")
    from sklearn.ensemble import HistGradientBoostingClassifier

    return QuantileBoosting(HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=50,
        l2_regularization=1.0, early_stopping=True, validation_fraction=0.2,
        n_iter_no_change=10, random_state=seed))


def effective_count(weight: np.ndarray) -> float:
    """Kish's effective number of jets (sum w)^2 / sum w^2 of ``weight`` (0 for no weight)."""
    return stats.effective_count(np.sum(weight), np.sum(np.square(weight)))


def _balanced(weight: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``weight`` normalised so that each class sums to half the jets (mean weight 1)."""
    balanced = np.empty_like(weight)
    for value in (0, 1):
        members = label == value
        balanced[members] = weight[members] * (0.5 * len(weight) / weight[members].sum())
    return balanced


def _scores(model, features: np.ndarray) -> np.ndarray:
    """float32 log-odds of class 1 (a finer float32 resolution near the top than p itself)."""
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(features), dtype=np.float32).reshape(-1)
    probability = np.clip(model.predict_proba(features)[:, 1], 1e-12, 1 - 1e-12)
    return np.log(probability / (1 - probability)).astype(np.float32)


@dataclass
class _Trainer:
    """Fits a window's classifiers: the factory, a seed, the cap on training jets."""

    classifier: ClassifierFactory
    seed: int
    max_jets: int | None

    def fit(self, features: np.ndarray, label: np.ndarray, weight: np.ndarray, what: str):
        """A classifier of ``label`` (1 vs 0) on ``features``, weighted; at most ``max_jets``
        jets drawn uniformly (a uniform draw keeps both classes' weighted distributions)."""
        keep = weight > 0
        if self.max_jets is not None and keep.sum() > self.max_jets:
            rng = np.random.default_rng((SUBSAMPLE_STREAM, self.seed))
            chosen = rng.choice(np.flatnonzero(keep), self.max_jets, replace=False)
            keep = np.zeros_like(keep)
            keep[chosen] = True
        features, label, weight = features[keep], label[keep], weight[keep]
        for value, side in ((1, "first"), (0, "second")):
            if not weight[label == value].sum() > 0:
                raise AnomalyError(f"{what}: the {side} class has no jets with weight")
        model = self.classifier(self.seed)
        model.fit(features, label, sample_weight=_balanced(weight, label))
        return model


@dataclass(frozen=True)
class WindowResult:
    """One window's selection, summed over the test folds. Arrays are per process (P,) in the
    order of ``processes``, in expected events: ``selected`` and ``selected_squared`` the sum of
    weights and of squared weights of the data jets passing the cut in the application window,
    ``unselected`` and ``unselected_squared`` of all data jets there; ``selected_jets`` how many
    jets pass (jets tied at the cut pass with a share of their weight, so that the working
    point is exact); ``background_prediction`` (and ``_squared``) the simulated background passing,
    i.e. what the data would show without signal; ``background_efficiency`` the share of the
    simulated background's weight that passes (the working point achieved)."""

    window: MassWindow
    processes: tuple[str, ...]
    background: str
    selected: np.ndarray
    selected_squared: np.ndarray
    selected_jets: int
    unselected: np.ndarray
    unselected_squared: np.ndarray
    background_prediction: float
    background_prediction_squared: float
    background_efficiency: float

    @property
    def background_prediction_jets(self) -> float:
        """Kish's effective number of simulated jets behind :attr:`background_prediction`."""
        squared = self.background_prediction_squared
        return self.background_prediction ** 2 / squared if squared > 0 else 0.0

    @property
    def resolved(self) -> bool:
        """Whether the working point rests on at least :data:`MIN_WORKING_POINT_JETS`
        effective simulated jets (else the background prediction is biased low)."""
        return self.background_prediction_jets >= MIN_WORKING_POINT_JETS

    @property
    def _signal(self) -> np.ndarray:
        return np.array([name != self.background for name in self.processes])

    def _share(self, weight: np.ndarray, squared: np.ndarray,
               background_variance_floor: float = 0.0) -> tuple[float, float]:
        """The non-background share S / (S + B) and its error from sum w^2 (propagated), the
        variance of B at least ``background_variance_floor``."""
        signal, background = weight[self._signal].sum(), weight[~self._signal].sum()
        total = signal + background
        if total <= 0:
            return 0.0, 0.0
        background_variance = max(squared[~self._signal].sum(), background_variance_floor)
        variance = (background ** 2 * squared[self._signal].sum()
                    + signal ** 2 * background_variance) / total ** 4
        # a share lies in [0, 1]: an error above 1 says only that it is unconstrained
        return float(signal / total), min(float(math.sqrt(variance)), 1.0)

    @property
    def non_qcd_share(self) -> tuple[float, float]:
        """(share, error) of the non-background processes in the selected data weight. The
        background's variance is at least that of the simulated background passing the cut:
        where no (or one) data background jet passes, its sum of w^2 would call a share of 1
        exact, while the data could as well have held the few heavy jets the simulation
        expects."""
        return self._share(self.selected, self.selected_squared,
                           self.background_prediction_squared)

    @property
    def baseline_share(self) -> tuple[float, float]:
        """(share, error) of the non-background processes in the application window before the
        cut."""
        return self._share(self.unselected, self.unselected_squared)

    @property
    def share_enhancement(self) -> float:
        """(selected share - baseline share) / their combined error: how far the cut raises the
        non-background share (truth of the simulation; 0 when neither has an error)."""
        (share, error), (baseline, baseline_error) = self.non_qcd_share, self.baseline_share
        combined = math.hypot(error, baseline_error)
        return (share - baseline) / combined if combined > 0 else 0.0

    @property
    def excess(self) -> tuple[float, float]:
        """(selected data - background prediction, its error) in expected events."""
        error = math.sqrt(self.selected_squared.sum() + self.background_prediction_squared)
        return float(self.selected.sum() - self.background_prediction), error

    @property
    def excess_significance(self) -> float:
        excess, error = self.excess
        return excess / error if error > 0 else 0.0

    @property
    def effective_jets(self) -> float:
        """Kish's effective number of selected data jets, (sum w)^2 / sum w^2."""
        squared = self.selected_squared.sum()
        return float(self.selected.sum() ** 2 / squared) if squared > 0 else 0.0

    @property
    def asimov_significance(self) -> float:
        """The selected non-background weight's discovery significance over the selected
        background (the truth of the simulation: what the cut would give with this signal)."""
        return float(asimov_significance(self.selected[self._signal].sum(),
                                         self.selected[~self._signal].sum()))

    def to_dict(self) -> dict:
        share, share_error = self.non_qcd_share
        baseline, baseline_error = self.baseline_share
        excess, excess_error = self.excess
        return {
            "m0_GeV": self.window.centre, "signal_region_GeV": list(self.window.signal_region),
            "sidebands_GeV": [list(band) for band in self.window.sidebands],
            "application_GeV": list(self.window.application),
            "selected_events": dict(zip(self.processes, self.selected.round(6).tolist())),
            "selected_jets": self.selected_jets, "effective_jets": round(self.effective_jets, 2),
            "non_qcd_share": round(share, 6), "non_qcd_share_error": round(share_error, 6),
            "baseline_share": round(baseline, 6), "baseline_share_error": round(baseline_error, 6),
            "share_enhancement": round(self.share_enhancement, 3),
            "background_prediction": round(self.background_prediction, 6),
            "background_prediction_jets": round(self.background_prediction_jets, 2),
            "resolved": self.resolved,
            "excess": round(excess, 6), "excess_error": round(excess_error, 6),
            "excess_significance": round(self.excess_significance, 3),
            "background_efficiency": self.background_efficiency,
        }


@dataclass(frozen=True)
class ScanResult:
    """A sliding-window search: one :class:`WindowResult` per window, and how it ran."""

    method: str
    feature_names: tuple[str, ...]
    efficiency: float
    control: bool
    seed: int
    windows: tuple[WindowResult, ...]
    seconds: float

    @property
    def enhanced_windows(self) -> tuple[float, ...]:
        """Centres (GeV) of the resolved windows whose selected data exceed the background
        prediction by more than :data:`ENHANCEMENT_SIGMA` standard deviations."""
        return tuple(w.window.centre for w in self.windows
                     if w.resolved and w.excess_significance > ENHANCEMENT_SIGMA)

    @property
    def share_enhanced_windows(self) -> tuple[float, ...]:
        """Centres (GeV) of the windows whose cut raises the non-background share by more than
        :data:`ENHANCEMENT_SIGMA` standard deviations (the simulation's truth)."""
        return tuple(w.window.centre for w in self.windows
                     if w.share_enhancement > ENHANCEMENT_SIGMA)

    @property
    def unresolved_windows(self) -> tuple[float, ...]:
        """Centres (GeV) of the windows whose working point is not resolved."""
        return tuple(w.window.centre for w in self.windows if not w.resolved)

    def stack(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The stacked mSD of the selected data jets: application-window edges (W, 2) in GeV
        and, per process, the selected expected events (W,); with the default 10 GeV step the
        windows tile the mass axis, so these are the bins of one histogram."""
        edges = np.array([w.window.application for w in self.windows])
        processes = self.windows[0].processes
        stacked = np.array([w.selected for w in self.windows])
        return edges, {name: stacked[:, index] for index, name in enumerate(processes)}

    def to_dict(self) -> dict:
        significances = [w.excess_significance for w in self.windows if w.resolved]
        return {
            "method": self.method, "features": ("latent" if self.feature_names[0] == "latent_0"
                                                else list(self.feature_names)),
            "efficiency": self.efficiency, "control": self.control, "seed": self.seed,
            "seconds": round(self.seconds, 2),
            "enhanced_windows_GeV": list(self.enhanced_windows),
            "unresolved_windows_GeV": list(self.unresolved_windows),
            "share_enhanced_windows_GeV": list(self.share_enhanced_windows),
            "max_resolved_excess_significance": (round(max(significances), 3)
                                                 if significances else None),
            "windows": [w.to_dict() for w in self.windows],
        }


def _check_efficiency(efficiency: float) -> None:
    if not isinstance(efficiency, (int, float)) or not 0 < efficiency < 1:
        raise AnomalyError(f"working point efficiency is {efficiency!r}; expected a share of the "
                           "background weight between 0 and 1")


def _check_window(sample: SearchSample, window: MassWindow) -> None:
    low, high = window.outer
    if low < sample.mass.min() or high > sample.mass.max():
        raise AnomalyError(f"window m0 = {window.centre:g} GeV needs jets from {low:g} to "
                           f"{high:g} GeV; the sample's masses run from {sample.mass.min():.1f} "
                           f"to {sample.mass.max():.1f} GeV")


def _check_max_jets(max_jets: int | None) -> None:
    if max_jets is not None and (not isinstance(max_jets, int) or not 100 <= max_jets <= 10**8):
        raise AnomalyError(f"max jets per window is {max_jets!r}; expected 100 to 10^8 or None")


def _window_classifier(method: str, window: MassWindow, sample: SearchSample,
                       split: SearchSplit, data: np.ndarray, train: np.ndarray,
                       trainer: _Trainer):
    """The ``method``'s classifier of one window, trained on the jets ``train``."""
    is_data = train & (data > 0)
    is_simulation = train & split.is_simulation
    in_signal_region = window.in_signal_region(sample.mass)
    in_sidebands = window.in_sidebands(sample.mass)
    where = f"window m0 = {window.centre:g} GeV"
    if method == "cwola":
        for band in window.sidebands:
            if not (is_data & _inside(sample.mass, band)).any():
                raise AnomalyError(f"{where}: the sideband {band[0]:g}-{band[1]:g} GeV holds no "
                                   "data jets")
        rows = is_data & (in_signal_region | in_sidebands)
        return trainer.fit(sample.features[rows], in_signal_region[rows].astype(np.int8),
                           data[rows], f"{where}, CWoLa (signal region vs sidebands)")
    simulated_weight = split.weight.copy()
    if method == "salad":
        for band in window.sidebands:
            inside = _inside(sample.mass, band)
            for role, members in (("data", is_data), ("simulated", is_simulation)):
                if not (members & inside).any():
                    raise AnomalyError(f"{where}: the sideband {band[0]:g}-{band[1]:g} GeV holds "
                                       f"no {role} jets")
        def with_mass(rows: np.ndarray) -> np.ndarray:
            return np.column_stack([sample.features[rows], sample.mass[rows].astype(np.float32)])

        rows = in_sidebands & (is_data | is_simulation)
        reweighter = trainer.fit(with_mass(rows), is_data[rows].astype(np.int8),
                                 np.where(is_data, data, split.weight)[rows],
                                 f"{where}, SALAD sideband reweighting")
        # balanced classes: the odds are the data/simulation density ratio
        target = is_simulation & in_signal_region
        ratio = np.exp(np.clip(_scores(reweighter, with_mass(target)), -50, 50))
        simulated_weight[target] *= np.minimum(ratio, MAX_REWEIGHT)
    rows = in_signal_region & (is_data | is_simulation)
    return trainer.fit(sample.features[rows], is_data[rows].astype(np.int8),
                       np.where(is_data, data, simulated_weight)[rows],
                       f"{where}, {method.upper()} signal region (data vs simulation)")


@dataclass(frozen=True)
class _WorkingPoint:
    """A score cut that keeps exactly a share of the reference weight: jets above ``cut`` pass,
    jets tied at it pass with the weight fraction ``tie_share`` (a tree ensemble that learnt
    little gives many jets one score; letting all of them pass would overshoot the working
    point by far)."""

    cut: float
    tie_share: float

    @classmethod
    def keeping(cls, scores: np.ndarray, weight: np.ndarray, efficiency: float) -> _WorkingPoint:
        """The cut keeping ``efficiency`` of ``weight`` (:func:`sophon.spectrum.
        thresholds_for_efficiencies`), with the tied jets' share that makes it exact."""
        cut = float(thresholds_for_efficiencies(scores, weight, [efficiency])[0])
        above, tied = weight[scores > cut].sum(), weight[scores == cut].sum()
        tie_share = (efficiency * weight.sum() - above) / tied if tied > 0 else 0.0
        return cls(cut, float(np.clip(tie_share, 0.0, 1.0)))

    def passing(self, scores: np.ndarray) -> np.ndarray:
        """(N,) the share of each jet's weight that passes: 1, ``tie_share`` or 0."""
        return np.where(scores > self.cut, 1.0, np.where(scores == self.cut, self.tie_share, 0.0))


def _scan_window(method: str, window: MassWindow, sample: SearchSample, split: SearchSplit,
                 data: np.ndarray, efficiency: float, trainer: _Trainer) -> WindowResult:
    n_processes = len(sample.process_names)
    applied = window.in_application(sample.mass)
    selected = np.zeros(n_processes)
    selected_squared = np.zeros(n_processes)
    selected_jets = 0
    prediction = prediction_squared = simulated_total = 0.0
    for fold in range(split.folds):
        model = _window_classifier(method, window, sample, split, data, split.fold != fold,
                                   trainer)
        test = applied & (split.fold == fold)
        simulated = test & split.is_simulation
        if not simulated.any():
            raise AnomalyError(f"window m0 = {window.centre:g} GeV: fold {fold} has no simulated "
                               f"jets in {window.application[0]:g}-{window.application[1]:g} GeV "
                               "to set the working point")
        simulated_scores = _scores(model, sample.features[simulated])
        simulated_weight = split.weight[simulated]
        working_point = _WorkingPoint.keeping(simulated_scores, simulated_weight, efficiency)
        passing_simulation = simulated_weight * working_point.passing(simulated_scores)
        prediction += passing_simulation.sum()
        prediction_squared += np.square(passing_simulation).sum()
        simulated_total += simulated_weight.sum()
        tested = np.flatnonzero(test & (data > 0))
        passing = data[tested] * working_point.passing(_scores(model, sample.features[tested]))
        selected += np.bincount(sample.process[tested], weights=passing, minlength=n_processes)
        selected_squared += np.bincount(sample.process[tested], weights=passing ** 2,
                                        minlength=n_processes)
        selected_jets += int(np.count_nonzero(passing))
    in_window = applied & (data > 0)
    return WindowResult(
        window=window, processes=sample.process_names, background=sample.background,
        selected=selected, selected_squared=selected_squared, selected_jets=selected_jets,
        unselected=np.bincount(sample.process[in_window], weights=data[in_window],
                               minlength=n_processes),
        unselected_squared=np.bincount(sample.process[in_window], weights=data[in_window] ** 2,
                                       minlength=n_processes),
        background_prediction=float(prediction),
        background_prediction_squared=float(prediction_squared),
        background_efficiency=float(prediction / simulated_total))


def sliding_window_scan(sample: SearchSample, *, method: str = "salad",
                        windows: Sequence[MassWindow] | None = None,
                        efficiency: float = DEFAULT_EFFICIENCY, folds: int = 2,
                        simulation_fraction: float = 0.5,
                        signal_processes: Sequence[str] | None = None,
                        signal_scale: float = 1.0, seed: int = 0,
                        max_jets_per_window: int | None = None,
                        classifier: ClassifierFactory | None = None,
                        progress: Progress | None = None) -> ScanResult:
    """The sliding-window search of ``method`` over ``windows`` (default: m0 = 65-295 GeV in
    steps of 10 GeV), each window's classifiers applied in [m0 - 5, m0 + 5) at the cut keeping
    ``efficiency`` of the background simulation's weight there. Data: :func:`data_weights`
    (``signal_scale`` 0: the background-only control, :attr:`ScanResult.control`).
    ``max_jets_per_window`` caps each classifier's training jets (None: all); ``progress`` is
    called with (windows done, windows) after each window, and may raise to cancel the scan."""
    if method not in METHODS:
        raise AnomalyError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    _check_efficiency(efficiency)
    _check_max_jets(max_jets_per_window)
    windows = tuple(sliding_windows() if windows is None else windows)
    if not windows or len(windows) > MAX_WINDOWS:
        raise AnomalyError(f"{len(windows)} windows; expected 1 to {MAX_WINDOWS}")
    for window in windows:
        _check_window(sample, window)
    started = time.perf_counter()
    split = split_sample(sample, folds=folds, simulation_fraction=simulation_fraction, seed=seed)
    data = data_weights(sample, split, signal_processes=signal_processes,
                        signal_scale=signal_scale)
    trainer = _Trainer(classifier or default_classifier, seed, max_jets_per_window)
    results = []
    for done, window in enumerate(windows):
        results.append(_scan_window(method, window, sample, split, data, efficiency, trainer))
        if progress is not None:
            progress(done + 1, len(windows))
    return ScanResult(method=method, feature_names=sample.feature_names, efficiency=efficiency,
                      control=signal_scale == 0, seed=seed, windows=tuple(results),
                      seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class SignificanceImprovement:
    """The IAD's significance improvement in one window against the injected signal:
    ``signal_to_background`` (K,) the injected S/B in the signal region's data,
    ``injected_events`` (K,) that signal in expected events and ``significance`` (K,) the
    injected S / sqrt(B) (both averaged over the trainings' splits), ``improvement`` (K, R)
    eps_S / sqrt(eps_B) of each of R trainings (eps_B the share of the simulated background
    passing the cut at ``efficiency``, eps_S the share of the held-out signal weight passing it,
    both in the signal region)."""

    window: MassWindow
    signal: str
    efficiency: float
    signal_to_background: np.ndarray
    injected_events: np.ndarray
    significance: np.ndarray
    improvement: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.improvement.mean(axis=1)

    @property
    def spread(self) -> np.ndarray:
        """The standard deviation over the trainings (K,)."""
        return self.improvement.std(axis=1, ddof=1) if self.improvement.shape[1] > 1 \
            else np.zeros(len(self.improvement))

    def to_dict(self) -> dict:
        return {"m0_GeV": self.window.centre, "signal": self.signal,
                "efficiency": self.efficiency,
                "signal_to_background": self.signal_to_background.tolist(),
                "injected_events": self.injected_events.round(3).tolist(),
                "injected_significance": self.significance.round(4).tolist(),
                "improvement_mean": self.mean.round(4).tolist(),
                "improvement_spread": self.spread.round(4).tolist(),
                "improvement": self.improvement.round(4).tolist()}


def significance_improvement(sample: SearchSample, *, window: MassWindow, signal: str,
                             signal_to_background: Sequence[float] = (0.005, 0.01, 0.02, 0.05),
                             repeats: int = 5, efficiency: float = 1e-2, folds: int = 2,
                             simulation_fraction: float = 0.5, seed: int = 0,
                             max_jets_per_window: int | None = None,
                             classifier: ClassifierFactory | None = None,
                             progress: Progress | None = None) -> SignificanceImprovement:
    """IAD (SR data vs SR simulation) in ``window`` with the jets of process ``signal``
    injected into the data at each ``signal_to_background`` (S/B of weights in the signal
    region), over ``repeats`` trainings (each a new split and classifier seed)."""
    _check_efficiency(efficiency)
    _check_max_jets(max_jets_per_window)
    _check_window(sample, window)
    if not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise AnomalyError(f"repeats is {repeats!r}; expected 1 to {MAX_REPEATS}")
    ratios = np.asarray(signal_to_background, dtype=np.float64)
    if ratios.ndim != 1 or not 1 <= len(ratios) <= 100 or not np.all((ratios > 0) & (ratios <= 10)):
        raise AnomalyError(f"signal to background {list(signal_to_background)[:5]}; expected "
                           "1 to 100 ratios in (0, 10]")
    is_signal = sample.process == sample.process_code(signal)
    in_signal_region = window.in_signal_region(sample.mass)
    if not (is_signal & in_signal_region).any():
        raise AnomalyError(f"process {signal!r} has no jets in the signal region "
                           f"{window.signal_region[0]:g}-{window.signal_region[1]:g} GeV")
    improvement = np.zeros((len(ratios), repeats))
    injected = np.zeros(len(ratios))
    significance = np.zeros(len(ratios))
    total = len(ratios) * repeats
    for repeat in range(repeats):
        split = split_sample(sample, folds=folds, simulation_fraction=simulation_fraction,
                             seed=seed + repeat)
        trainer = _Trainer(classifier or default_classifier, seed + repeat, max_jets_per_window)
        background = data_weights(sample, split, signal_processes=[signal], signal_scale=0.0)
        background_in_region = background[in_signal_region].sum()
        signal_in_region = split.weight[is_signal & in_signal_region].sum()
        for index, ratio in enumerate(ratios):
            scale = ratio * background_in_region / signal_in_region
            data = background + np.where(is_signal, split.weight * scale, 0.0)
            injected[index] += ratio * background_in_region / repeats
            significance[index] += ratio * math.sqrt(background_in_region) / repeats
            passing_signal = signal_total = passing_background = background_total = 0.0
            for fold in range(folds):
                model = _window_classifier("iad", window, sample, split, data,
                                           split.fold != fold, trainer)
                test = in_signal_region & (split.fold == fold)
                simulated, held_out_signal = test & split.is_simulation, test & is_signal
                if not simulated.any() or not held_out_signal.any():
                    raise AnomalyError(f"window m0 = {window.centre:g} GeV: fold {fold} has no "
                                       f"simulated or no {signal!r} jets in the signal region "
                                       "to measure the efficiencies on")
                simulated_scores = _scores(model, sample.features[simulated])
                working_point = _WorkingPoint.keeping(simulated_scores, split.weight[simulated],
                                                      efficiency)
                passing_background += np.dot(split.weight[simulated],
                                             working_point.passing(simulated_scores))
                background_total += split.weight[simulated].sum()
                signal_scores = _scores(model, sample.features[held_out_signal])
                passing_signal += np.dot(split.weight[held_out_signal],
                                         working_point.passing(signal_scores))
                signal_total += split.weight[held_out_signal].sum()
            improvement[index, repeat] = ((passing_signal / signal_total)
                                          / math.sqrt(passing_background / background_total))
            if progress is not None:
                progress(repeat * len(ratios) + index + 1, total)
    return SignificanceImprovement(window=window, signal=signal, efficiency=efficiency,
                                   signal_to_background=ratios, injected_events=injected,
                                   significance=significance, improvement=improvement)


def _bounded(kind: type, low: float, high: float):
    """An argparse type: a ``kind`` number in [low, high]."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} lies outside {low:g} to {high:g}")
        return value
    return parse


def _main(args: argparse.Namespace) -> int:
    dataset = JetDataset(args.dataset)
    sample = sample_from_dataset(dataset, args.features, leading_only=not args.all_jets,
                                 background=args.background)
    classifier = lambda seed: default_classifier(seed, max_iter=args.max_iter)  # noqa: E731
    common = dict(efficiency=args.efficiency, folds=args.folds, seed=args.seed,
                  simulation_fraction=args.simulation_fraction,
                  max_jets_per_window=args.max_jets, classifier=classifier)
    if args.improvement:
        if not args.signal or len(args.signal) != 1 or args.window is None:
            raise AnomalyError("--improvement needs --window M0 and exactly one --signal PROCESS")
        result = significance_improvement(
            sample, window=MassWindow(args.window), signal=args.signal[0],
            signal_to_background=args.signal_to_background, repeats=args.repeats, **common)
    else:
        result = sliding_window_scan(
            sample, method=args.method, windows=sliding_windows(args.start, args.stop, args.step),
            signal_processes=args.signal, signal_scale=0.0 if args.control else args.signal_scale,
            **common)
    summary = result.to_dict()
    summary["dataset"] = str(args.dataset)
    summary["jets"] = len(sample)
    return report_json(summary, args.output)


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "anomaly", help="weakly supervised sliding-window resonance search (SALAD, CWoLa, IAD) "
                        "on latents or high-level features; prints a JSON summary")
    parser.add_argument("dataset", type=Path, help="dataset file or directory (sophon.store)")
    parser.add_argument("--method", choices=METHODS, default="salad")
    parser.add_argument("--features", choices=FEATURE_SETS, default="latent")
    parser.add_argument("--start", type=_bounded(float, 0, MASS_LIMIT), default=DEFAULT_START,
                        help="first window centre m0 in GeV")
    parser.add_argument("--stop", type=_bounded(float, 0, MASS_LIMIT), default=DEFAULT_STOP,
                        help="last window centre in GeV")
    parser.add_argument("--step", type=_bounded(float, 1, MASS_LIMIT), default=DEFAULT_STEP,
                        help="GeV between window centres")
    parser.add_argument("--efficiency", type=_bounded(float, 1e-9, 0.5),
                        default=DEFAULT_EFFICIENCY,
                        help="share of the background simulation's weight the cut keeps")
    parser.add_argument("--folds", type=_bounded(int, 2, MAX_FOLDS), default=2)
    parser.add_argument("--simulation-fraction", type=_bounded(float, 0.05, 0.95), default=0.5,
                        help="share of the background events used as background simulation")
    parser.add_argument("--signal", action="append", default=None, metavar="PROCESS",
                        help="inject only this process into the data (repeatable; default: "
                             "every non-background process, the SM mixture)")
    parser.add_argument("--signal-scale", type=_bounded(float, 0, MAX_SIGNAL_SCALE), default=1.0,
                        help="multiply the injected processes' weights")
    parser.add_argument("--control", action="store_true",
                        help="background-only data (no signal injected): the control run")
    parser.add_argument("--background", default="QCD", help="the background process")
    parser.add_argument("--all-jets", action="store_true",
                        help="every jet, not only each event's leading jet")
    parser.add_argument("--max-jets", type=_bounded(int, 100, 10**8), default=None,
                        help="at most this many training jets per classifier")
    parser.add_argument("--max-iter", type=_bounded(int, 1, 1000), default=100,
                        help="boosting iterations of each classifier")
    parser.add_argument("--improvement", action="store_true",
                        help="instead of the scan: the IAD significance improvement against the "
                             "injected S/B of one --signal process in the window --window")
    parser.add_argument("--window", type=_bounded(float, 0, MASS_LIMIT), default=None,
                        metavar="M0", help="with --improvement: the window centre in GeV")
    parser.add_argument("--signal-to-background", type=_bounded(float, 1e-6, 10), nargs="+",
                        default=[0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--repeats", type=_bounded(int, 1, MAX_REPEATS), default=5)
    parser.add_argument("--seed", type=_bounded(int, 0, 2**31 - 1), default=0)
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the JSON here")
    parser.set_defaults(handler=_main)

