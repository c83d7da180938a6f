"""Efficiency scans: thresholds on a discriminant, mass spectra at each efficiency, significance.

The central object is :class:`EfficiencyScan`. For one discriminant it finds the thresholds that
keep weighted fractions ``efficiencies`` of the jets (or of a reference subset such as QCD) and,
in the same single pass over the jets, fills a cube ``sum_of_weights[level, process, mass_bin]``
of the jets passing each threshold. Every view (the spectrum at each efficiency, the per-process
stack, the yield, the significance in a mass window) is then a sum over that small cube, so
moving between efficiencies never touches the jets again.

Thresholds are found exactly without sorting all jets: the discriminant's float32 bit patterns
are bucketed (monotonic in value), the bucket holding each cut is located from cumulative bucket
weights, and only the jets of those few buckets are sorted.

Every spectrum is also a scikit-hep ``hist.Hist`` with ``Weight`` storage (sum of weights and of
squared weights, flow bins included) and named, labelled axes: ``process`` (a category) and
``mass`` (GeV, labelled by the scan's :attr:`EfficiencyScan.mass_label`):
:meth:`EfficiencyScan.to_hist` (the stack at a level), :meth:`EfficiencyScan.spectrum_hist` (its
sum over processes), :meth:`SignificanceCurve.to_hist` (the templates behind a significance
point). :mod:`sophon.histograms` writes them to ROOT (uproot), ``.npz`` and JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from sophon.stats import asimov_significance, effective_count

__all__ = [
    "DEFAULT_EFFICIENCIES",
    "JET_MASS_LABEL",
    "DIJET_MASS_LABEL",
    "MassBinning",
    "DEFAULT_MASS_BINNING",
    "BinnedYield",
    "thresholds_for_efficiencies",
    "BUCKET_BITS",
    "order_keys",
    "key_values",
    "cut_positions",
    "nearest_level",
    "densest_window",
    "EfficiencyScan",
    "significance_scan",
    "SignificanceCurve",
]

# 1, 10^-0.5, ..., 10^-4: the nine efficiencies of the paper's Fig. 3.
DEFAULT_EFFICIENCIES = 10.0 ** -np.arange(0.0, 4.01, 0.5)
#: The cut search buckets the top 16 bits of the 32-bit order key (:func:`order_keys`): 2^16
#: buckets over the float32 range, each 1/128 of an octave, so a cut's bucket holds few jets
#: and the bucket histogram is small next to the jets.
BUCKET_BITS = 16
# Labels of the mass axis of a scan's histograms (GeV).
JET_MASS_LABEL = "jet soft-drop mass [GeV]"
DIJET_MASS_LABEL = "dijet mass [GeV]"


@dataclass(frozen=True)
class MassBinning:
    """Regular bins of soft-drop (or dijet) mass in GeV."""

    bins: int = 100
    low: float = 0.0
    high: float = 500.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        edges = self.edges
        return 0.5 * (edges[1:] + edges[:-1])

    def index(self, mass: np.ndarray) -> np.ndarray:
        """Bin index per jet as int32: 0 underflow, 1..bins the bins, bins+1 overflow or NaN."""
        scaled = (np.asarray(mass, dtype=np.float64) - self.low) * (self.bins / (self.high - self.low))
        index = np.floor(scaled)
        index = np.where(np.isnan(index), self.bins, index)
        return (np.clip(index, -1, self.bins) + 1).astype(np.int32)


DEFAULT_MASS_BINNING = MassBinning()


@dataclass(frozen=True)
class BinnedYield:
    """Weighted events in some mass bins of one efficiency level, and what they rest on.

    ``events`` the sum of weights; ``error`` sqrt(sum of w^2), the simulation-statistics
    (MC) error of ``events``; ``effective_jets`` Kish's (sum w)^2 / sum w^2, how many
    equal-weight jets would carry the same statistics (one jet of a large weight makes it
    about 1, however many events it stands for); ``low``, ``high`` the outer bin edges (GeV).
    """

    events: float
    error: float
    effective_jets: float
    low: float
    high: float

    @property
    def mass(self) -> float:
        """The centre of the bins (GeV): a one-bin yield's bin centre."""
        return 0.5 * (self.low + self.high)

    def __str__(self) -> str:
        return (f"{self.events:,.0f} +- {self.error:,.0f} events "
                f"({self.effective_jets:,.1f} effective jets)")


def nearest_level(efficiencies: Sequence[float], efficiency: float) -> int:
    """The index of the efficiency in ``efficiencies`` closest to ``efficiency`` in log scale."""
    return int(np.argmin(np.abs(np.log10(np.asarray(efficiencies, dtype=np.float64))
                                - np.log10(efficiency))))


def densest_window(mass: np.ndarray, weights: np.ndarray, binning: MassBinning = DEFAULT_MASS_BINNING,
                   fraction: float = 0.5) -> tuple[float, float]:
    """The narrowest mass interval (GeV) holding ``fraction`` of the weight of the jets inside
    ``binning``, snapped outward to its bin edges: a signal's mass window that the tails of
    recoil jets do not widen. The whole binned range when no jet has positive weight in it."""
    mass = np.asarray(mass, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(mass) & (weights > 0) & (mass >= binning.low) & (mass < binning.high)
    if not keep.any():
        return (float(binning.low), float(binning.high))
    order = np.argsort(mass[keep])
    mass = mass[keep][order]
    cumulative = np.concatenate([[0.0], np.cumsum(weights[keep][order])])
    # for every first jet i, the first last jet j with weight(i..j) >= fraction of the total
    ends = np.searchsorted(cumulative, cumulative[:-1] + fraction * cumulative[-1], side="left")
    starts = np.flatnonzero(ends <= len(mass))
    widths = mass[ends[starts] - 1] - mass[starts]
    best = starts[int(np.argmin(widths))]
    low, high = mass[best], mass[int(ends[best]) - 1]
    width = (binning.high - binning.low) / binning.bins
    low = binning.low + np.floor((low - binning.low) / width) * width
    high = binning.low + np.ceil((high - binning.low) / width) * width
    low = float(np.clip(low, binning.low, binning.high - width))
    high = float(np.clip(max(high, low + width), binning.low + width, binning.high))
    return (low, high)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the float32 order of ``values`` (-inf < ... < +inf; -0.0 is
    first made +0.0, so that equal values have equal keys). Their top :data:`BUCKET_BITS` bits
    are the buckets of :func:`thresholds_for_efficiencies` and of the Dask scan."""
    canonical = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0
    bits = np.ascontiguousarray(canonical).view(np.int32)
    # negative floats: flip every bit; positive: flip the sign bit (arithmetic shift gives the mask)
    flip = (bits >> 31) | np.int32(-0x80000000)
    return (bits ^ flip).view(np.uint32)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of order ``keys`` (the inverse of :func:`order_keys`)."""
    keys = np.asarray(keys, dtype=np.uint32)
    positive = keys >= np.uint32(0x80000000)
    bits = np.where(positive, keys ^ np.uint32(0x80000000), ~keys)
    return bits.astype(np.uint32).view(np.float32)


def cut_positions(run_buckets: np.ndarray, cut_buckets: np.ndarray, weights: np.ndarray,
                  weight_above: np.ndarray, targets: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each level's cut falls among candidates sorted highest first.

    The candidates (their buckets ``run_buckets`` and ``weights``, in that order) fall into
    contiguous runs of one bucket each; level ``l`` is cut inside bucket ``cut_buckets[l]``,
    above which lies the weight ``weight_above[l]``, where the weight reaches ``targets[l]``:
    one search over the candidates' running sum (levels x log(candidates), not a pass over the
    candidates for each level). Returns ``positions`` (the candidate at the cut), ``found``
    (the bucket holds a candidate) and ``reached`` (the weight at or above the cut), each
    (levels,).
    """
    descending, wanted = -run_buckets.astype(np.int64), -cut_buckets.astype(np.int64)
    starts = np.searchsorted(descending, wanted, side="left")
    ends = np.searchsorted(descending, wanted, side="right")
    found = ends > starts
    if not len(weights):
        return np.zeros(len(targets), dtype=np.intp), found, np.asarray(weight_above, float)
    running = np.cumsum(weights)
    before = np.where(starts > 0, running[np.maximum(starts - 1, 0)], 0.0)
    positions = np.searchsorted(running, targets - weight_above + before, side="left")
    positions = np.clip(positions, starts, np.maximum(ends - 1, starts))
    return positions, found, weight_above + running[positions] - before


def thresholds_for_efficiencies(values: np.ndarray, weights: np.ndarray,
                                efficiencies: Sequence[float],
                                reference: np.ndarray | None = None) -> np.ndarray:
    """Cuts ``t`` such that jets with ``values >= t`` carry the fraction ``efficiency`` of the
    weight of the ``reference`` jets (all jets if None).

    Exact definition: sort the reference jets by value, highest first, and accumulate weight;
    ``t`` is the value of the first jet at which the accumulated weight reaches
    ``efficiency * total``. Jets tied at ``t`` all pass. Returns float32 (len(efficiencies),);
    ``+inf`` where the reference has no weight.
    """
    efficiencies = np.asarray(efficiencies, dtype=np.float64)
    values = np.asarray(values, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float64)
    if reference is not None:
        values, weights = values[reference], weights[reference]
    total = weights.sum()
    result = np.full(efficiencies.shape, np.inf, dtype=np.float32)
    if total <= 0:
        return result
    keys = order_keys(values)
    buckets = keys >> BUCKET_BITS
    n_buckets = 1 << BUCKET_BITS
    bucket_weight = np.bincount(buckets, weights=weights, minlength=n_buckets)
    # weight strictly above each bucket, scanning from the highest bucket down
    above = np.concatenate([np.cumsum(bucket_weight[::-1])[::-1][1:], [0.0]])
    targets = efficiencies * total * (1 - 1e-12)  # tolerance for rounding in the sums
    # weight at or above each bucket is non-increasing in the bucket number; the cut's bucket is
    # the highest one where it still reaches the target
    at_or_above = above + bucket_weight
    cut_buckets = np.searchsorted(-at_or_above, -targets, side="right") - 1
    cut_buckets = np.clip(cut_buckets, 0, n_buckets - 1)
    is_cut_bucket = np.zeros(n_buckets, dtype=bool)
    is_cut_bucket[cut_buckets] = True
    candidates = np.flatnonzero(is_cut_bucket[buckets])
    order = candidates[np.argsort(keys[candidates], kind="stable")[::-1]]
    # the candidates, highest first, fall into contiguous runs of one bucket each
    positions, found, _ = cut_positions(buckets[order], cut_buckets, weights[order],
                                        above[cut_buckets], targets)
    result[found] = values[order[positions[found]]]
    return result


@dataclass
class EfficiencyScan:
    """Weighted mass spectra of the jets passing each of a list of efficiency cuts.

    ``sum_of_weights`` and ``sum_of_weights_squared`` have shape (levels, processes, bins + 2)
    (under- and overflow at both ends); ``jet_counts`` (levels, processes) counts raw jets;
    ``max_weight`` (levels,) is the largest single jet weight passing each level, and
    ``achieved_efficiencies`` (levels,) the fraction of the reference weight that really passes
    (above the requested one when jets with large weights or ties sit at the cut; NaN when the
    scan was filled from given thresholds). Levels are nested: level ``l`` holds every jet with
    value >= ``thresholds[l]``.

    How much a level's spectrum rests on: :meth:`effective_jets` (Kish's effective sample size
    (sum w)^2 / sum w^2) and :meth:`largest_weight_share`; bin errors are sqrt(sum w^2).

    ``mass_label`` names the binned quantity on histogram axes (default
    :data:`JET_MASS_LABEL`; an event scan of dijet masses passes :data:`DIJET_MASS_LABEL`).
    """

    efficiencies: np.ndarray
    thresholds: np.ndarray
    binning: MassBinning
    process_names: tuple[str, ...]
    sum_of_weights: np.ndarray
    sum_of_weights_squared: np.ndarray
    jet_counts: np.ndarray
    max_weight: np.ndarray
    achieved_efficiencies: np.ndarray
    mass_label: str = JET_MASS_LABEL

    @classmethod
    def build(cls, values: np.ndarray, mass_index: np.ndarray, weights: np.ndarray,
              process_codes: np.ndarray, process_names: Sequence[str], *,
              efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
              reference: np.ndarray | None = None,
              binning: MassBinning = DEFAULT_MASS_BINNING,
              mass_label: str = JET_MASS_LABEL) -> EfficiencyScan:
        """``values`` (N,) discriminant (any monotonic transform, e.g. log-odds);
        ``mass_index`` (N,) from ``binning.index``; ``weights`` (N,) expected events;
        ``process_codes`` (N,) into ``process_names``; ``reference`` (N,) bool: the jets whose
        weight defines the efficiency (None: all jets)."""
        efficiencies = np.asarray(efficiencies, dtype=np.float64)
        if np.any(np.diff(efficiencies) > 0):
            raise ValueError("efficiencies must be in decreasing order")
        thresholds = thresholds_for_efficiencies(values, weights, efficiencies, reference)
        scan = cls.from_thresholds(values, mass_index, weights, process_codes, process_names,
                                   efficiencies=efficiencies, thresholds=thresholds,
                                   binning=binning, mass_label=mass_label)
        reference_values = values if reference is None else values[reference]
        reference_weights = np.asarray(weights if reference is None else weights[reference],
                                       dtype=np.float64)
        total = reference_weights.sum()
        if total > 0:
            passed = np.searchsorted(thresholds, reference_values, side="right")
            per_count = np.bincount(passed, weights=reference_weights,
                                    minlength=len(thresholds) + 1)
            scan.achieved_efficiencies = _passing(per_count) / total
        return scan

    @classmethod
    def from_thresholds(cls, values: np.ndarray, mass_index: np.ndarray, weights: np.ndarray,
                        process_codes: np.ndarray, process_names: Sequence[str], *,
                        efficiencies: np.ndarray, thresholds: np.ndarray,
                        binning: MassBinning = DEFAULT_MASS_BINNING,
                        mass_label: str = JET_MASS_LABEL) -> EfficiencyScan:
        """Fill the cube for given (increasing) ``thresholds``, in one pass over the jets."""
        n_levels, n_processes, n_bins = len(thresholds), len(process_names), binning.bins + 2
        # how many of the (increasing) thresholds each jet passes: 0..n_levels
        passed = np.searchsorted(thresholds, values, side="right").astype(np.int64)
        flat = (passed * n_processes + process_codes) * n_bins + mass_index
        size = (n_levels + 1) * n_processes * n_bins
        shape = (n_levels + 1, n_processes, n_bins)
        weights = np.asarray(weights, dtype=np.float64)
        sum_w = np.bincount(flat, weights=weights, minlength=size).reshape(shape)
        sum_w2 = np.bincount(flat, weights=weights * weights, minlength=size).reshape(shape)
        counts = np.bincount(passed * n_processes + process_codes,
                             minlength=(n_levels + 1) * n_processes).reshape(shape[:2])
        largest = np.zeros(n_levels + 1)
        np.maximum.at(largest, passed, weights)
        # a jet passing k thresholds belongs to levels 0..k-1: reverse cumulative sum over k
        return cls(efficiencies=np.asarray(efficiencies, dtype=np.float64),
                   thresholds=np.asarray(thresholds), binning=binning,
                   process_names=tuple(process_names),
                   sum_of_weights=_passing(sum_w), sum_of_weights_squared=_passing(sum_w2),
                   jet_counts=_passing(counts),
                   max_weight=np.maximum.accumulate(largest[::-1])[::-1][1:],
                   achieved_efficiencies=np.full(n_levels, np.nan), mass_label=mass_label)

    @property
    def n_levels(self) -> int:
        return len(self.efficiencies)

    def nearest_level(self, efficiency: float) -> int:
        """The level whose efficiency is closest to ``efficiency`` in log scale."""
        return nearest_level(self.efficiencies, efficiency)

    def spectrum(self, level: int, processes: Sequence[int] | None = None) -> np.ndarray:
        """(bins,) summed weights in the mass bins (flow bins dropped) at ``level``."""
        cube = self.sum_of_weights[level]
        if processes is not None:
            cube = cube[list(processes)]
        return cube.sum(axis=0)[1:-1]

    def spectrum_variance(self, level: int, processes: Sequence[int] | None = None) -> np.ndarray:
        """(bins,) sum of squared weights: the variance of :meth:`spectrum` from MC statistics."""
        cube = self.sum_of_weights_squared[level]
        if processes is not None:
            cube = cube[list(processes)]
        return cube.sum(axis=0)[1:-1]

    def bin_errors(self, level: int, processes: Sequence[int] | None = None) -> np.ndarray:
        """(bins,) sqrt(sum of w^2) per bin: the MC statistical error of :meth:`spectrum`."""
        return np.sqrt(self.spectrum_variance(level, processes))

    def _binned_yield(self, level: int, first: int, last: int,
                      processes: Sequence[int] | None) -> BinnedYield:
        """The yield of bins ``first`` .. ``last - 1`` (0-based, flow bins excluded)."""
        events = float(self.spectrum(level, processes)[first:last].sum())
        squared = float(self.spectrum_variance(level, processes)[first:last].sum())
        edges = self.binning.edges
        return BinnedYield(events=events, error=float(np.sqrt(squared)),
                           effective_jets=effective_count(events, squared),
                           low=float(edges[first]), high=float(edges[last]))

    def window_yield(self, level: int, window: tuple[float, float],
                     processes: Sequence[int] | None = None) -> BinnedYield:
        """The yield at ``level`` of the bins whose centres lie in ``window`` (GeV, low <=
        centre < high), of ``processes`` (indices into :attr:`process_names`; all if None)."""
        low, high = sorted(window)
        inside = np.flatnonzero((self.binning.centers >= low) & (self.binning.centers < high))
        if not inside.size:
            raise ValueError(f"no mass bin has its centre in {window} GeV")
        return self._binned_yield(level, int(inside[0]), int(inside[-1]) + 1, processes)

    def peak(self, level: int, processes: Sequence[int] | None = None) -> BinnedYield:
        """The fullest bin of the spectrum at ``level`` (of ``processes``, all if None), with
        its MC error and effective jets: how much a peak rests on."""
        first = int(np.argmax(self.spectrum(level, processes)))
        return self._binned_yield(level, first, first + 1, processes)

    def process_shares(self, level: int) -> dict[str, float]:
        """Each process's share of the weight passing ``level`` (all masses)."""
        per_process = self.sum_of_weights[level].sum(axis=1)
        total = per_process.sum()
        shares = per_process / total if total > 0 else np.zeros_like(per_process)
        return dict(zip(self.process_names, (float(share) for share in shares)))

    def effective_jets(self, level: int) -> float:
        """Kish's effective number of jets passing ``level``, (sum w)^2 / sum w^2 over all
        processes and masses: how many equal-weight jets would carry the same statistics."""
        return effective_count(self.sum_of_weights[level].sum(),
                               self.sum_of_weights_squared[level].sum())

    def largest_weight_share(self, level: int) -> float:
        """The largest single jet's share of the weight passing ``level`` (0 when empty)."""
        total = self.selected_yield(level)
        return float(self.max_weight[level]) / total if total > 0 else 0.0

    def stack(self, level: int) -> np.ndarray:
        """(processes, bins) summed weights per process at ``level``."""
        return self.sum_of_weights[level][:, 1:-1]

    def selected_yield(self, level: int) -> float:
        """Weighted events passing ``level``, all masses including under/overflow."""
        return float(self.sum_of_weights[level].sum())

    def selected_jets(self, level: int) -> int:
        return int(self.jet_counts[level].sum())

    def spectra(self) -> np.ndarray:
        """(levels, bins) the spectrum at every level."""
        return self.sum_of_weights.sum(axis=1)[:, 1:-1]

    def scaled(self, factor: float) -> EfficiencyScan:
        """The same scan with every jet weight multiplied by ``factor`` (e.g. the chosen
        luminosity over the dataset's, both in fb^-1): sums of weights times ``factor``, sums of
        squared weights times ``factor``^2; thresholds, efficiencies and jet counts unchanged."""
        factor = float(factor)
        if not np.isfinite(factor) or factor < 0:
            raise ValueError(f"a scan's weights can be scaled by a finite factor >= 0, not "
                             f"{factor!r}")
        return replace(self, sum_of_weights=self.sum_of_weights * factor,
                       sum_of_weights_squared=self.sum_of_weights_squared * factor ** 2,
                       max_weight=self.max_weight * factor)

    def _mass_axis(self):
        import hist

        return hist.axis.Regular(self.binning.bins, self.binning.low, self.binning.high,
                                 name="mass", label=self.mass_label)

    def _histogram_label(self, level: int) -> str:
        return f"weighted events, efficiency {self.efficiencies[level]:.3g}"

    def to_hist(self, level: int):
        """The stack at ``level`` as a scikit-hep ``hist.Hist`` with ``Weight`` storage (sum of
        weights in expected events, and of squared weights), flow bins included. Axes:
        ``process`` (category, in :attr:`process_names` order, no overflow category) and
        ``mass`` (regular, GeV, :attr:`mass_label`). ``h[{"process": "QCD"}]`` is one process."""
        import hist

        histogram = hist.Hist(
            hist.axis.StrCategory(list(self.process_names), name="process", label="process",
                                  overflow=False),
            self._mass_axis(),
            storage=hist.storage.Weight(),
            label=self._histogram_label(level),
        )
        view = histogram.view(flow=True)
        view.value[...] = self.sum_of_weights[level]
        view.variance[...] = self.sum_of_weights_squared[level]
        return histogram

    def spectrum_hist(self, level: int):
        """The spectrum at ``level`` summed over processes (:meth:`spectrum`, with flow bins) as
        a 1-d ``hist.Hist`` over ``mass`` (GeV) with ``Weight`` storage."""
        import hist

        histogram = hist.Hist(self._mass_axis(), storage=hist.storage.Weight(),
                              label=self._histogram_label(level))
        view = histogram.view(flow=True)
        view.value[...] = self.sum_of_weights[level].sum(axis=0)
        view.variance[...] = self.sum_of_weights_squared[level].sum(axis=0)
        return histogram


def _passing(per_passed_count: np.ndarray) -> np.ndarray:
    """From histograms binned by 'number of thresholds passed' (k = 0..L) to the nested
    histograms of level l = 0..L-1 (jets passing at least l + 1 thresholds)."""
    return np.cumsum(per_passed_count[::-1], axis=0)[::-1][1:]


@dataclass(frozen=True)
class SignificanceCurve:
    """Significance in a mass window versus background efficiency.

    Per cut (arrays of one length): ``background_efficiency`` requested, ``thresholds`` on the
    discriminant, ``signal`` and ``background`` expected events in the ``window`` (GeV) and their
    Asimov ``significance``. ``scan`` is the efficiency scan they were counted from (None when
    the curve was built by hand): :meth:`to_hist` gives a cut's per-process mass templates.
    """

    background_efficiency: np.ndarray
    thresholds: np.ndarray
    signal: np.ndarray
    background: np.ndarray
    significance: np.ndarray
    window: tuple[float, float]
    scan: EfficiencyScan | None = None
    signal_process: str | None = None

    @property
    def best(self) -> int:
        finite = np.where(np.isfinite(self.significance), self.significance, -1)
        return int(np.argmax(finite))

    def yields(self, level: int | None = None) -> tuple[BinnedYield, BinnedYield]:
        """(signal, background) in the window at cut ``level`` (default: the most significant
        one) with their MC errors and effective jets: a large Z whose background is one or two
        heavy jets in the window says little. Needs the scan and the signal's name."""
        if self.scan is None or self.signal_process is None:
            raise ValueError("this significance curve keeps no scan to count yields from")
        level = self.best if level is None else level
        names = list(self.scan.process_names)
        signal = names.index(self.signal_process)
        others = [index for index in range(len(names)) if index != signal]
        return (self.scan.window_yield(level, self.window, [signal]),
                self.scan.window_yield(level, self.window, others))

    def to_hist(self, level: int | None = None):
        """The per-process mass spectra (process x mass ``hist.Hist``, ``Weight`` storage, all
        masses, not only the window) at cut ``level`` (default: the most significant one): the
        signal and background templates a binned fit (pyhf, cabinetry) starts from."""
        if self.scan is None:
            raise ValueError("this significance curve keeps no scan to make histograms from")
        return self.scan.to_hist(self.best if level is None else level)


def significance_scan(values: np.ndarray, mass_index: np.ndarray, weights: np.ndarray,
                      process_codes: np.ndarray, process_names: Sequence[str], signal: str,
                      window: tuple[float, float], *,
                      background_efficiencies: Sequence[float] = 10.0 ** -np.linspace(0, 4, 41),
                      binning: MassBinning = DEFAULT_MASS_BINNING,
                      mass_label: str = JET_MASS_LABEL) -> SignificanceCurve:
    """Z = sqrt(2((s+b) ln(1+s/b) - s)) of process ``signal`` in the mass window (GeV, snapped
    outward to bin edges) for cuts keeping the fractions ``background_efficiencies`` of the
    background weight (all processes but ``signal``, all masses)."""
    names = list(process_names)
    if signal not in names:
        raise ValueError(f"unknown signal process {signal!r}; processes are {names}")
    signal_code = names.index(signal)
    background = process_codes != signal_code
    scan = EfficiencyScan.build(values, mass_index, weights, process_codes, names,
                                efficiencies=background_efficiencies, reference=background,
                                binning=binning, mass_label=mass_label)
    low, high = sorted(window)
    edges = binning.edges
    first = int(np.clip(np.searchsorted(edges, low, side="right") - 1, 0, binning.bins - 1))
    last = int(np.clip(np.searchsorted(edges, high, side="left"), first + 1, binning.bins))
    in_window = scan.sum_of_weights[:, :, 1 + first: 1 + last].sum(axis=2)  # (levels, processes)
    s = in_window[:, signal_code]
    b = in_window.sum(axis=1) - s
    return SignificanceCurve(background_efficiency=scan.efficiencies,
                             thresholds=scan.thresholds, signal=s, background=b,
                             significance=asimov_significance(s, b),
                             window=(float(edges[first]), float(edges[last])), scan=scan,
                             signal_process=signal)
