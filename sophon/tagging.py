"""Tagging performance on labelled jets: background rejection of the paper's presets against QCD.

Pure numpy on (N, 188) probabilities and true JetClass-II labels (N,), so training (model
selection), ``sophon evaluate`` (the model card) and notebooks read the same figures:

- the signal of a preset is the jets whose true class is one of its numerator classes (A1: X_cs,
  A2: X_bb, A3: the six three-prong classes with exactly one b), the background the jets of the 27
  QCD classes;
- at a signal efficiency e the cut on D keeps the fraction e of the signal jets; the background
  efficiency is the fraction of QCD jets passing it, the rejection its inverse. When no QCD jet
  passes, the rejection is only bounded from below by the number of QCD jets: reported as inf
  with ``qcd_passing`` 0, so a reader sees how little it rests on.

:func:`weighted_roc` is the ROC curve of weighted jets (a scored collision sample: signal and
background by physics process, each jet counting its weight), with the MC error of the
background efficiency and the effective number of background jets behind each point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sophon.discriminant import PRESETS
from sophon.labels import FAMILIES, FAMILY_OF_CLASS, N_CLASSES, REWEIGHT_GROUP_OF_CLASS
from sophon.stats import effective_count

__all__ = ["TAGGING_PRESETS", "SIGNAL_EFFICIENCIES", "background_rejection", "tagging_figures",
           "class_accuracies", "selection_score", "RocCurve", "weighted_roc"]

#: The presets whose QCD rejection the project tracks (paper eqs. 5-6).
TAGGING_PRESETS = ("A1: X->cs", "A2: X->bb", "A3: X->b q q")
SIGNAL_EFFICIENCIES = (0.3, 0.5, 0.6)
_IS_QCD = FAMILY_OF_CLASS == FAMILIES.index("QCD")


def background_rejection(signal: np.ndarray, background: np.ndarray,
                         signal_efficiency: float) -> float:
    """1 / (background efficiency) at the cut on a discriminant that keeps ``signal_efficiency``
    of the ``signal`` values (jets pass with value >= cut); inf when no background passes."""
    passing = _qcd_passing(signal, background, signal_efficiency)
    if passing is None:
        return float("nan")
    return float("inf") if passing == 0 else len(background) / passing


def _qcd_passing(signal: np.ndarray, background: np.ndarray, signal_efficiency: float) -> int | None:
    """How many ``background`` values pass the cut keeping ``signal_efficiency`` of ``signal``
    (None when either is empty)."""
    if len(signal) == 0 or len(background) == 0:
        return None
    cut = np.quantile(signal, 1.0 - signal_efficiency, method="higher")
    return int(np.sum(background >= cut))


def tagging_figures(probabilities: np.ndarray, labels: np.ndarray,
                    presets: tuple[str, ...] = TAGGING_PRESETS,
                    efficiencies: tuple[float, ...] = SIGNAL_EFFICIENCIES) -> dict[str, dict]:
    """Per preset: signal and QCD jet counts, and per signal efficiency the QCD efficiency, the
    rejection and the number of QCD jets passing (the rejection's statistical footing)."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[1] != N_CLASSES:
        raise ValueError(f"probabilities must be (N, {N_CLASSES}), not {probabilities.shape}")
    is_qcd = _IS_QCD[labels]
    figures: dict[str, dict] = {}
    for name in presets:
        preset = PRESETS[name]
        is_signal = (preset.numerator_weights > 0)[labels]
        # rank on log-odds: float32 D saturates at 1 for the tightest cuts
        values = preset.log_odds(probabilities)
        signal, background = values[is_signal], values[is_qcd]
        entry: dict = {"signal_jets": int(is_signal.sum()), "qcd_jets": int(is_qcd.sum())}
        for efficiency in efficiencies:
            passing = _qcd_passing(signal, background, efficiency)
            if passing is None:
                rejection = efficiency_qcd = float("nan")
                passing = 0
            else:
                efficiency_qcd = passing / len(background)
                rejection = float("inf") if passing == 0 else 1.0 / efficiency_qcd
            entry[f"{round(100 * efficiency)}%"] = {"qcd_efficiency": efficiency_qcd,
                                                    "rejection": rejection,
                                                    "qcd_passing": passing}
        figures[name] = entry
    return figures


def class_accuracies(probabilities: np.ndarray, labels: np.ndarray,
                     weights: np.ndarray | None = None) -> dict[str, float]:
    """Arg-max accuracy over the 188 classes, per class kind (two-prong, three/four-prong, QCD),
    and for the coarser question of the right reweighting group; ``weights`` (N,) optional."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    labels = np.asarray(labels)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, float)

    def mean(correct: np.ndarray, members: np.ndarray) -> float:
        total = weights[members].sum()
        return float((weights[members] * correct[members]).sum() / total) if total > 0 else math.nan

    everything = np.ones(len(labels), bool)
    right = predicted == labels
    result = {"all classes": mean(right, everything)}
    for name in ("two_prong", "three_four_prong", "QCD"):
        members = FAMILY_OF_CLASS[labels] == FAMILIES.index(name)
        if members.any():
            result[name] = mean(right, members)
    group = REWEIGHT_GROUP_OF_CLASS
    result["reweighting group"] = mean(group[predicted] == group[labels], everything)
    return result


def selection_score(figures: dict[str, dict], efficiency: str = "60%") -> float:
    """One number to choose checkpoints by: the geometric mean over the presets of the QCD
    rejection at ``efficiency``; a rejection with no QCD jet passing counts as the number of QCD
    jets (its lower bound), so the score stays finite."""
    logs = []
    for entry in figures.values():
        rejection = entry[efficiency]["rejection"]
        if math.isnan(rejection):
            continue
        logs.append(math.log(entry["qcd_jets"] if math.isinf(rejection) else rejection))
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


@dataclass(frozen=True)
class RocCurve:
    """A weighted ROC curve: one point per distinct cut value, loosest last.

    At a cut (jets with value >= ``thresholds[i]`` pass): ``signal_efficiency`` and
    ``background_efficiency`` (the passing fractions of the signal and background weight),
    ``background_error`` (the MC error of the background efficiency, sqrt(sum of the passing
    w^2) over the total) and ``background_effective_jets`` ((sum w)^2 / sum w^2 of the passing
    background jets: how many equal-weight jets the efficiency rests on).
    """

    thresholds: np.ndarray
    signal_efficiency: np.ndarray
    background_efficiency: np.ndarray
    background_error: np.ndarray
    background_effective_jets: np.ndarray

    def at_signal_efficiency(self, efficiency: float) -> int:
        """The index of the tightest cut keeping at least ``efficiency`` of the signal."""
        index = int(np.searchsorted(self.signal_efficiency, efficiency, side="left"))
        return min(index, len(self.signal_efficiency) - 1)

    @property
    def auc(self) -> float:
        """The area under the curve of background efficiency against signal efficiency's
        complement, i.e. the probability that a signal jet scores above a background jet
        (weighted): 0.5 for a useless discriminant, 1 for a perfect one."""
        x = np.concatenate([[0.0], self.background_efficiency])
        y = np.concatenate([[0.0], self.signal_efficiency])
        return float(np.sum(np.diff(x) * 0.5 * (y[1:] + y[:-1])))


def weighted_roc(values: np.ndarray, weights: np.ndarray, signal: np.ndarray,
                 background: np.ndarray) -> RocCurve:
    """The ROC curve of the discriminant ``values`` (N,) (any monotonic transform: higher is
    more signal-like) for the jets ``signal`` (N,) bool against ``background`` (N,) bool, each
    jet counting its ``weights`` (N,). Raises ValueError when either set has no weight."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    signal, background = np.asarray(signal, bool), np.asarray(background, bool)
    keep = signal | background
    values, weights, signal = values[keep], weights[keep], signal[keep]
    signal_total = weights[signal].sum()
    background_total = weights[~signal].sum()
    if signal_total <= 0 or background_total <= 0:
        raise ValueError("a ROC curve needs signal and background jets with positive weight")
    order = np.argsort(-values, kind="stable")
    values, weights, signal = values[order], weights[order], signal[order]
    signal_weight = np.cumsum(np.where(signal, weights, 0.0))
    background_weight = np.cumsum(np.where(signal, 0.0, weights))
    background_squared = np.cumsum(np.where(signal, 0.0, weights * weights))
    # one point per distinct value: the last jet of each run of ties
    last = np.flatnonzero(np.append(values[1:] != values[:-1], True))
    squared = background_squared[last]
    return RocCurve(
        thresholds=values[last],
        signal_efficiency=signal_weight[last] / signal_total,
        background_efficiency=background_weight[last] / background_total,
        background_error=np.sqrt(squared) / background_total,
        background_effective_jets=effective_count(background_weight[last], squared))
