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

import panel as pn
import param

from sophon.discriminant import (MAX_DEFINITION_CHARACTERS, MAX_TEXT_LENGTH, PRESETS,
                                 Discriminant, DiscriminantError, Term, preset_name)
from sophon.labels import (GROUPS, LABELS, MAX_QUERY_LENGTH, REWEIGHT_GROUPS, QueryError,
                           select)

from app.views.base import (ExplorerView, file_name_part, in_document_lock, message_html,
                             text_message)

__all__ = ["ComposerView", "TermEditor", "picker_query", "in_document_lock", "CONTENT_FILTERS",
           "GROUP_OPTIONS"]

NO_PRESET = "— choose a preset —"
LEVELS = {"jet": "jet", "event (j1 + j2)": "event"}
EDITED = " (edited)"  # appended to a preset's name once its definition is edited
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


def _stands_for(form: Discriminant | None, current: Discriminant) -> bool:
    """Whether the plain discriminant ``form`` is the stand-in of ``current``, a discriminant
    whose values the form cannot hold (a trained head's, which has the form's definition)."""
    stand_in = getattr(current, "stand_in", None)
    return form is not None and stand_in is not None and stand_in() == form


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


def text_field(parameter: param.Parameter, **params) -> pn.widgets.TextInput:
    """A text input bound both ways to ``parameter`` (its value is committed on Enter or on
    leaving the field), whose typed text (``value_input``, validated live) also follows the
    parameter when it is set elsewhere (a preset, a YAML file, a link)."""
    owner, name = parameter.owner, parameter.name
    widget = pn.widgets.TextInput.from_param(parameter, value_input=getattr(owner, name),
                                             **params)
    owner.param.watch(lambda event: setattr(widget, "value_input", event.new), name)
    return widget


def query_status(text: str) -> str:
    """HTML: whether the class query ``text`` is valid and what it selects."""
    if not text.strip():
        return ("<span class='term-status-text' style='color:#888'>type a query or use the "
                "picker</span>")
    ok, description = validate_query(text)
    color = "#2e7d32" if ok else "#c62828"
    mark = "✓" if ok else "✗"
    return (f"<span class='term-status-text' style='color:{color};font-size:0.85em'>{mark} "
            f"{html.escape(description)}</span>")


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
    """One numerator row: query, weight, label (widgets bound to these parameters), the live
    validation of the query as it is typed, and a remove button."""

    query = param.String(default="")
    weight = param.Number(default=1.0, allow_None=True,
                          doc="Checked by Term (a finite number from 0 to MAX_WEIGHT), so that a "
                          "bad value is reported, not raised; an emptied field is 0.")
    label = param.String(default="")
    removed = param.Event()

    def __init__(self, **params):
        super().__init__(**params)
        self._query = text_field(self.param.query, name="", placeholder="class query, e.g. "
                                 "X_bb | X_cc", max_length=MAX_QUERY_LENGTH,
                                 sizing_mode="stretch_width", css_classes=["term-query"])
        self._weight = pn.widgets.FloatInput.from_param(self.param.weight, name="", start=0,
                                                        step=0.1, width=80,
                                                        css_classes=["term-weight"])
        self._label = pn.widgets.TextInput.from_param(self.param.label, name="",
                                                      placeholder="label", width=90,
                                                      max_length=MAX_TEXT_LENGTH["label"],
                                                      css_classes=["term-label"])
        self._remove = pn.widgets.Button(label="✕", width=36, color="light",
                                         description="remove this term")
        self._remove.on_click(lambda event: self.param.trigger("removed"))
        self._status = pn.pane.HTML(pn.bind(query_status, self._query.param.value_input),
                                    margin=(0, 10), css_classes=["term-status"],
                                    sizing_mode="stretch_width")
        self._layout = pn.Column(
            pn.Row(self._query, pn.pane.HTML("×", margin=(12, 2)), self._weight, self._label,
                   self._remove, sizing_mode="stretch_width"),
            self._status, sizing_mode="stretch_width", margin=(0, 0, 4, 0))

    def __panel__(self):
        return self._layout

    def set(self, query: str | None = None, weight: float | None = None,
            label: str | None = None) -> None:
        """Set the given fields together (one commit), as if typed."""
        given = {"query": query, "weight": weight, "label": label}
        self.param.update(**{key: value for key, value in given.items() if value is not None})

    def row(self) -> tuple[str, float, str]:
        """(query, weight, label) as typed (an emptied weight is 0)."""
        return (self.query, 0.0 if self.weight is None else float(self.weight), self.label)

    def term(self) -> Term:
        query, weight, label = self.row()
        return Term(classes=query.strip(), weight=weight, label=label.strip())


class ComposerView(ExplorerView):
    """Compose the session's discriminant: terms, denominator, presets, LaTeX, YAML.

    The form is this view's parameters (the widgets are bound to them both ways): a change of
    any of them is applied once, in the document lock (:func:`in_document_lock`); loading a
    definition sets them all in one update, so that it is applied once and whole.
    """

    discriminant_name = param.String(default="", doc="The discriminant's name; a preset's name "
                                     "stays with the preset's own definition.")
    level = param.Selector(default="jet", objects=LEVELS)
    denominator = param.String(default="QCD", doc="The classes summed into g_B; those also in "
                               "the numerator count in g_A only.")
    terms = param.List(default=[], item_type=tuple,
                       doc="The numerator rows as typed: (query, weight, label) each; rows with "
                           "an empty query are not terms yet.")
    status = param.String(default="", doc="What the page says about the form: why it is not "
                          "applied, or what applying it changed ('' when neither).")

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self._loaded: Discriminant = self.explorer.discriminant  # where the form comes from
        self._preset = pn.widgets.Select(label="Preset (arXiv:2405.12972)",
                                         options=[NO_PRESET, *PRESETS], value=NO_PRESET,
                                         sizing_mode="stretch_width", css_classes=["preset"])
        self._name = text_field(self.param.discriminant_name, name="Name",
                                sizing_mode="stretch_width", max_length=MAX_TEXT_LENGTH["name"],
                                css_classes=["discriminant-name"])
        self._level = pn.widgets.RadioButtonGroup.from_param(self.param.level, name="Level",
                                                             color="primary", variant="outline")
        self._terms = pn.Column(sizing_mode="stretch_width")
        self._editors: list[TermEditor] = []
        self._spare_editors: list[TermEditor] = []  # hidden, reused when rows come back
        self._add = pn.widgets.Button(label="+ add term", color="default", width=110)
        self._denominator = text_field(self.param.denominator, name="Denominator classes",
                                       sizing_mode="stretch_width", max_length=MAX_QUERY_LENGTH,
                                       css_classes=["denominator"])
        self._denominator_status = pn.pane.HTML(
            pn.bind(query_status, self._denominator.param.value_input),
            css_classes=["term-status"])
        # long formulas scroll sideways inside the sidebar instead of being cut off
        self._latex = pn.pane.LaTeX("", renderer="katex", sizing_mode="stretch_width",
                                    styles={"font-size": "1.25em"},
                                    stylesheets=[":host { overflow-x: auto; overflow-y: hidden; "
                                                 "max-width: 100%; }"],
                                    css_classes=["formula"])
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width",
                                     styles={"font-size": "0.85em"},
                                     css_classes=["composer-summary"])
        self._alert = text_message("", "danger", visible=False, css_classes=["composer-error"])
        self._note = text_message("", "info", visible=False, css_classes=["composer-note"])
        self._picker = self._build_picker()
        self._yaml = self._build_yaml()

        self._preset.param.watch(self._on_preset, "value")
        self._add.on_click(lambda event: self.add_term("", 1.0, ""))
        self.watch_explorer(self._on_external, "discriminant")
        self.load(self.explorer.discriminant)

        self._layout = pn.Column(
            self._preset,
            pn.Row(self._name, self._level, sizing_mode="stretch_width"),
            pn.pane.Markdown("**Numerator** — class sets and weights", margin=(0, 10)),
            self._terms, self._add,
            self._picker,
            self._denominator, self._denominator_status,
            self._alert, self._note,
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
        self._picker_query.object = (f"<div class='picker-query-text'>"
                                     f"<code>{html.escape(query)}</code> → "
                                     f"<span style='color:{'#2e7d32' if ok else '#c62828'}'>"
                                     f"{html.escape(description)}</span></div>")

    def _replace_last(self, query: str) -> None:
        if not self._editors:
            self.add_term(query, 1.0, "")
        else:
            self._editors[-1].set(query=query)

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
        self._download.filename = f"{file_name_part(discriminant.name, 'discriminant')}.yaml"
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
        self._apply_definition(discriminant)
        return discriminant

    def export_yaml(self) -> str:
        return self.explorer.discriminant.to_yaml()

    # --- the form -------------------------------------------------------------------------
    @param.depends("terms", watch=True)
    def _show_terms(self) -> None:
        """One visible editor per row. Editors are reused (their widgets updated) and hidden when
        rows go, so that a preset with fewer or more terms changes widget values and
        visibility, not the layout (replacing a layout's children re-walks the whole page's
        models: about a third of a preset change)."""
        rows = self.terms
        if len(self._editors) != len(rows):
            pool = self._editors + self._spare_editors
            added = [self._new_editor() for _ in range(len(rows) - len(pool))]
            if added:
                self._terms.extend([editor.__panel__() for editor in added])
            pool += added
            self._editors, self._spare_editors = pool[:len(rows)], pool[len(rows):]
            for editor in pool:
                editor.__panel__().visible = editor in self._editors
        for editor, (query, weight, label) in zip(self._editors, rows):
            editor.param.update(query=query, weight=weight, label=label)

    def _new_editor(self) -> TermEditor:
        editor = TermEditor()
        editor.param.watch(lambda *events: self._edit_term(editor), ["query", "weight", "label"])
        editor.param.watch(lambda event: self.remove_term(editor), "removed")
        return editor

    def _edit_term(self, editor: TermEditor) -> None:
        """A row was edited. A label names its query: a new query without a new label drops
        the old label (a preset's, say), so that the formula never names what is not
        computed."""
        index = self._editors.index(editor)
        old, new = self.terms[index], editor.row()
        if new == old:  # the editor shows the row already (it was just loaded)
            return
        if new[0] != old[0] and new[2] == old[2]:
            new = (new[0], new[1], "")
        self.terms = [*self.terms[:index], new, *self.terms[index + 1:]]

    def add_term(self, query: str = "", weight: float = 1.0, label: str = "") -> TermEditor:
        """A new numerator row (applied at once when its query is not empty)."""
        self.terms = [*self.terms, (query, float(weight), label)]
        return self._editors[-1]

    def remove_term(self, editor: TermEditor) -> None:
        """Drop the editor's row; the rows below move up an editor (the last one is hidden)."""
        if editor in self._editors:
            index = self._editors.index(editor)
            self.terms = [*self.terms[:index], *self.terms[index + 1:]]

    def load(self, discriminant: Discriminant) -> None:
        """Show ``discriminant`` in the form, in one update of the form's parameters."""
        self._loaded = discriminant
        self.param.update(discriminant_name=discriminant.name, level=discriminant.level,
                          denominator=discriminant.denominator,
                          terms=[(t.classes, float(t.weight), t.label)
                                 for t in discriminant.numerator])

    def build(self) -> Discriminant:
        """The discriminant the form describes; DiscriminantError/QueryError if it is invalid.

        The description belongs to the definition the form was loaded from, and goes with its
        name; a preset's name is kept only by the preset itself: an edited preset is named
        "<preset> (edited)" and has no description.
        """
        terms = tuple(Term(classes=query.strip(), weight=weight, label=label.strip())
                      for query, weight, label in self.terms if query.strip())
        name = self.discriminant_name.strip() or "custom"
        description = self._loaded.description if name == self._loaded.name else ""
        discriminant = Discriminant(name=name, numerator=terms,
                                    denominator=self.denominator.strip(), level=self.level,
                                    description=description)
        if name in PRESETS and preset_name(discriminant) != name:  # an edited preset
            edited = (name + EDITED)[:MAX_TEXT_LENGTH["name"]]
            discriminant = Discriminant(name=edited, numerator=terms,
                                        denominator=discriminant.denominator, level=self.level)
        return discriminant

    @param.depends("discriminant_name", "level", "denominator", "terms", watch=True)
    def _on_form(self) -> None:
        in_document_lock(self._apply_form)

    def _apply_form(self) -> None:
        """Make the form the session's discriminant, or say why it cannot be (the last valid
        one stays)."""
        try:
            discriminant = self.build()
        except (DiscriminantError, QueryError) as error:
            self._show_error(f"Not applied: {error}")
            return
        self._show_applied(discriminant)
        if discriminant.name != self.discriminant_name.strip():
            self.discriminant_name = discriminant.name  # an edited preset's new name
        current = self.explorer.discriminant
        if discriminant == current or _stands_for(discriminant, current):
            self._show(current)  # the form shows the session's discriminant already
        else:
            self.explorer.discriminant = discriminant  # shown by _on_external

    def _on_preset(self, event) -> None:
        if event.new != NO_PRESET:
            self.apply_preset(event.new)

    def apply_preset(self, name: str) -> None:
        self._apply_definition(PRESETS[name])

    def _apply_definition(self, discriminant: Discriminant) -> None:
        """A whole definition (a preset, a YAML file) into the form, then applied."""
        self.load(discriminant)
        in_document_lock(self._apply_form)  # also when the form showed it already

    def _on_external(self, event) -> None:
        """The session's discriminant changed (this form, the URL, a notebook): show it. Read
        from the explorer, not the event: a watcher that ran before may have changed it again."""
        discriminant = self.explorer.discriminant
        try:
            form = self.build()
        except (DiscriminantError, QueryError):
            form = None
        if form != discriminant and not _stands_for(form, discriminant):
            self.load(discriminant)
        self._show(discriminant)

    # --- display --------------------------------------------------------------------------
    def _show(self, discriminant: Discriminant) -> None:
        """The applied discriminant: formula, summary and the preset it is (if any)."""
        self._preset.value = preset_name(discriminant) or NO_PRESET
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
        self._summary.object = (f"<div class='composer-summary-text'>"
                                f"<b class='composer-name'>{html.escape(discriminant.name)}</b> "
                                f"({level}){description}<br>"
                                f"g<sub>A</sub>: {html.escape(_describe(numerator, 4))}<br>"
                                f"g<sub>B</sub>: {html.escape(_describe(denominator, 4))}</div>")

    def _show_applied(self, discriminant: Discriminant) -> None:
        """No error; say which denominator classes went to the numerator, if any."""
        both = discriminant.classes_in_both
        text = (f"{_describe(both)} {'is' if len(both) == 1 else 'are'} in the numerator and "
                f"in the denominator set: counted in g_A only, left out of g_B." if both else "")
        self.status = text
        self._alert.visible = False
        self._note.object = message_html(text, "composer-note-text")
        self._note.visible = bool(text)

    def _show_error(self, text: str) -> None:
        self.status = text
        self._alert.object = message_html(text, "composer-error-text")
        self._alert.visible = True
        self._note.visible = False
