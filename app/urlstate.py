"""The view's state in the URL, so that a link reproduces it.

Query parameters: ``d`` the discriminant (a preset's name, or its definition as compact JSON),
``eff`` the efficiency, ``ref`` the efficiency reference (all/QCD), ``norm`` normalised spectra,
``logy`` logarithmic y, ``view`` the tab. They are kept in sync both ways with
``pn.state.location.sync``: opening a link sets the session; changing the session updates the
address bar.

A link is text from anyone: before the values reach Panel's parser (which would stop the page on
e.g. a 5000-digit number) each is checked, and the ones that cannot be applied are dropped from the
address and listed in :attr:`UrlState.notice`, which the page shows.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import param

from sophon.discriminant import MAX_DEFINITION_CHARACTERS, PRESETS, Discriminant, DiscriminantError
from sophon.labels import QueryError

from app.explorer import Explorer

__all__ = ["encode_discriminant", "decode_discriminant", "UrlState", "EXPLORER_QUERY"]

# explorer parameter -> query parameter
EXPLORER_QUERY = {"efficiency": "eff", "reference": "ref", "normalise": "norm", "log_y": "logy"}
# longest value read from a link, per query parameter (others: _MAX_OTHER_VALUE)
_MAX_VALUE = {"d": MAX_DEFINITION_CHARACTERS, "view": 64,
              **dict.fromkeys(EXPLORER_QUERY.values(), 64)}
_MAX_OTHER_VALUE = 256
_SHOWN = 60


def _show(text: str) -> str:
    text = text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…"
    return repr(text)


def encode_discriminant(discriminant: Discriminant) -> str:
    """A preset's name, or the definition as compact JSON."""
    for name, preset in PRESETS.items():
        if preset == discriminant:
            return name
    return json.dumps(discriminant.to_dict(), separators=(",", ":"))


def decode_discriminant(value: Any) -> Discriminant:
    """The inverse of :func:`encode_discriminant`; also accepts an already parsed mapping (the
    URL parser turns JSON objects into dicts). DiscriminantError for anything else."""
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
    """``text`` as Panel's query parser reads it (panel.util.parse_query); raises where it would."""
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


class UrlState(param.Parameterized):
    """The URL's view of the session: ``d`` (encoded discriminant) and ``view`` (tab name),
    linked both ways to an :class:`Explorer` and an optional ``pn.Tabs``."""

    d = param.Parameter(default=None, doc="The discriminant, encoded.")
    view = param.String(default="", doc="The visible tab.")
    notice = param.String(default="", doc="What of the link was not applied, and why ('' when "
                          "all was).")

    def __init__(self, explorer: Explorer, tabs=None, **params):
        super().__init__(d=encode_discriminant(explorer.discriminant), **params)
        self.explorer = explorer
        self.tabs = tabs
        self._notices: list[str] = []
        self._names = [] if tabs is None else [_slug(name) for name in tabs._names]
        if tabs is not None and not self.view:
            self.view = self._names[tabs.active] if self._names else ""
        explorer.param.watch(self._from_explorer, "discriminant")
        self.param.watch(self._to_explorer, "d")
        if tabs is not None:
            tabs.param.watch(self._from_tabs, "active")
            self.param.watch(self._to_tabs, "view")

    def _from_explorer(self, event) -> None:
        encoded = encode_discriminant(event.new)
        if not _same(self.d, encoded):
            self.d = encoded

    def _to_explorer(self, event) -> None:
        try:
            discriminant = decode_discriminant(event.new)
        except (DiscriminantError, QueryError) as error:
            self.explorer.error = f"The link's discriminant was not applied: {error}"
            self._add_notice(f"d: {error}")
            return
        if discriminant != self.explorer.discriminant:
            self.explorer.discriminant = discriminant

    def _from_tabs(self, event) -> None:
        if 0 <= event.new < len(self._names) and self.view != self._names[event.new]:
            self.view = self._names[event.new]

    def _to_tabs(self, event) -> None:
        if event.new in self._names:
            self.tabs.active = self._names.index(event.new)
        elif self.tabs is not None and event.new:
            self._add_notice(f"view: no tab {_show(str(event.new))}; the tabs are "
                             f"{', '.join(self._names)}")

    def _add_notice(self, text: str) -> None:
        if text not in self._notices:  # the browser sends the link again when it connects
            self._notices.append(text)
            self.notice = "Not applied from the link: " + "; ".join(self._notices)

    def _checked_search(self, search: str) -> str | None:
        """``search`` without the values that cannot be applied (each noted in :attr:`notice`),
        or None when all can."""
        kept, dropped = [], False
        for key, value in urllib.parse.parse_qsl(search[1:], keep_blank_values=True):
            limit = _MAX_VALUE.get(key, _MAX_OTHER_VALUE)
            problem = ""
            if len(value) > limit:
                problem = f"{key} is {len(value):,} characters long; at most {limit:,}"
            else:
                try:
                    parsed = _panel_value(value)
                except (ValueError, RecursionError):
                    problem = f"{key}={_show(value)} cannot be read"
                else:
                    if key == "d":
                        try:
                            decode_discriminant(parsed)
                        except (DiscriminantError, QueryError) as error:
                            problem = f"d: {error}"
                            self.explorer.error = f"The link's discriminant was not applied: " \
                                                  f"{error}"
            if problem:
                self._add_notice(problem)
                dropped = True
            else:
                kept.append((key, value))
        if not dropped:
            return None
        return "?" + urllib.parse.urlencode(kept) if kept else ""

    def _not_applied(self, values: dict) -> None:
        """Panel could not apply the link's explorer values together: apply each alone, and note
        those that fail."""
        for name, value in values.items():
            try:
                setattr(self.explorer, name, value)
            except (ValueError, TypeError):
                self._add_notice(f"{EXPLORER_QUERY.get(name, name)}={_show(str(value))} "
                                 f"(expected {_expected(self.explorer.param[name])})")

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
        checked = self._checked_search("?" + query)
        if checked is None and "?" not in query:
            return
        if checked is None:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            checked = "?" + urllib.parse.urlencode(pairs) if pairs else ""
        inner.uri = path + checked

    def _guard_search(self, event) -> None:
        """Runs before Panel parses a new address (the browser sends the link again when it
        connects): drop what cannot be applied."""
        checked = self._checked_search(event.new or "")
        if checked is not None:
            event.obj.search = checked

    def sync(self, location) -> None:
        """Sync with ``location`` (``pn.state.location``): the link's values are applied first;
        values that cannot be applied are dropped from the address and noted in
        :attr:`notice`."""
        checked = self._checked_search(location.search or "")
        if checked is not None:
            location.search = checked
        # before Location's own watcher, which parses the address: a negative precedence runs
        # first, which param keeps for internal watchers (Panel's Tabulator does the same)
        location.param._watch(self._guard_search, ["search"], precedence=-1)
        location.sync(self, {"d": "d", "view": "view"})
        location.sync(self.explorer, EXPLORER_QUERY, on_error=self._not_applied)


def _expected(parameter: param.Parameter) -> str:
    """What ``parameter`` accepts, in words."""
    if isinstance(parameter, param.Boolean):
        return "true or false"
    if isinstance(parameter, param.Selector):
        return "one of " + ", ".join(str(o) for o in parameter.objects)
    if isinstance(parameter, param.Number) and parameter.bounds:
        low, high = parameter.bounds
        if low is not None and high is not None:
            return f"a number from {low:g} to {high:g}"
    if isinstance(parameter, param.Number):
        return "a number"
    return f"a value for {parameter.name}"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def _same(encoded: Any, other: str) -> bool:
    if isinstance(encoded, Mapping):
        return json.dumps(dict(encoded), separators=(",", ":")) == other
    return encoded == other
