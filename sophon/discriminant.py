"""Tagging discriminants built from the 188 class probabilities.

For numerator terms (class set A_k with weight w_k) and a denominator class set B::

    g_A = sum_k w_k * sum_{i in A_k} g_i          D = g_A / (g_A + sum_{i in B \\ A} g_i)

as in arXiv:2405.12972 eqs. 4-6. The numerator classes are always part of the denominator (through
g_A), so a class listed in both counts once. The default denominator is the 27 QCD classes. At
event level (eq. 7) the discriminant is the sum of the jet-level D over the two leading jets.

Because D only depends on sums of probabilities over class sets, merging classes by summing their
scores leaves D unchanged (the paper's class-division property).

Definitions come from people (YAML files, links), so reading one is bounded: YAML is read with a
safe loader that refuses aliases (no "billion laughs") and nesting deeper than
:data:`MAX_YAML_DEPTH`, from at most :data:`MAX_DEFINITION_CHARACTERS` characters; a definition
holds only the keys and types a discriminant has (text of bounded length, weights that are numbers
from 0 to :data:`MAX_WEIGHT`, at most :data:`MAX_TERMS` terms). Every failure is a
:class:`DiscriminantError` that names the field and the (shortened) value.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import yaml

from sophon.labels import LABELS, MAX_QUERY_LENGTH, N_CLASSES, QueryError, mask, select

__all__ = ["Term", "Discriminant", "PRESETS", "DiscriminantError", "event_sum", "preset_name",
           "cut_on_d",
           "MAX_WEIGHT", "MAX_TERMS", "MAX_TEXT_LENGTH", "MAX_DEFINITION_CHARACTERS",
           "MAX_YAML_DEPTH"]

#: Largest weight of a numerator term (weights are relative: D only depends on their ratios).
MAX_WEIGHT = 1e6
#: Most numerator terms in one discriminant.
MAX_TERMS = 64
#: Longest text per field, in characters (class queries: :data:`sophon.labels.MAX_QUERY_LENGTH`).
MAX_TEXT_LENGTH = {"name": 200, "description": 2000, "label": 100}
#: Longest YAML or JSON definition read, in characters.
MAX_DEFINITION_CHARACTERS = 32_000
#: Deepest nesting of YAML collections read (a discriminant needs 3).
MAX_YAML_DEPTH = 10
_KEYS = ("name", "level", "description", "numerator", "denominator")
_TERM_KEYS = ("classes", "weight", "label")


class DiscriminantError(ValueError):
    """A discriminant definition is invalid (bad weight, empty class set, malformed file)."""


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _show(value, limit: int = 60) -> str:
    """``value`` for a message: its repr, shortened; never fails (huge integers, deep lists)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        try:
            return f"an integer of {len(str(abs(value))):,} digits"
        except ValueError:  # more digits than Python converts
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError, MemoryError):
        text = f"a {type(value).__name__}"
    return _shorten(text, limit)


def _kind(value) -> str:
    names = {type(None): "nothing", bool: "true/false", int: "a number", float: "a number",
             str: "text", list: "a list", dict: "a mapping"}
    return f"{names.get(type(value), type(value).__name__)} ({_show(value)})"


def _check_text(value, field_name: str, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise DiscriminantError(f"{where}: {field_name!r} must be text, got {_kind(value)}")
    if len(value) > limit:
        raise DiscriminantError(f"{where}: {field_name!r} is {len(value):,} characters long; at "
                                f"most {limit:,} ({_show(value)})")
    return value


def _check_weight(value, where: str) -> float:
    """A term weight: a number (or numeric text, as YAML reads ``1e-3``) from 0 to MAX_WEIGHT."""
    number = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = float(value) if abs(value) <= MAX_WEIGHT else math.inf
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None:
        raise DiscriminantError(f"{where}: 'weight' must be a number, got {_kind(value)}")
    if not (math.isfinite(number) and 0 <= number <= MAX_WEIGHT):
        raise DiscriminantError(f"{where}: 'weight' must be a finite number from 0 to "
                                f"{MAX_WEIGHT:g}, got {_show(value)}")
    return number


@dataclass(frozen=True)
class Term:
    """One numerator term: a class-set query and its weight (dimensionless, >= 0)."""

    classes: str
    weight: float = 1.0
    label: str = ""

    def __post_init__(self):
        # the class query's type and length are checked by select(), with its QueryError
        _check_text(self.label, "label", f"term {_show(self.classes)}", MAX_TEXT_LENGTH["label"])
        where = f"term {_show(self.display)}"
        weight = self.weight
        number = not isinstance(weight, bool) and isinstance(weight, (int, float))
        if not (number and (abs(weight) <= MAX_WEIGHT if isinstance(weight, int)
                            else math.isfinite(weight)) and 0 <= weight <= MAX_WEIGHT):
            raise DiscriminantError(f"{where}: weight must be a finite number from 0 to "
                                    f"{MAX_WEIGHT:g}, got {_show(self.weight)}")
        if not select(self.classes):
            raise DiscriminantError(f"{where}: class set {_show(self.classes)} is empty")

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
        _check_text(self.name, "name", "the discriminant", MAX_TEXT_LENGTH["name"])
        where = f"discriminant {_show(self.name)}"
        _check_text(self.description, "description", where, MAX_TEXT_LENGTH["description"])
        if not self.numerator:
            raise DiscriminantError(f"{where} has no numerator term")
        if len(self.numerator) > MAX_TERMS:
            raise DiscriminantError(f"{where} has {len(self.numerator):,} numerator terms; at "
                                    f"most {MAX_TERMS}")
        if not all(isinstance(term, Term) for term in self.numerator):
            raise DiscriminantError(f"{where}: the numerator must be Term objects")
        if not isinstance(self.level, str) or self.level not in ("jet", "event"):
            raise DiscriminantError(f"{where}: level must be 'jet' or 'event', "
                                    f"got {_show(self.level)}")
        object.__setattr__(self, "numerator", tuple(self.numerator))
        weights = np.zeros(N_CLASSES, dtype=np.float64)
        for term in self.numerator:
            weights[mask(term.classes)] += term.weight
        if not weights.any():
            raise DiscriminantError(f"discriminant {self.name!r}: all numerator weights are zero")
        denominator_set = mask(self.denominator)
        denominator = denominator_set & (weights == 0)
        if not denominator.any():
            raise DiscriminantError(
                f"{where}: the denominator {_show(self.denominator)} has no class outside the "
                f"numerator, so g_B would be empty (every jet would pass every cut); choose "
                f"denominator classes that are not in the numerator")
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_denominator_mask", denominator)

    # --- the class sets ------------------------------------------------------------------------
    @property
    def numerator_weights(self) -> np.ndarray:
        """(188,) weight of each class in g_A (0 for classes outside the numerator)."""
        return self._weights.copy()

    @property
    def denominator_mask(self) -> np.ndarray:
        """(188,) bool: the classes summed into g_B (the denominator set minus the numerator)."""
        return self._denominator_mask.copy()

    @property
    def denominator_classes(self) -> list[str]:
        """The classes summed into g_B: the denominator set minus the numerator classes."""
        return [LABELS[i] for i in np.flatnonzero(self._denominator_mask)]

    @property
    def numerator_classes(self) -> list[str]:
        return [LABELS[i] for i in np.flatnonzero(self._weights)]

    @property
    def classes_in_both(self) -> list[str]:
        """The classes of the denominator set that are also numerator classes: they count in g_A
        only, so they are left out of g_B."""
        return [LABELS[i] for i in np.flatnonzero(mask(self.denominator) & (self._weights > 0))]

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
        """A discriminant from its :meth:`to_dict` form (from YAML or a link): only the keys and
        types a discriminant has; DiscriminantError naming the field and value otherwise."""
        if not isinstance(data, Mapping):
            raise DiscriminantError(f"a discriminant must be a mapping with the keys "
                                    f"{', '.join(_KEYS)}; got {_kind(data)}")
        _check_keys(data, _KEYS, "the discriminant")
        if "numerator" not in data:
            raise DiscriminantError("the discriminant definition lacks the key 'numerator' "
                                    "(a list of terms with 'classes' and 'weight')")
        terms = data["numerator"]
        if not isinstance(terms, list):
            raise DiscriminantError(f"'numerator' must be a list of terms, got {_kind(terms)}")
        if len(terms) > MAX_TERMS:
            raise DiscriminantError(f"'numerator' has {len(terms):,} terms; at most {MAX_TERMS}")
        numerator = tuple(_term_from_dict(term, number)
                          for number, term in enumerate(terms, start=1))
        name = _optional_text(data, "name", "custom", "the discriminant")
        level = data.get("level", "jet")
        if not isinstance(level, str) or level not in ("jet", "event"):
            raise DiscriminantError(f"discriminant {_show(name)}: level must be 'jet' or 'event', "
                                    f"got {_show(level)}")
        try:
            return cls(name=name, numerator=numerator,
                       denominator=_optional_text(data, "denominator", "QCD", "the discriminant",
                                                  MAX_QUERY_LENGTH),
                       level=level,
                       description=_optional_text(data, "description", "", "the discriminant"))
        except QueryError as error:
            raise DiscriminantError(f"denominator: {error}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Discriminant:
        """Read a definition from YAML text (at most MAX_DEFINITION_CHARACTERS, no aliases)."""
        if not isinstance(text, str):
            raise DiscriminantError(f"YAML must be text, got {type(text).__name__}")
        if len(text) > MAX_DEFINITION_CHARACTERS:
            raise DiscriminantError(f"the YAML is {len(text):,} characters long; a discriminant "
                                    f"definition has at most {MAX_DEFINITION_CHARACTERS:,}")
        try:
            data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
        except DiscriminantError:
            raise
        except yaml.YAMLError as error:
            raise DiscriminantError(f"not valid YAML: {_shorten(str(error), 400)}") from None
        except (ValueError, OverflowError, RecursionError, MemoryError) as error:
            reason = ("a number has more digits than Python reads (4300)"
                      if "integer string conversion" in str(error) else _shorten(str(error), 200))
            raise DiscriminantError(f"not valid YAML: {reason}") from None
        return cls.from_dict(data)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (pure Python) that refuses aliases (``*name``, including
    ``<<: *name`` merges) and collections nested deeper than MAX_YAML_DEPTH, before anything is
    expanded or built."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DiscriminantError(f"not accepted: the YAML alias *{_shorten(event.anchor, 30)} "
                                    f"(line {event.start_mark.line + 1}); write each value out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise DiscriminantError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels "
                                        f"(line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_keys(data: Mapping, keys: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in keys:
            raise DiscriminantError(f"{where}: unknown key {_show(key, 40)}; the keys are "
                                    f"{', '.join(keys)}")


def _optional_text(data: Mapping, key: str, default: str, where: str,
                   limit: int | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        return default
    return _check_text(value, key, where, limit if limit is not None else MAX_TEXT_LENGTH[key])


def _term_from_dict(data, number: int) -> Term:
    where = f"term {number}"
    if not isinstance(data, Mapping):
        raise DiscriminantError(f"{where} must be a mapping with the keys {', '.join(_TERM_KEYS)}"
                                f"; got {_kind(data)}")
    _check_keys(data, _TERM_KEYS, where)
    if "classes" not in data:
        raise DiscriminantError(f"{where} lacks the key 'classes' (a class query, e.g. X_bb)")
    classes = _check_text(data["classes"], "classes", where, MAX_QUERY_LENGTH)
    weight = _check_weight(data.get("weight", 1.0), where)
    label = _optional_text(data, "label", "", where)
    try:
        return Term(classes=classes, weight=weight, label=label)
    except QueryError as error:
        raise DiscriminantError(f"{where}: {error}") from None


# LaTeX (math mode, inside \mathrm, as KaTeX and MathJax read it) for each special character.
_LATEX_ESCAPES = {"\\": "\\backslash{}", "{": "\\{", "}": "\\}", "$": "\\$", "_": "\\_",
                  "#": "\\#", "%": "\\%", "&": "\\&", "^": "\\hat{}", "~": "\\sim{}",
                  " ": "\\ "}


def _latex_text(text: str) -> str:
    """``text`` as literal characters in LaTeX math mode: every special character escaped, so that
    a label can neither end the formula (``$``) nor run a command (``\\``)."""
    return "".join(_LATEX_ESCAPES.get(char, char) if unicodedata.category(char)[0] != "C"
                   else "\\ " for char in text)


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


def preset_name(discriminant: Discriminant) -> str | None:
    """The name of the preset equal to ``discriminant`` (same terms, denominator, level, name
    and description), None when it is not a preset."""
    return next((name for name, preset in PRESETS.items() if preset == discriminant), None)


def cut_on_d(log_odds_cut: float) -> float:
    """The cut on D = g_A / (g_A + g_B) equal to the cut ``log_odds_cut`` on ln(g_A / g_B):
    D = 1 / (1 + exp(-ln(g_A / g_B))); +-inf map to 1 and 0, NaN stays NaN."""
    with np.errstate(over="ignore"):
        return float(1.0 / (1.0 + np.exp(-np.float64(log_odds_cut))))
