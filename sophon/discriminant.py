"""Tagging discriminants built from the 188 class probabilities.

For numerator terms (class set A_k with weight w_k) and a denominator class set B::

    g_A = sum_k w_k * sum_{i in A_k} g_i          D = g_A / (g_A + sum_{i in B \\ A} g_i)

as in arXiv:2405.12972 eqs. 4-6. The numerator classes are always part of the denominator (through
g_A), so a class listed in both counts once. The default denominator is the 27 QCD classes. At
event level (eq. 7) the discriminant is the sum of the jet-level D over the two leading jets.

Because D only depends on sums of probabilities over class sets, merging classes by summing their
scores leaves D unchanged (the paper's class-division property).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import yaml

from sophon.labels import LABELS, N_CLASSES, QueryError, mask, select

__all__ = ["Term", "Discriminant", "PRESETS", "DiscriminantError", "event_sum"]


class DiscriminantError(ValueError):
    """A discriminant definition is invalid (bad weight, empty class set, malformed file)."""


@dataclass(frozen=True)
class Term:
    """One numerator term: a class-set query and its weight (dimensionless, >= 0)."""

    classes: str
    weight: float = 1.0
    label: str = ""

    def __post_init__(self):
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) \
                or self.weight < 0:
            raise DiscriminantError(f"term {self.display!r}: weight must be a finite number >= 0, "
                                    f"got {self.weight!r}")
        if not select(self.classes):
            raise DiscriminantError(f"term {self.display!r}: class set {self.classes!r} is empty")

    @property
    def display(self) -> str:
        return self.label or self.classes


@dataclass(frozen=True)
class Discriminant:
    """A weighted class-set discriminant; evaluate it on an (N, 188) score array."""

    name: str
    numerator: tuple[Term, ...]
    denominator: str = "QCD"
    level: Literal["jet", "event"] = "jet"
    description: str = ""
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _denominator_mask: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.numerator:
            raise DiscriminantError(f"discriminant {self.name!r} has no numerator term")
        if self.level not in ("jet", "event"):
            raise DiscriminantError(f"discriminant {self.name!r}: level must be 'jet' or 'event', "
                                    f"got {self.level!r}")
        object.__setattr__(self, "numerator", tuple(self.numerator))
        weights = np.zeros(N_CLASSES, dtype=np.float64)
        for term in self.numerator:
            weights[mask(term.classes)] += term.weight
        if not weights.any():
            raise DiscriminantError(f"discriminant {self.name!r}: all numerator weights are zero")
        denominator = mask(self.denominator) & (weights == 0)
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_denominator_mask", denominator)

    # --- the class sets ------------------------------------------------------------------------
    @property
    def numerator_weights(self) -> np.ndarray:
        """(188,) weight of each class in g_A (0 for classes outside the numerator)."""
        return self._weights.copy()

    @property
    def denominator_classes(self) -> list[str]:
        """The classes summed into g_B: the denominator set minus the numerator classes."""
        return [LABELS[i] for i in np.flatnonzero(self._denominator_mask)]

    @property
    def numerator_classes(self) -> list[str]:
        return [LABELS[i] for i in np.flatnonzero(self._weights)]

    # --- evaluation ----------------------------------------------------------------------------
    def components(self, scores: np.ndarray,
                   cache: MutableMapping | None = None) -> tuple[np.ndarray, np.ndarray]:
        """g_A and g_B, each (N,) float32, from ``scores`` (N, 188).

        ``cache`` (optional, per dataset) keeps class-set sums so that changing only the
        numerator does not re-read the denominator's columns.
        """
        scores = _check_scores(scores)
        numerator = _weighted_columns(scores, self._weights)
        key = ("class_sum", tuple(np.flatnonzero(self._denominator_mask)))
        if cache is not None and key in cache:
            denominator = cache[key]
        else:
            denominator = _weighted_columns(scores, self._denominator_mask.astype(np.float64))
            if cache is not None:
                cache[key] = denominator
        return numerator, denominator

    def evaluate(self, scores: np.ndarray, cache: MutableMapping | None = None) -> np.ndarray:
        """D in [0, 1], shape (N,) float32. A jet with g_A = g_B = 0 gets D = 0."""
        numerator, denominator = self.components(scores, cache)
        total = numerator + denominator
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(total > 0, numerator / total, np.float32(0))
        return result.astype(np.float32, copy=False)

    def log_odds(self, scores: np.ndarray, cache: MutableMapping | None = None) -> np.ndarray:
        """ln(g_A / g_B) = logit(D), shape (N,) float32: the same ordering as D without the
        float32 saturation of D near 1, so tight cuts (efficiency 1e-4) stay resolvable."""
        numerator, denominator = self.components(scores, cache)
        with np.errstate(divide="ignore", invalid="ignore"):
            result = np.log(numerator) - np.log(denominator)
        result[np.isnan(result)] = -np.inf  # g_A = g_B = 0: ranks with D = 0
        return result.astype(np.float32, copy=False)

    # --- presentation and files ----------------------------------------------------------------
    def latex(self) -> str:
        """The formula in LaTeX, e.g. ``D = g_A / (g_A + g_B)`` with g_A spelled out."""
        terms = []
        for term in self.numerator:
            weight = "" if term.weight == 1 else f"{term.weight:g}\\,"
            terms.append(f"{weight}g_{{\\mathrm{{{_latex_text(term.display)}}}}}")
        g_a = " + ".join(terms)
        g_b = f"g_{{\\mathrm{{{_latex_text(self.denominator)}}}}}"
        formula = f"D = \\frac{{g_A}}{{g_A + {g_b}}},\\quad g_A = {g_a}"
        if self.level == "event":
            formula = "D_\\mathrm{event} = D_{j_1} + D_{j_2},\\quad " + formula
        return formula

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "level": self.level,
            "description": self.description,
            "numerator": [{"classes": t.classes, "weight": t.weight, "label": t.label}
                          for t in self.numerator],
            "denominator": self.denominator,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Discriminant:
        if not isinstance(data, Mapping):
            raise DiscriminantError(f"a discriminant must be a mapping, got {type(data).__name__}")
        try:
            terms = data["numerator"]
            if not isinstance(terms, list):
                raise DiscriminantError("'numerator' must be a list of terms")
            numerator = tuple(
                Term(classes=str(t["classes"]), weight=float(t.get("weight", 1.0)),
                     label=str(t.get("label", "") or ""))
                for t in terms)
            return cls(name=str(data.get("name", "custom")), numerator=numerator,
                       denominator=str(data.get("denominator", "QCD")),
                       level=data.get("level", "jet"),
                       description=str(data.get("description", "") or ""))
        except KeyError as error:
            raise DiscriminantError(f"discriminant definition lacks the key {error}") from None
        except (TypeError, AttributeError) as error:
            raise DiscriminantError(f"malformed discriminant definition: {error}") from None
        except QueryError as error:
            raise DiscriminantError(str(error)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Discriminant:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DiscriminantError(f"not valid YAML: {error}") from None
        return cls.from_dict(data)


def _latex_text(text: str) -> str:
    return text.replace("\\", "").replace("_", "\\_").replace("{", "").replace("}", "")


def _check_scores(scores: np.ndarray) -> np.ndarray:
    if scores.ndim != 2 or scores.shape[1] != N_CLASSES:
        raise DiscriminantError(f"scores must have shape (N, {N_CLASSES}), got {scores.shape}")
    return scores


def _weighted_columns(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_i weights[i] * scores[:, i] over the non-zero weights, reading only those columns."""
    result = np.zeros(scores.shape[0], dtype=np.float32)
    for index in np.flatnonzero(weights):
        column = scores[:, index]
        if weights[index] == 1:
            result += column
        else:
            result += np.float32(weights[index]) * column
    return result


def event_sum(jet_values: np.ndarray, event_index: np.ndarray, n_events: int,
              jet_mask: np.ndarray | None = None) -> np.ndarray:
    """Per-event sum of a per-jet quantity (eq. 7): ``jet_values`` (N,), ``event_index`` (N,)
    dense event numbers in [0, n_events); ``jet_mask`` keeps e.g. only the two leading jets."""
    values = jet_values if jet_mask is None else jet_values[jet_mask]
    index = event_index if jet_mask is None else event_index[jet_mask]
    return np.bincount(index, weights=values, minlength=n_events)


def _preset(name: str, terms: Iterable[tuple[str, float, str]], description: str,
            level: Literal["jet", "event"] = "jet") -> Discriminant:
    return Discriminant(name=name, level=level, description=description,
                        numerator=tuple(Term(q, w, label) for q, w, label in terms))


# W-boson-like content, written as content queries so that the class lists are derived, not typed.
_W_TWO_PRONG = "X_qq | X_cs | X_cq | X_sq"
_WW_FOUR_PRONG = ("three_four_prong & prongs == 4 & b == 0 & gluons == 0 & "
                  "((quarks == 4 & leptons == 0) | (quarks == 2 & neutrinos == 1))")
_WW_THREE_PRONG = "three_four_prong & prongs == 3 & quarks == 3 & b == 0 & gluons == 0"

PRESETS: dict[str, Discriminant] = {
    d.name: d for d in (
        _preset("X->bb vs QCD", [("X_bb", 1.0, "X_bb")],
                "eq. 4: the two-prong b-bbar resonance against the 27 QCD classes"),
        _preset("A1: X->cs", [("X_cs", 1.0, "X_cs")],
                "eq. 5, A1: a c-s resonance, e.g. hadronic W"),
        _preset("A2: X->bb", [("X_bb", 1.0, "X_bb")],
                "eq. 5, A2: a b-bbar resonance, e.g. Z->bb or H->bb"),
        _preset("A3: X->b q q", [("resonant & quarks == 3 & b == 1 & gluons == 0 & leptons == 0",
                                 1.0, "bqq")],
                "eq. 6, A3: three prongs with exactly one b, e.g. hadronic top"),
        _preset("W'->WWW triboson", [(_W_TWO_PRONG, 0.3, "W(2)"), (_WW_FOUR_PRONG, 0.1, "WW(4)"),
                                     (_WW_THREE_PRONG, 0.6, "WW(3)")],
                "eqs. 7-9: sum over the two leading jets of 0.3 W(2) + 0.1 WW(4) + 0.6 WW(3)",
                level="event"),
    )
}
