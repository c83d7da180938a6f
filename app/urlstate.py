"""The view's state in the URL, so that a link reproduces it.

Query parameters (in the order they are written):

=========  ==================================================================================
``d``      the discriminant: a preset's name, or its definition as compact JSON
``view``   the visible tab (spectrum, significance, events, latent-space, rescoring)
``eff``    the efficiency (a value between the scan's levels is shown at the nearest one)
``ref``    the efficiency reference: ``all`` or ``QCD``
``jets``   the jet spectra: ``all`` jets or the ``leading`` jet of each event
``norm``   normalised spectra (``true``/``false``)
``logy``   logarithmic y axes (``true``/``false``)
``errors`` MC statistical errors on the stack (``true``/``false``)
``lumi``   the luminosity in fb^-1 (positive, at most :data:`~app.explorer.MAX_LUMINOSITY`)
``signal`` the significance's signal process
``window`` its mass window in GeV, ``low,high``
``color``  what the latent plot is coloured by (process, truth, top, D)
``box``    a latent box selection, ``x0,y0,x1,y1``
``lasso``  a latent lasso selection, ``x,y;x,y;...`` (at most
           :data:`~app.explorer.MAX_LASSO_VERTICES` points)
``jet``    the jet shown in the jet detail (its index)
=========  ==================================================================================

Opening a link applies its values one at a time in a fixed order (the discriminant first, the
signal before its window, the tab last); changing the session rewrites the address
(``pn.state.location.search``) from the session's state.

A link is text from anyone: every value is bounded in length and parsed by this module (plain
string comparisons, ``float`` of a checked number pattern, ``json.loads`` for a discriminant
definition; nothing is evaluated). A value that cannot be applied is dropped from the address and
named, with the reason, in :attr:`UrlState.notice`, which the page shows as text; the rest of the
link still applies. A value that is applied changed (an efficiency between levels) is named there
too.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import numpy as np
import panel as pn
import param

from sophon.discriminant import (MAX_DEFINITION_CHARACTERS, PRESETS, Discriminant,
                                 DiscriminantError, preset_name)
from sophon.labels import QueryError

from app.explorer import EFFICIENCIES, MAX_LASSO_VERTICES, Explorer, rounded
from app.plots import efficiency_label

__all__ = ["encode_discriminant", "decode_discriminant", "UrlState", "QUERY_KEYS"]

#: The query parameters, in the order they are written into the address.
QUERY_KEYS = ("d", "view", "eff", "ref", "jets", "norm", "logy", "errors", "lumi", "signal",
              "window", "color", "box", "lasso", "jet")
# the order a link's values are applied in: what others depend on first
_APPLY_ORDER = ("d", "ref", "jets", "eff", "norm", "logy", "errors", "lumi", "signal", "window",
                "box", "lasso", "jet", "color", "view")
_NUMBER_CHARACTERS = 32  # "-1.2345678901234567e-300" and some
# longest value read from a link, per query parameter (others: _MAX_OTHER_VALUE)
_MAX_VALUE = {"d": MAX_DEFINITION_CHARACTERS, "view": 64, "signal": 256,
              "window": 2 * _NUMBER_CHARACTERS + 1, "box": 4 * (_NUMBER_CHARACTERS + 1),
              "lasso": MAX_LASSO_VERTICES * 2 * (_NUMBER_CHARACTERS + 1),
              **dict.fromkeys(("eff", "ref", "jets", "norm", "logy", "errors", "lumi", "color",
                               "jet"), 64)}
_MAX_OTHER_VALUE = 256
_SHOWN = 60
# a plain decimal number: no 'nan', 'inf', '1_000', hex or white space
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")
# an efficiency within this distance (in log10) of a level is that level, without a note
_ON_LEVEL = 1e-3


def _show(text: str) -> str:
    text = text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…"
    return repr(text)


def encode_discriminant(discriminant: Discriminant) -> str:
    """A preset's name, or the definition as compact JSON."""
    name = preset_name(discriminant)
    if name is not None:
        return name
    return json.dumps(discriminant.to_dict(), separators=(",", ":"))


def decode_discriminant(value: Any) -> Discriminant:
    """The inverse of :func:`encode_discriminant`; also accepts an already parsed mapping.
    DiscriminantError for anything else."""
    if isinstance(value, Discriminant):
        return value
    if isinstance(value, Mapping):
        return Discriminant.from_dict(value)
    if not isinstance(value, str):
        raise DiscriminantError(f"cannot read a discriminant from a {type(value).__name__}")
    if len(value) > MAX_DEFINITION_CHARACTERS:
        raise DiscriminantError(f"the discriminant in the link is {len(value):,} characters long; "
                                f"at most {MAX_DEFINITION_CHARACTERS:,}")
    text = value.strip()
    if text in PRESETS:
        return PRESETS[text]
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:  # also: too many digits, too deep
            reason = ("a number has more digits than Python reads (4300)"
                      if "integer string conversion" in str(error) else
                      "nested too deeply" if isinstance(error, RecursionError) else str(error))
            raise DiscriminantError(f"the discriminant in the link is not valid JSON: {reason}") \
                from None
        return Discriminant.from_dict(data)
    raise DiscriminantError(f"unknown preset {_show(text)} in the link; presets are "
                            f"{', '.join(PRESETS)}")


def _panel_value(text: str) -> Any:
    """``text`` as Panel's query parser reads it (panel.util.parse_query, which Panel runs on
    every new address); raises where it would."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith(("[", "{")):
        return json.loads(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _number_text(value: float) -> str:
    """The shortest text of ``value`` that reads back as the same float."""
    text = f"{value:.15g}"
    return text if float(text) == value else repr(float(value))


def _numbers(text: str, count: int | None = None) -> list[float] | None:
    """The comma-separated plain numbers in ``text`` (``count`` of them when given), or None."""
    parts = text.split(",")
    if (count is not None and len(parts) != count) or \
            not all(_NUMBER.fullmatch(part.strip()) for part in parts):
        return None
    values = [float(part) for part in parts]
    return values if all(math.isfinite(v) for v in values) else None


class _Refused(Exception):
    """A link value that cannot be applied; the message says which and why."""


class UrlState(param.Parameterized):
    """The URL's view of the session: every control that changes a view of an
    :class:`Explorer`, its tabs (``pn.Tabs``, optional) and, once built, its latent view."""

    notice = param.String(default="", doc="What of the link was not applied (or was applied "
                          "changed), and why ('' when all was applied as given).")

    def __init__(self, explorer: Explorer, tabs=None, **params):
        super().__init__(**params)
        self.explorer = explorer
        self.tabs = tabs
        self._names = [] if tabs is None else [_slug(name) for name in tabs._names]
        self._notices: list[str] = []
        self._adjusted: list[str] = []
        self._location = None
        self._written: str | None = None
        self._applying = False
        self._extra: list[tuple[str, str]] = []  # query parameters of others, kept as given
        self._color: str | None = None  # the latent colouring (from the link or the view)
        self._latent = None

    # --- notices --------------------------------------------------------------------------
    def _add_notice(self, text: str) -> None:
        if text not in self._notices:  # the browser sends the link again when it connects
            self._notices.append(text)
            self._show_notice()

    def _add_adjusted(self, text: str) -> None:
        if text not in self._adjusted:
            self._adjusted.append(text)
            self._show_notice()

    def _show_notice(self) -> None:
        parts = []
        if self._notices:
            parts.append("Not applied from the link: " + "; ".join(self._notices))
        if self._adjusted:
            parts.append("Adjusted from the link: " + "; ".join(self._adjusted))
        self.notice = "\n".join(parts)

    # --- reading a link -------------------------------------------------------------------
    def _readable(self, search: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The link's own values (the last of each key) and the others' parameters, without
        those too long or that Panel's parser would fail on (each noted)."""
        values: dict[str, str] = {}
        extra: list[tuple[str, str]] = []
        for key, value in urllib.parse.parse_qsl(search.lstrip("?"), keep_blank_values=True):
            limit = _MAX_VALUE.get(key, _MAX_OTHER_VALUE)
            if len(value) > limit:
                self._add_notice(f"{key} is {len(value):,} characters long; at most {limit:,}")
                continue
            try:
                _panel_value(value)
            except (ValueError, RecursionError):
                self._add_notice(f"{key}={_show(value)} cannot be read")
                continue
            if key in QUERY_KEYS:
                values[key] = value
            elif len(key) <= 64:
                extra.append((key, value))
        return values, extra

    def parse(self, search: str) -> dict[str, Any]:
        """The link's values that can be applied, parsed (in the order they are applied); each
        one that cannot is noted in :attr:`notice`."""
        values, self._extra = self._readable(search)
        if not self.explorer.ready:
            return {}
        if "box" in values and "lasso" in values:
            self._add_notice("lasso: a link holds one selection; its box is applied")
            del values["lasso"]
        parsed: dict[str, Any] = {}
        for key in _APPLY_ORDER:
            if key not in values:
                continue
            try:
                parsed[key] = getattr(self, f"_parse_{key}")(values[key])
            except _Refused as refused:
                self._add_notice(str(refused))
        return parsed

    @staticmethod
    def _refuse(key: str, text: str, expected: str) -> _Refused:
        return _Refused(f"{key}={_show(text)} (expected {expected})")

    def _parse_d(self, text: str) -> Discriminant:
        try:
            return decode_discriminant(text)
        except (DiscriminantError, QueryError) as error:
            self.explorer.error = f"The link's discriminant was not applied: {error}"
            raise _Refused(f"d: {error}") from None

    def _parse_view(self, text: str) -> int:
        if text not in self._names:
            raise _Refused(f"view: no tab {_show(text)}; the tabs are {', '.join(self._names)}")
        return self._names.index(text)

    def _parse_eff(self, text: str) -> float:
        low, high = min(EFFICIENCIES), max(EFFICIENCIES)
        numbers = _numbers(text, 1)
        if numbers is None or not low <= numbers[0] <= high:
            raise self._refuse("eff", text, f"a number from {low:g} to {high:g}")
        efficiency = numbers[0]
        level = min(EFFICIENCIES, key=lambda e: abs(math.log10(e) - math.log10(efficiency)))
        if abs(math.log10(level) - math.log10(efficiency)) > _ON_LEVEL:
            self._add_adjusted(f"eff={_show(text)} lies between the scan's efficiencies; the "
                               f"nearest, ε = {efficiency_label(level)}, is shown")
        return level

    def _choice(self, key: str, text: str, options) -> str:
        if text not in options:
            raise self._refuse(key, text, "one of " + ", ".join(str(o) for o in options))
        return text

    def _parse_ref(self, text: str) -> str:
        return self._choice("ref", text, self.explorer.param.reference.objects)

    def _parse_jets(self, text: str) -> str:
        value = self._choice("jets", text, self.explorer.param.jets.objects)
        if value == "leading" and not self.explorer.dataset.has("jet_rank"):
            raise _Refused(f"jets={_show(text)}: this dataset has no jet ranks (column "
                           "jet_rank), so all jets are shown")
        return value

    def _flag(self, key: str, text: str) -> bool:
        if text.lower() not in ("true", "false"):
            raise self._refuse(key, text, "true or false")
        return text.lower() == "true"

    def _parse_norm(self, text: str) -> bool:
        return self._flag("norm", text)

    def _parse_logy(self, text: str) -> bool:
        return self._flag("logy", text)

    def _parse_errors(self, text: str) -> bool:
        return self._flag("errors", text)

    def _parse_lumi(self, text: str) -> float:
        explorer = self.explorer
        if not explorer.weighted:
            raise _Refused(f"lumi={_show(text)}: this dataset is unweighted (it has no "
                           "luminosity)")
        numbers = _numbers(text, 1)
        if numbers is None or explorer.luminosity_problem(numbers[0]):
            raise self._refuse("lumi", text, f"a positive number of fb⁻¹ up to "
                                             f"{explorer.max_luminosity:,.0f}")
        return numbers[0]

    def _parse_signal(self, text: str) -> str:
        return self._choice("signal", text, self.explorer.param.signal.objects)

    def _parse_window(self, text: str) -> tuple[float, float]:
        binning = self.explorer.analysis.binning
        numbers = _numbers(text, 2)
        if numbers is None or not binning.low <= numbers[0] < numbers[1] <= binning.high:
            raise self._refuse("window", text, f"low,high in GeV with {binning.low:g} ≤ low < "
                                               f"high ≤ {binning.high:g}")
        return numbers[0], numbers[1]

    def _parse_color(self, text: str) -> str:
        if not self.explorer.has_latent:
            raise _Refused(f"color={_show(text)}: this dataset has no latent coordinates")
        from app.views.latent import COLOR_OPTIONS, latent_data  # datashader: only when needed

        data = latent_data(self.explorer.analysis)
        return self._choice("color", text, [v for v in COLOR_OPTIONS.values()
                                            if data.available(v)])

    def _latent_ready(self, key: str, text: str) -> None:
        if not self.explorer.has_latent:
            raise _Refused(f"{key}={_show(text)}: this dataset has no latent coordinates")

    def _parse_box(self, text: str) -> tuple[float, float, float, float]:
        self._latent_ready("box", text)
        numbers = _numbers(text, 4)
        if numbers is None:
            raise self._refuse("box", text, "four numbers x0,y0,x1,y1")
        return tuple(numbers)

    def _parse_lasso(self, text: str) -> tuple[tuple[float, float], ...]:
        self._latent_ready("lasso", text)
        points = [_numbers(point, 2) for point in text.split(";")]
        if not 3 <= len(points) <= MAX_LASSO_VERTICES or any(p is None for p in points):
            raise self._refuse("lasso", text, f"3 to {MAX_LASSO_VERTICES} points x,y separated "
                                              "by ';'")
        return tuple((p[0], p[1]) for p in points)

    def _parse_jet(self, text: str) -> int:
        n_jets = self.explorer.dataset.n_jets
        if not (text.isascii() and text.isdigit()) or not int(text) < n_jets:
            raise self._refuse("jet", text, f"a jet index from 0 to {n_jets - 1:,}")
        return int(text)

    def apply(self, search: str) -> None:
        """Apply the link ``search`` to the session, one value at a time (see the module);
        what cannot be applied is noted in :attr:`notice`."""
        parsed = self.parse(search)
        with self._holding():
            for key, value in parsed.items():
                try:
                    self._set(key, value)
                except (ValueError, TypeError) as error:  # a session that moved on meanwhile
                    self._add_notice(f"{key}: {error}")
        self._write()

    def _set(self, key: str, value: Any) -> None:
        explorer = self.explorer
        names = {"d": "discriminant", "ref": "reference", "jets": "jets", "eff": "efficiency",
                 "norm": "normalise", "logy": "log_y", "errors": "show_errors",
                 "lumi": "luminosity", "signal": "signal", "window": "window", "jet": "jet"}
        if key in names:
            name = names[key]
            current = getattr(explorer, name)
            if key == "window":
                current = tuple(float(w) for w in current)
            if current != value:
                setattr(explorer, name, value)
        elif key == "box":
            if explorer.selection_shape != ("box", tuple(rounded(v) for v in value)):
                explorer.select_box(value)
        elif key == "lasso":
            if explorer.selection_shape != ("lasso", tuple((rounded(x), rounded(y))
                                                           for x, y in value)):
                explorer.select_polygon(np.array(value, dtype=np.float64))
        elif key == "color":
            self._color = value
            self._show_color()
        elif key == "view" and self.tabs is not None and self.tabs.active != value:
            self.tabs.active = value

    @contextlib.contextmanager
    def _holding(self):
        """Write the address once, after all the changes inside."""
        applying, self._applying = self._applying, True
        try:
            yield
        finally:
            self._applying = applying

    # --- writing the address --------------------------------------------------------------
    def query(self) -> list[tuple[str, str]]:
        """The session's state as (key, value) pairs, in :data:`QUERY_KEYS` order."""
        explorer = self.explorer
        pairs = [("d", encode_discriminant(explorer.discriminant))]
        if self.tabs is not None and 0 <= self.tabs.active < len(self._names):
            pairs.append(("view", self._names[self.tabs.active]))
        if not explorer.ready:
            return pairs + self._extra
        pairs += [("eff", _number_text(float(explorer.efficiency))),
                  ("ref", explorer.reference), ("jets", explorer.jets),
                  ("norm", _flag_text(explorer.normalise)), ("logy", _flag_text(explorer.log_y)),
                  ("errors", _flag_text(explorer.show_errors))]
        if explorer.weighted and explorer.luminosity is not None:
            pairs.append(("lumi", _number_text(float(explorer.luminosity))))
        if explorer.signal is not None:
            pairs.append(("signal", str(explorer.signal)))
            pairs.append(("window", ",".join(_number_text(float(w)) for w in explorer.window)))
        if self._color is not None:
            pairs.append(("color", self._color))
        shape = explorer.selection_shape
        if shape is not None and explorer.selection is not None:
            kind, geometry = shape
            if kind == "box":
                pairs.append(("box", ",".join(_number_text(v) for v in geometry)))
            else:
                pairs.append(("lasso", ";".join(f"{_number_text(x)},{_number_text(y)}"
                                                for x, y in geometry)))
        if explorer.jet is not None:
            pairs.append(("jet", str(int(explorer.jet))))
        return pairs + self._extra

    def search(self) -> str:
        """The address's query for the session's state (``?d=...&eff=...``)."""
        return "?" + urllib.parse.urlencode(self.query(), safe=",")

    def _write(self, *events) -> None:
        location = self._location
        if location is None or self._applying:
            return
        search = self.search()
        if search != (location.search or ""):
            self._written = search
            location.search = search

    def _on_search(self, event) -> None:
        """A new address (the browser sends the link again when it connects): apply it, then
        write the session's own, which drops what could not be applied. Runs before Panel
        parses the address."""
        if event.new == self._written:
            return
        self.apply(event.new or "")
        if self._written == self._location.search and event.new != self._written:
            # the session's address was set while the browser's was being received: Panel
            # does not send it then, so send it once that is over (in the document lock)
            document = pn.state.curdoc
            if document is not None and document.session_context is not None:
                location = self._location
                pn.state.execute(lambda: location.param.trigger("search"), schedule=True)

    # --- the latent view ------------------------------------------------------------------
    def attach_latent(self, view) -> None:
        """The latent view, once built: show the link's colouring, and follow the view's."""
        self._latent = view
        if getattr(view, "_color", None) is None:  # a dataset without latent coordinates
            return
        self._show_color()
        view.param.watch(self._on_color, "color_by")

    def _show_color(self) -> None:
        view = self._latent
        widget = getattr(view, "_color", None)
        if widget is not None and self._color is not None and view.color_by != self._color:
            widget.value = self._color  # the widget sets the view's colouring

    def _on_color(self, event) -> None:
        self._color = event.new
        self._write()

    # --- connecting -----------------------------------------------------------------------
    def check_request(self, request) -> None:
        """Before Panel first reads the session's address (``pn.state.location``): drop from the
        request's URI the values that Panel's parser would fail on (a 5000-digit number, a second
        '?'), so that the page is built; each is noted in :attr:`notice`."""
        uri = getattr(request, "uri", None)
        inner = getattr(request, "_request", None)
        if not isinstance(uri, str) or "?" not in uri or inner is None:
            return
        path, _, query = uri.partition("?")
        query = query.partition("#")[0]
        values, extra = self._readable("?" + query)
        kept = [*values.items(), *extra]
        inner.uri = path + ("?" + urllib.parse.urlencode(kept, safe=",") if kept else "")

    def sync(self, location) -> None:
        """Sync with ``location`` (``pn.state.location``): the link's values are applied first,
        then the address is rewritten from the session (without the values that could not be
        applied, noted in :attr:`notice`) and follows every change of it."""
        self._location = location
        self.apply(location.search or "")
        # before Location's own watcher, which parses the address: a negative precedence runs
        # first, which param keeps for internal watchers (Panel's Tabulator does the same)
        location.param._watch(self._on_search, ["search"], precedence=-1)
        self.explorer.param.watch(self._write, [
            "discriminant", "efficiency", "reference", "jets", "normalise", "log_y",
            "show_errors", "luminosity", "signal", "window", "selection_shape", "selection",
            "jet"])
        if self.tabs is not None:
            self.tabs.param.watch(self._write, "active")
        self._write()


def _flag_text(value: bool) -> str:
    return "true" if value else "false"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
