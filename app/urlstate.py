"""The view's state in the URL, so that a link reproduces it.

Query parameters: ``d`` the discriminant (a preset's name, or its definition as compact JSON),
``eff`` the efficiency, ``ref`` the efficiency reference (all/QCD), ``norm`` normalised spectra,
``logy`` logarithmic y, ``view`` the tab. They are kept in sync both ways with
``pn.state.location.sync``: opening a link sets the session; changing the session updates the
address bar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import param

from sophon.discriminant import PRESETS, Discriminant, DiscriminantError
from sophon.labels import QueryError

from app.explorer import Explorer

__all__ = ["encode_discriminant", "decode_discriminant", "UrlState", "EXPLORER_QUERY"]

# explorer parameter -> query parameter
EXPLORER_QUERY = {"efficiency": "eff", "reference": "ref", "normalise": "norm", "log_y": "logy"}


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
        raise DiscriminantError(f"cannot read a discriminant from {value!r}")
    text = value.strip()
    if text in PRESETS:
        return PRESETS[text]
    if text.startswith("{"):
        try:
            return Discriminant.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise DiscriminantError(f"the discriminant in the link is not valid JSON: {error}") \
                from None
    raise DiscriminantError(f"unknown preset {text!r} in the link; presets are "
                            f"{', '.join(PRESETS)}")


class UrlState(param.Parameterized):
    """The URL's view of the session: ``d`` (encoded discriminant) and ``view`` (tab name),
    linked both ways to an :class:`Explorer` and an optional ``pn.Tabs``."""

    d = param.Parameter(default=None, doc="The discriminant, encoded.")
    view = param.String(default="", doc="The visible tab.")

    def __init__(self, explorer: Explorer, tabs=None, **params):
        super().__init__(d=encode_discriminant(explorer.discriminant), **params)
        self.explorer = explorer
        self.tabs = tabs
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
            return
        if discriminant != self.explorer.discriminant:
            self.explorer.discriminant = discriminant

    def _from_tabs(self, event) -> None:
        if 0 <= event.new < len(self._names) and self.view != self._names[event.new]:
            self.view = self._names[event.new]

    def _to_tabs(self, event) -> None:
        if event.new in self._names:
            self.tabs.active = self._names.index(event.new)

    def sync(self, location) -> None:
        """Sync with ``location`` (``pn.state.location``): the link's values are applied first."""
        location.sync(self, {"d": "d", "view": "view"})
        location.sync(self.explorer, EXPLORER_QUERY)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def _same(encoded: Any, other: str) -> bool:
    if isinstance(encoded, Mapping):
        return json.dumps(dict(encoded), separators=(",", ":")) == other
    return encoded == other
