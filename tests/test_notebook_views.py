"""The app's views inline in a notebook (issue 22): what a click in a notebook output sends.

A notebook output is a Bokeh document of its own, connected to the kernel by a comm; Panel holds
it and sends its changes when one of its own objects changes. These tests draw views into such
documents (as ``_repr_mimebundle_`` does, with a comm that records what it would send) and replay
a click the way Panel's comm handler does (document held, the widget's change, released), then
check what reached the comm:

- the log/linear and absolute/normalised toggles send the figures' new scale, data and range
  (they changed only Bokeh models, which Panel did not send: the plots did not redraw inline);
- a preset picked in a composer drawn in one output updates a spectrum view drawn in another
  (Bokeh refused it: "Models must be owned by only a single document"), and no stylesheet sent
  afterwards points at Panel's CDN (offline the composer's formula showed its text twice).

SYNTHETIC dataset (tests/conftest.py).
"""

from __future__ import annotations

import json

import panel as pn
import pytest
from bokeh.document import Document
from pyviz_comms import Comm

from app import Explorer
from app.views import ComposerView, SpectrumView
from sophon.discriminant import PRESETS


class RecordingComm(Comm):
    """A comm that is open and keeps what it is sent."""

    def __init__(self):
        super().__init__()
        self._comm = True
        self.sent: list[str] = []

    def init(self):
        pass

    def close(self):
        pass

    def send(self, data=None, metadata=None, buffers=()):
        if data is not None:
            self.sent.append(data)

    def events(self) -> list[dict]:
        found = []
        for data in self.sent:
            if '"events"' in data:
                found.extend(json.loads(data).get("events", []))
        return found


@pytest.fixture
def notebook():
    """Draws Panel objects as notebook outputs: ``draw(obj)`` -> (document, comm, root ref)."""
    drawn = []

    def draw(obj):
        document, comm = Document(), RecordingComm()
        root = pn.panel(obj).get_root(document, comm)
        document.add_root(root)
        document.hold()  # as Panel holds a notebook output's document
        ref = root.ref["id"]
        pn.state._views[ref] = (obj, root, document, comm)
        drawn.append(ref)
        return document, comm, ref

    with pn.config.set(inline=True):
        yield draw
    for ref in drawn:
        pn.state._views.pop(ref, None)


def click(widget, document, ref, attribute, new):
    """A change from the page, as Panel's comm handler applies it: the document held, the
    widget's model changed, released."""
    model = widget._models[ref][0]
    held = document.callbacks.hold_value
    document.hold()
    try:
        widget._comm_change(document, ref, None, None, attribute, getattr(model, attribute), new)
    finally:
        document.unhold()
        if held:
            document.hold(held)


def test_toggles_send_the_new_scale_data_and_range(synthetic_path, notebook):
    explorer = Explorer.from_path(synthetic_path)
    view = SpectrumView(explorer)
    document, comm, ref = notebook(view)
    comm.sent.clear()
    click(view._yscale, document, ref, "active", 1)  # "linear"
    assert explorer.log_y is False
    events = comm.events()
    changed = {(event.get("model", {}).get("id"), event.get("attr")) for event in events}
    curves, stack = view.curves_plot.figure, view.stack_plot.figure
    for figure in (curves, stack):
        assert (figure.id, "y_scale") in changed
    assert (view.stack_plot.source.id, "data") in changed
    # the stack's range is set by the view (a Range1d), not left to the browser's first guess
    ranges = {event["attr"]: event["new"] for event in events
              if event.get("model", {}).get("id") == stack.y_range.id}
    assert ranges["start"] == 0.0 and ranges["end"] > 0
    assert ranges["reset_end"] == ranges["end"]

    comm.sent.clear()
    click(view._mode, document, ref, "active", 1)  # "normalised"
    assert explorer.normalise is True
    changed = {(event.get("model", {}).get("id"), event.get("attr")) for event in comm.events()}
    assert (view.curves_plot.source.id, "data") in changed
    assert (view.stack_plot.source.id, "data") in changed


def test_a_preset_picked_in_one_output_updates_a_view_in_another(synthetic_path, notebook):
    explorer = Explorer.from_path(synthetic_path, discriminant=PRESETS["X->bb vs QCD"])
    spectrum = SpectrumView(explorer)
    spectrum_document, spectrum_comm, _ = notebook(spectrum)
    composer = ComposerView(explorer)
    document, comm, ref = notebook(pn.Column(composer, width=420))
    spectrum_comm.sent.clear()
    comm.sent.clear()

    click(composer._preset, document, ref, "value", "A3: X->b q q")  # raised RuntimeError

    assert explorer.discriminant.name == "A3: X->b q q"
    assert "bqq" in composer._latex.object
    assert any(event.get("attr") == "data" for event in spectrum_comm.events())
    for sent in (comm.sent, spectrum_comm.sent):
        assert not any("cdn.holoviz.org" in data for data in sent)
    for shown in (document, spectrum_document):
        assert shown._template_variables["dist_url"].endswith("/panel-preview/static/extensions/panel/")


def test_a_served_page_is_left_alone(synthetic_path):
    """Outside a notebook (no comm) a view's own-document context changes nothing."""
    view = SpectrumView(Explorer.from_path(synthetic_path))
    before = pn.state.curdoc
    with view.own_notebook_document():
        assert pn.state.curdoc is before
