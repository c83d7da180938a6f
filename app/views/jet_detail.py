"""One jet: its top-5 classes and, where the dataset stores constituents, its particles as a point
cloud in (Δη, Δφ) — marker and colour by particle type, size by pT.

Many datasets store constituents for some jets only (the embedded default: 2,000 of 67,130):
:func:`stored_constituents` counts them per jet once per dataset, the jet summary and the
latent view's table say which jets carry them."""

from __future__ import annotations

import html

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh renderer)
import numpy as np
import panel as pn
import polars as pl

from sophon.labels import LABELS

from app.plots import format_number
from app.state import shared
from app.views.base import ExplorerView, in_document_lock, problem_message

__all__ = ["JetDetailView", "read_constituents", "PARTICLE_TYPES", "particle_types",
           "stored_constituents"]

# Particle type -> (flag column, marker, colour)
PARTICLE_TYPES: dict[str, tuple[str, str, str]] = {
    "charged hadron": ("part_isChargedHadron", "circle", "#1f77b4"),
    "neutral hadron": ("part_isNeutralHadron", "square", "#2ca02c"),
    "photon": ("part_isPhoton", "triangle", "#ff7f0e"),
    "electron": ("part_isElectron", "diamond", "#d62728"),
    "muon": ("part_isMuon", "star", "#9467bd"),
    "other": ("", "x", "#7f7f7f"),
}
_POSITION = ("part_deta", "part_dphi")
_MOMENTUM = ("part_px", "part_py")


def stored_constituents(analysis) -> np.ndarray | None:
    """(N,) how many constituents each jet of ``analysis``'s dataset stores (0: none), or None
    when it stores no constituent columns; read once per dataset and process
    (:func:`sophon.scoring.constituent_counts`)."""
    from sophon.scoring import constituent_counts

    return shared(analysis, "constituent_counts", lambda: constituent_counts(analysis.dataset))


def read_constituents(dataset, row: int) -> pl.DataFrame | None:
    """The constituents of jet ``row`` (one row of list columns read from the parquet files, not
    the whole column), or None when the dataset stores none."""
    if not all(dataset.has(c) for c in _POSITION):
        return None
    wanted = [c for c in (*_POSITION, *_MOMENTUM, "part_pt", "part_energy", "part_charge",
                          *(flag for flag, _, _ in PARTICLE_TYPES.values() if flag))
              if dataset.has(c)]
    frame = dataset.row(wanted, int(row))
    if frame.height == 0:
        return None
    # an empty list explodes to one null row: drop it
    return frame.explode(wanted).drop_nulls(subset=list(_POSITION))


def particle_types(particles: pl.DataFrame) -> np.ndarray:
    """(n,) particle type name per constituent from the ``part_is*`` flags."""
    types = np.full(particles.height, "other", dtype=object)
    for name, (flag, _, _) in PARTICLE_TYPES.items():
        if flag and flag in particles.columns:
            types[particles[flag].fill_null(0).to_numpy() > 0.5] = name
    return types


class JetDetailView(ExplorerView):
    """The chosen jet (``explorer.jet``): kinematics, top-5 classes, constituents."""

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        explorer = self.explorer
        n_jets = explorer.dataset.n_jets if explorer.ready else 1
        self._index = pn.widgets.IntInput(label="Jet index", start=0, end=max(n_jets - 1, 0),
                                          value=explorer.jet, width=140, placeholder="jet #")
        self._index.param.watch(self._on_index, "value")
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["jet-summary"])
        self._classes = pn.pane.HoloViews(height=230, sizing_mode="stretch_width")
        self._particles = pn.pane.HoloViews(height=380, sizing_mode="stretch_width")
        self._note = pn.pane.HTML("", sizing_mode="stretch_width")
        self.watch_explorer(self.refresh, ["jet", "discriminant"])
        self.refresh()

    def _on_index(self, event) -> None:
        jet = event.new

        def choose() -> None:
            if jet != self.explorer.jet:
                self.explorer.jet = jet

        in_document_lock(choose)

    def refresh(self, *events) -> None:
        explorer = self.explorer
        if not explorer.ready:
            return
        row = explorer.jet
        self._index.value = row
        if row is None:
            self._summary.object = ("Choose a jet: click a row of the selected-jets table, or "
                                    "type its index.")
            self._classes.object = None
            self._particles.object = None
            self._note.object = ""
            return
        dataset, analysis = explorer.dataset, explorer.analysis
        if not 0 <= row < dataset.n_jets:
            self._summary.object = f"No jet {row}: the dataset has {dataset.n_jets:,} jets."
            return
        facts = [f"<b>Jet {row}</b>"]
        for column, label, unit in (("process", "process", ""), ("jet_pt", "pT", " GeV"),
                                    ("jet_eta", "η", ""), ("jet_sdmass", "mSD", " GeV"),
                                    ("jet_nparticles", "particles", "")):
            if dataset.has(column):
                value = dataset.column(column)[row]
                text = (html.escape(str(value)) if column == "process"
                        else format_number(float(value)))
                facts.append(f"{label} {text}{unit}")
        counts = stored_constituents(analysis)
        if counts is not None:
            stored = int(counts[row])
            facts.append(f"<span class='jet-constituents'>{stored} constituents stored</span>"
                         if stored else "<span class='jet-constituents'>no constituents "
                         "stored</span>")
        if dataset.has("jet_label"):
            label = int(dataset.column("jet_label")[row])
            if 0 <= label < len(LABELS):
                facts.append(f"true class {LABELS[label]}")
        d_value = float(analysis.discriminant(explorer.discriminant)[row])
        facts.append(f"D = {d_value:.4f} ({html.escape(explorer.discriminant.name)})")
        top, probabilities = analysis.top_classes(np.array([row]), k=5)
        names = [LABELS[i] for i in top[0]]
        self._summary.object = " · ".join(facts) + "<br>top-5: " + ", ".join(
            f"<span class='top-class'>{n}</span> {p:.3f}" for n, p in zip(names, probabilities[0]))
        bars = hv.Bars(list(zip(names, probabilities[0].astype(float))), "class", "probability")
        self._classes.object = bars.opts(invert_axes=True, responsive=True, height=220,
                                         title="Top-5 classes", color="#3b4cc0",
                                         tools=["hover"], invert_yaxis=True, toolbar="above")
        self._show_particles(row)

    def _show_particles(self, row: int) -> None:
        particles = read_constituents(self.explorer.dataset, row)
        if particles is None:
            self._particles.object = None
            self._note.object = ("<i>This dataset stores no constituents (columns "
                                 "<code>part_deta</code>, <code>part_dphi</code>, …), so only "
                                 "the classes are shown.</i>")
            return
        if particles.height == 0:
            self._particles.object = None
            counts = stored_constituents(self.explorer.analysis)
            carrying = 0 if counts is None else int(np.count_nonzero(counts))
            self._note.object = (f"<i>Jet {row} carries no constituents: this dataset stores them "
                                 f"for {carrying:,} of its {self.explorer.dataset.n_jets:,} jets (the "
                                 "table of selected jets marks them).</i>")
            return
        if "part_pt" in particles.columns:
            pt = particles["part_pt"].to_numpy().astype(float)
        elif all(c in particles.columns for c in _MOMENTUM):
            pt = np.hypot(particles["part_px"].to_numpy(), particles["part_py"].to_numpy())
        else:
            pt = np.ones(particles.height)
        types = particle_types(particles)
        size = 4 + 22 * np.sqrt(np.clip(pt, 0, None) / max(float(np.max(pt, initial=0)), 1e-9))
        layers = []
        for name, (_, marker, color) in PARTICLE_TYPES.items():
            keep = types == name
            if not keep.any():
                continue
            data = {"Δη": particles["part_deta"].to_numpy()[keep].astype(float),
                    "Δφ": particles["part_dphi"].to_numpy()[keep].astype(float),
                    "pT": pt[keep], "size": size[keep]}
            layers.append(hv.Points(data, ["Δη", "Δφ"], ["pT", "size"], label=name).opts(
                marker=marker, color=color, size="size", alpha=0.75, line_color="black",
                line_width=0.4, tools=["hover"]))
        circle = hv.Ellipse(0, 0, 1.6).opts(color="#999999", line_dash="dotted")
        self._particles.object = hv.Overlay([*layers, circle]).opts(
            responsive=True, height=370, title=f"Constituents of jet {row} "
            f"({particles.height} particles; size ∝ √pT)", legend_position="right",
            xlim=(-1, 1), ylim=(-1, 1), aspect=None, toolbar="above")
        self._note.object = ""

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(pn.Row(self._index, self._summary, sizing_mode="stretch_width"),
                         self._note, pn.Row(self._classes, self._particles,
                                            sizing_mode="stretch_width"),
                         sizing_mode="stretch_width", css_classes=["jet-detail"])
