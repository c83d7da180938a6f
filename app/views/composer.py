"""The discriminant composer: numerator terms, the denominator, presets, LaTeX and YAML.

Each numerator term is a class-set query with a weight. Queries are typed (validated live, as
you type) or built with the class picker: filter the 188 classes by group (QCD, 2-prong,
3/4-prong, the reweighting groups) and by content (prongs; b, c, s, q, g, leptons, taus,
neutrinos), search and pick, then add the picks (or the filter itself) as a term. A valid form
becomes the session's discriminant as soon as a value is committed (Enter, leaving a field,
changing a weight); an invalid one shows its error and leaves the last valid discriminant in
place.

What people type or import (names, descriptions, labels, queries, file names) reaches the page as
text only: HTML-escaped in HTML panes, never as Markdown, and escaped for KaTeX in the formula.
"""

from __future__ import annotations

import html
import io
import re

import panel as pn
import param

from sophon.discriminant import (MAX_DEFINITION_CHARACTERS, MAX_TEXT_LENGTH, PRESETS,
                                 Discriminant, DiscriminantError, Term)
from sophon.labels import (GROUPS, LABELS, MAX_QUERY_LENGTH, REWEIGHT_GROUPS, QueryError,
                           select)

from app.views.base import ExplorerView, message_html, text_message

__all__ = ["ComposerView", "TermEditor", "picker_query", "CONTENT_FILTERS", "GROUP_OPTIONS"]

NO_PRESET = "— choose a preset —"
ANY = "any"
# The content counts offered by the picker (query field -> label).
CONTENT_FILTERS: dict[str, str] = {
    "prongs": "prongs", "b": "b", "c": "c", "s": "s", "q": "q", "g": "g",
    "leptons": "leptons", "taus": "taus", "neutrinos": "ν",
}
_MAIN_GROUPS = {"all classes": "all", "QCD": "QCD", "2-prong": "two_prong",
                "3/4-prong": "three_four_prong", "resonant": "resonant"}
GROUP_OPTIONS: dict[str, dict[str, str]] = {
    "Groups": {f"{label} ({len(GROUPS[name])})": name for label, name in _MAIN_GROUPS.items()},
    "Reweighting groups": {f"{name} ({len(members)})": name
                           for name, members in REWEIGHT_GROUPS.items() if name != "QCD"},
}


def picker_query(group: str, filters: dict[str, str], picks: list[str]) -> str:
    """The query the picker stands for: the picked classes if any, else the filter itself."""
    if picks:
        return " | ".join(picks)
    parts = [] if group == "all" else [group]
    parts += [f"{field} == {value}" for field, value in filters.items() if value != ANY]
    return " & ".join(parts) if parts else "all"


def _describe(classes: list[str], limit: int = 6) -> str:
    shown = ", ".join(classes[:limit])
    more = f", … (+{len(classes) - limit})" if len(classes) > limit else ""
    return f"{len(classes)} class{'es' if len(classes) != 1 else ''}: {shown}{more}"


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def validate_query(query: str) -> tuple[bool, str]:
    """(ok, text): the classes a query selects, or why it is invalid."""
    try:
        classes = select(query)
    except QueryError as error:
        return False, str(error)
    if not classes:
        return False, "selects no class"
    return True, _describe(classes)


def _lazy_card(title: str, contents) -> pn.Card:
    """A collapsed card whose contents are rendered when it is first opened (a page that never
    opens it never builds their models)."""
    card = pn.Card(title=title, collapsed=True, sizing_mode="stretch_width")

    def expand(event):
        if not event.new and not card.objects:
            card.objects = contents()

    card.param.watch(expand, "collapsed")
    return card


class TermEditor(pn.viewable.Viewer):
    """One numerator term: query, weight, label, live validation and a remove button."""

    query = param.String(default="")
    weight = param.Number(default=1.0, doc="Checked by Term (a finite number from 0 to "
                          "MAX_WEIGHT), so that a bad value is reported, not raised.")
    label = param.String(default="")
    removed = param.Event()
    changed = param.Event(doc="A committed value changed.")

    def __init__(self, **params):
        super().__init__(**params)
        self._query = pn.widgets.TextInput(value=self.query,
                                           placeholder="class query, e.g. X_bb | X_cc",
                                           max_length=MAX_QUERY_LENGTH,
                                           sizing_mode="stretch_width", css_classes=["term-query"])
        self._weight = pn.widgets.FloatInput(value=self.weight, start=0, step=0.1, width=80,
                                             css_classes=["term-weight"])
        self._label = pn.widgets.TextInput(value=self.label, placeholder="label", width=90,
                                           max_length=MAX_TEXT_LENGTH["label"],
                                           css_classes=["term-label"])
        self._remove = pn.widgets.Button(label="✕", width=36, color="light",
                                         description="remove this term")
        self._status = pn.pane.HTML("", margin=(0, 10), css_classes=["term-status"],
                                    sizing_mode="stretch_width")
        self._query.param.watch(self._on_input, "value_input")
        self._query.param.watch(self._on_commit, "value")
        self._weight.param.watch(self._on_commit, "value")
        self._label.param.watch(self._on_commit, "value")
        self._remove.on_click(lambda event: self.param.trigger("removed"))
        self._show_status(self.query)
        self._layout = pn.Column(
            pn.Row(self._query, pn.pane.HTML("×", margin=(12, 2)), self._weight, self._label,
                   self._remove, sizing_mode="stretch_width"),
            self._status, sizing_mode="stretch_width", margin=(0, 0, 4, 0))

    def __panel__(self):
        return self._layout

    def _on_input(self, event):
        self._show_status(event.new)

    def _show_status(self, text: str) -> None:
        if not text.strip():
            self._status.object = ("<span class='term-status-text' style='color:#888'>type a "
                                   "query or use the picker</span>")
            return
        ok, description = validate_query(text)
        color = "#2e7d32" if ok else "#c62828"
        mark = "✓" if ok else "✗"
        self._status.object = (f"<span class='term-status-text' style='color:{color};"
                               f"font-size:0.85em'>{mark} {html.escape(description)}</span>")

    def _on_commit(self, event):
        self.param.update(query=self._query.value, weight=float(self._weight.value or 0.0),
                          label=self._label.value)
        self._show_status(self._query.value)
        self.param.trigger("changed")

    def set(self, query: str | None = None, weight: float | None = None,
            label: str | None = None) -> None:
        """Set the widgets (and commit), as if typed."""
        if query is not None:
            self._query.value_input = query
            self._query.value = query
        if weight is not None:
            self._weight.value = weight
        if label is not None:
            self._label.value = label

    def term(self) -> Term:
        return Term(classes=self._query.value.strip(), weight=float(self._weight.value or 0.0),
                    label=self._label.value.strip())


class ComposerView(ExplorerView):
    """Compose the session's discriminant: terms, denominator, presets, LaTeX, YAML."""

    status = param.String(default="", doc="Why the form is not applied ('' when it is).")

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self._loading = False
        self._preset = pn.widgets.Select(label="Preset (arXiv:2405.12972)",
                                         options=[NO_PRESET, *PRESETS], value=NO_PRESET,
                                         sizing_mode="stretch_width", css_classes=["preset"])
        self._name = pn.widgets.TextInput(label="Name", sizing_mode="stretch_width",
                                          max_length=MAX_TEXT_LENGTH["name"],
                                          css_classes=["discriminant-name"])
        self._level = pn.widgets.RadioButtonGroup(
            label="Level", color="primary", variant="outline",
            options={"jet": "jet", "event (j1 + j2)": "event"})
        self._terms = pn.Column(sizing_mode="stretch_width")
        self._editors: list[TermEditor] = []
        self._add = pn.widgets.Button(label="+ add term", color="default", width=110)
        self._denominator = pn.widgets.TextInput(label="Denominator classes", value="QCD",
                                                 sizing_mode="stretch_width",
                                                 max_length=MAX_QUERY_LENGTH,
                                                 css_classes=["denominator"])
        self._denominator_status = pn.pane.HTML("", css_classes=["term-status"])
        self._latex = pn.pane.LaTeX("", renderer="katex", sizing_mode="stretch_width",
                                    styles={"font-size": "1.25em", "overflow-x": "auto"},
                                    css_classes=["formula"])
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width",
                                     styles={"font-size": "0.85em"},
                                     css_classes=["composer-summary"])
        self._alert = text_message("", "danger", visible=False, css_classes=["composer-error"])
        self._picker = self._build_picker()
        self._yaml = self._build_yaml()

        self._preset.param.watch(self._on_preset, "value")
        self._add.on_click(lambda event: self.add_term("", 1.0, ""))
        self._denominator.param.watch(lambda e: self._show_denominator(e.new), "value_input")
        for widget in (self._name, self._denominator):
            widget.param.watch(self._on_change, "value")
        self._level.param.watch(self._on_change, "value")
        self.explorer.param.watch(self._on_external, "discriminant")
        self.load(self.explorer.discriminant)

        self._layout = pn.Column(
            self._preset,
            pn.Row(self._name, self._level, sizing_mode="stretch_width"),
            pn.pane.Markdown("**Numerator** — class sets and weights", margin=(0, 10)),
            self._terms, self._add,
            self._picker,
            self._denominator, self._denominator_status,
            self._alert,
            pn.pane.Markdown("**Formula**", margin=(0, 10)),
            self._latex, self._summary,
            self._yaml,
            sizing_mode="stretch_width", css_classes=["composer"],
        )

    def __panel__(self):
        return self._layout

    # --- the picker -----------------------------------------------------------------------
    def _build_picker(self) -> pn.Card:
        self._group = pn.widgets.Select(label="Group", groups=GROUP_OPTIONS, value="all",
                                        sizing_mode="stretch_width")
        self._filters = {field: pn.widgets.Select(label=label, value=ANY, width=62,
                                                  options=[ANY, "0", "1", "2", "3", "4"])
                         for field, label in CONTENT_FILTERS.items()}
        self._picks = pn.widgets.MultiChoice(label="Search and pick classes", options=list(LABELS),
                                             placeholder="type to search…", option_limit=188,
                                             search_option_limit=188, solid=False,
                                             sizing_mode="stretch_width")
        self._picker_query = pn.pane.HTML("", sizing_mode="stretch_width",
                                          css_classes=["picker-query"])
        add_new = pn.widgets.Button(label="add as new term", color="primary", width=140)
        set_last = pn.widgets.Button(label="replace last term", width=140)
        add_new.on_click(lambda event: self.add_term(self.picker_query(), 1.0, ""))
        set_last.on_click(lambda event: self._replace_last(self.picker_query()))
        self._group.param.watch(self._update_picker, "value")
        for widget in self._filters.values():
            widget.param.watch(self._update_picker, "value")
        self._picks.param.watch(self._show_picker_query, "value")
        self._update_picker()
        filters = pn.FlexBox(*self._filters.values(), sizing_mode="stretch_width")
        return _lazy_card("Class picker", lambda: [
            self._group, pn.pane.Markdown("Content (counts in the jet):", margin=(0, 10)),
            filters, self._picks, self._picker_query, pn.Row(add_new, set_last)])

    def _filter_values(self) -> dict[str, str]:
        return {field: widget.value for field, widget in self._filters.items()}

    def picker_query(self) -> str:
        return picker_query(self._group.value, self._filter_values(), list(self._picks.value))

    def _update_picker(self, *events) -> None:
        query = picker_query(self._group.value, self._filter_values(), [])
        try:
            matching = select(query)
        except QueryError:
            matching = []
        self._picks.options = matching
        self._picks.value = [c for c in self._picks.value if c in matching]
        self._show_picker_query()

    def _show_picker_query(self, *events) -> None:
        query = self.picker_query()
        ok, description = validate_query(query)
        self._picker_query.object = (f"<code>{html.escape(query)}</code> → "
                                     f"<span style='color:{'#2e7d32' if ok else '#c62828'}'>"
                                     f"{html.escape(description)}</span>")

    def _replace_last(self, query: str) -> None:
        rows = self._term_editors()
        if not rows:
            self.add_term(query, 1.0, "")
        else:
            rows[-1].set(query=query)

    # --- YAML -----------------------------------------------------------------------------
    def _build_yaml(self) -> pn.Card:
        self._download = pn.widgets.FileDownload(callback=self._yaml_file,
                                                 filename="discriminant.yaml",
                                                 label="Export YAML", color="primary",
                                                 width=140)
        self._upload = pn.widgets.FileInput(accept=".yaml,.yml", multiple=False,
                                            sizing_mode="stretch_width")
        self._yaml_text = pn.widgets.TextAreaInput(placeholder="…or paste YAML here", height=120,
                                                   max_length=MAX_DEFINITION_CHARACTERS,
                                                   sizing_mode="stretch_width",
                                                   css_classes=["yaml-text"])
        load = pn.widgets.Button(label="Load pasted YAML", width=140, css_classes=["yaml-load"])
        self._upload.param.watch(self._on_upload, "value")
        load.on_click(lambda event: self.import_yaml(self._yaml_text.value))
        return _lazy_card("Import / export YAML", lambda: [
            self._download, pn.pane.Markdown("Import a `.yaml` file:", margin=(0, 10)),
            self._upload, self._yaml_text, load])

    def _yaml_file(self):
        discriminant = self.explorer.discriminant
        slug = re.sub(r"[^A-Za-z0-9]+", "_", discriminant.name).strip("_") or "discriminant"
        self._download.filename = f"{slug}.yaml"
        return io.StringIO(discriminant.to_yaml())

    def _on_upload(self, event) -> None:
        if event.new is None:
            return
        name = _shorten(str(self._upload.filename or "the file"))
        if len(event.new) > MAX_DEFINITION_CHARACTERS * 4:  # UTF-8: at most 4 bytes a character
            self._show_error(f"Could not import {name}: the file has {len(event.new):,} bytes; a "
                             f"discriminant definition has at most "
                             f"{MAX_DEFINITION_CHARACTERS:,} characters")
            return
        try:
            text = event.new.decode("utf-8")
        except UnicodeDecodeError:
            self._show_error(f"Could not import {name}: the file is not UTF-8 text.")
            return
        self.import_yaml(text, source=name)

    def import_yaml(self, text: str, source: str = "the YAML") -> Discriminant | None:
        """Load a discriminant from YAML text into the form and the session."""
        try:
            discriminant = Discriminant.from_yaml(text)
        except (DiscriminantError, QueryError) as error:
            self._show_error(f"Could not import {source}: {error}")
            return None
        self.load(discriminant)
        self.explorer.discriminant = discriminant
        return discriminant

    def export_yaml(self) -> str:
        return self.explorer.discriminant.to_yaml()

    # --- the form -------------------------------------------------------------------------
    def _term_editors(self) -> list[TermEditor]:
        return list(self._editors)

    def _new_editor(self, query: str, weight: float, label: str) -> TermEditor:
        editor = TermEditor(query=query, weight=weight, label=label)
        editor.param.watch(self._on_change, "changed")
        editor.param.watch(lambda event: self.remove_term(editor), "removed")
        return editor

    def _show_editors(self) -> None:
        self._terms.objects = [editor.__panel__() for editor in self._editors]

    def add_term(self, query: str = "", weight: float = 1.0, label: str = "") -> TermEditor:
        editor = self._new_editor(query, weight, label)
        self._editors.append(editor)
        self._show_editors()
        if query and not self._loading:
            self._on_change()
        return editor

    def remove_term(self, editor: TermEditor) -> None:
        if editor in self._editors:
            self._editors.remove(editor)
            self._show_editors()
            self._on_change()

    def load(self, discriminant: Discriminant) -> None:
        """Show ``discriminant`` in the form (without re-applying it). Existing term rows are
        reused; rows are added or removed only when the number of terms changes."""
        self._loading = True
        try:
            self._name.value = discriminant.name
            self._level.value = discriminant.level
            self._denominator.value_input = discriminant.denominator
            self._denominator.value = discriminant.denominator
            terms = discriminant.numerator
            for editor, term in zip(self._editors, terms):
                editor.set(term.classes, term.weight, term.label)
            if len(self._editors) != len(terms):
                kept = self._editors[:len(terms)]
                kept += [self._new_editor(t.classes, t.weight, t.label)
                         for t in terms[len(kept):]]
                self._editors = kept
                self._show_editors()
            preset = next((name for name, d in PRESETS.items() if d == discriminant), NO_PRESET)
            self._preset.value = preset
        finally:
            self._loading = False
        self._show_denominator(discriminant.denominator)
        self._show(discriminant)

    def build(self) -> Discriminant:
        """The discriminant the form describes; DiscriminantError/QueryError if it is invalid."""
        terms = tuple(editor.term() for editor in self._term_editors())
        return Discriminant(name=self._name.value.strip() or "custom", numerator=terms,
                            denominator=self._denominator.value.strip(),
                            level=self._level.value, description=self._description())

    def _description(self) -> str:
        current = self.explorer.discriminant
        return current.description if current.name == self._name.value.strip() else ""

    def _on_change(self, *events) -> None:
        if self._loading:
            return
        try:
            discriminant = self.build()
        except (DiscriminantError, QueryError) as error:
            self._show_error(f"Not applied: {error}")
            return
        self._hide_error()
        preset = next((name for name, d in PRESETS.items() if d == discriminant), NO_PRESET)
        self._loading = True
        try:
            self._preset.value = preset
        finally:
            self._loading = False
        if discriminant != self.explorer.discriminant:
            self.explorer.discriminant = discriminant
        else:
            self._show(discriminant)

    def _on_preset(self, event) -> None:
        if self._loading or event.new == NO_PRESET:
            return
        self.apply_preset(event.new)

    def apply_preset(self, name: str) -> None:
        discriminant = PRESETS[name]
        self.load(discriminant)
        self._hide_error()
        self.explorer.discriminant = discriminant

    def _on_external(self, event) -> None:
        """The session's discriminant changed elsewhere (URL, YAML, a notebook): show it."""
        try:
            current = self.build()
        except (DiscriminantError, QueryError):
            current = None
        if current != event.new:
            self.load(event.new)
        else:
            self._show(event.new)

    # --- display --------------------------------------------------------------------------
    def _show(self, discriminant: Discriminant) -> None:
        # the KaTeX pane sets its text as HTML, then typesets the $...$ in it: the LaTeX (whose
        # labels are escaped for LaTeX by Discriminant.latex) is HTML-escaped too
        self._latex.object = f"${html.escape(discriminant.latex(), quote=False)}$"
        numerator = discriminant.numerator_classes
        denominator = discriminant.denominator_classes
        level = ("event level: summed over the two leading jets" if discriminant.level == "event"
                 else "jet level")
        description = (f" — <span class='composer-description'>"
                       f"{html.escape(discriminant.description)}</span>"
                       if discriminant.description else "")
        self._summary.object = (f"<b class='composer-name'>{html.escape(discriminant.name)}</b> "
                                f"({level}){description}<br>"
                                f"g<sub>A</sub>: {html.escape(_describe(numerator, 4))}<br>"
                                f"g<sub>B</sub>: {html.escape(_describe(denominator, 4))}")

    def _show_denominator(self, text: str) -> None:
        ok, description = validate_query(text) if text.strip() else (False, "empty")
        color = "#2e7d32" if ok else "#c62828"
        self._denominator_status.object = (f"<span style='color:{color};font-size:0.85em'>"
                                           f"{'✓' if ok else '✗'} {html.escape(description)}"
                                           "</span>")

    def _show_error(self, text: str) -> None:
        self.status = text
        self._alert.object = message_html(text, "composer-error-text")
        self._alert.visible = True

    def _hide_error(self) -> None:
        self.status = ""
        self._alert.visible = False
