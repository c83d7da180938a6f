"""Event-level mode: the discriminant summed over the two leading jets, versus dijet mass.

D_event = D(j1) + D(j2) (arXiv:2405.12972 eq. 7; the W'->WWW triboson preset is the paper's
example). Efficiencies count events; the spectra are of the two leading jets' invariant mass.
Any discriminant can be summed this way; a discriminant defined at event level is the natural
choice.
"""

from __future__ import annotations

import html

import panel as pn

from app.views.base import message, problem_message
from app.views.spectrum import ScanView, efficiency_widgets, scan_summary

__all__ = ["EventView"]


class EventView(ScanView):
    """Dijet-mass spectra at each event efficiency of D(j1) + D(j2), and the stack."""

    scan_name = "event_scan"
    overlay_name = None
    xlabel = "dijet mass m(j1, j2) [GeV]"
    curves_title = "Dijet mass at each event efficiency"
    stack_title = "Per-process stack at the chosen event efficiency"
    show_window = False
    save_names = ("dijet_spectra", "dijet_stack")

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self._slider, self._player = efficiency_widgets(self.explorer)
        self._note = pn.pane.Markdown("", sizing_mode="stretch_width",
                                      styles={"font-size": "0.9em"})
        self.watch_explorer(self._update_note, ["discriminant"])
        self._update_note()

    def _update_note(self, *events) -> None:
        discriminant = self.explorer.discriminant
        if discriminant.level == "event":
            text = (f"**{html.escape(discriminant.name)}** is an event-level discriminant: "
                    "D<sub>event</sub> = D(j1) + D(j2) over the two leading jets.")
        else:
            text = (f"**{html.escape(discriminant.name)}** is a jet-level discriminant; here it is "
                    "summed over the two leading jets, D<sub>event</sub> = D(j1) + D(j2). "
                    "Choose the *W'->WWW triboson* preset for the paper's event-level example.")
        self._note.object = text

    def summary(self) -> str:
        return scan_summary(self.explorer, self.explorer.event_scan, unit="events",
                            reference="all events", event_level=True)

    def controls(self):
        return pn.Column(self._note, pn.Row(pn.Column(self._slider, self._player, width=330)),
                         sizing_mode="stretch_width")

    def __panel__(self):
        explorer = self.explorer
        if not explorer.ready:
            return problem_message(explorer)
        if not explorer.analysis.has_events:
            return message("This dataset has no event structure (columns `event_id` and "
                           "`jet_rank`), so the event-level view is not available.", "warning")
        return super().__panel__()
