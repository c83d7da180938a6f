"""Learning on the latent space, in the background: transfer learning and the sliding-window
anomaly search (arXiv:2405.12972 secs. III-IV; :mod:`sophon.transfer`, :mod:`sophon.anomaly`).

**Transfer learning.** The signal and background jet sets are typed as text
(:func:`parse_jet_set`): ``process:NAME`` (a bare name is a process), ``classes:QUERY`` (the
true class, where the dataset has one), or ``selection`` (the jets selected in this session's
latent space). The command line's ``rows:FILE`` and ``file:PATH`` are refused: the page reads no
file of the server. **Train** runs :func:`sophon.transfer.fit_transfer` with at most
:data:`~app.limits.MAX_TRANSFER_JETS_PER_SET` jets a set and
:data:`~app.limits.MAX_TRANSFER_EPOCHS` epochs (an ensemble: at most
:data:`~app.limits.MAX_TRANSFER_ENSEMBLE` heads, their ln(p_s/p_b) averaged), its first layer
preloaded from the model head that scored the dataset (:func:`head_checkpoint`: the checkpoint
a compact dataset names, else the ``.pt`` file of the models folder whose hash the dataset's
model id names). When it is done the page shows the held-out ROC curve (background rejection
against signal efficiency, the head and the best node discriminant) and the rejections at 30 %
and 50 % signal efficiency.

**Use as discriminant.** The head's per-jet score ln(p_s / p_b)
(:attr:`~sophon.transfer.TransferResult.values`) becomes the session's discriminant as a
:class:`HeadDiscriminant`: a :class:`~sophon.discriminant.Discriminant` whose ``log_odds`` are
those values and whose D is p_s / (p_s + p_b), instead of class-set sums. Every view (spectrum
versus efficiency, significance, events, the latent map's D, downloads) asks the shared
:class:`~sophon.analysis.DatasetAnalysis` for a discriminant's values, so it cuts on the head as
on any discriminant, through the same caches, with no file written and no dataset loaded. This
is simpler than the route a rescoring takes (:func:`sophon.transfer.write_score_column` into a
copy of the dataset, and the session switched to the copy): the explorer cuts on
discriminants, not columns, so a column alone would not be used; and the copy of a compact
dataset such as the embedded default must lie beside it, inside the data folder of the checkout
or of the installed package, where a server should not write. The column is offered as a
download instead (:meth:`LearningView.score_file`: jet row and ``transfer_<name>``).

How the head sits with the composer and with links: its name is unique in the process
(``... (trained head N)``), its terms and denominator are the best node discriminant's (its
*stand-in*), its description says both. The composer's form builds plain discriminants only:
showing the head there gives back its stand-in of the same definition, which the composer
knows for the head's (its formula shows the head's D = p_s / (p_s + p_b)); editing the form or
choosing a preset leaves the head, and **Use as discriminant** brings it back. A link holds the stand-in's
definition: another session, or a restarted server, gives the best node discriminant under the
head's name, as its description says.

**Sliding-window search.** SALAD (or CWoLa, IAD) over the windows m0 = start ... stop in steps
(:func:`sophon.anomaly.sliding_windows`, at most :data:`~app.limits.MAX_SCAN_WINDOWS`), each
window's classifier applied in m0 +- 5 GeV at the working point that keeps the chosen share of
the simulated QCD there, on the latents or the high-level features, of each event's leading
jet (the paper's) or of all jets, with at most :data:`~app.limits.MAX_SCAN_JETS_PER_WINDOW`
training jets and :data:`~app.limits.SCAN_BOOSTING_ITERATIONS` boosting iterations per
classifier. The page shows the stacked mSD of the selected jets by process and, per window,
the truth-free excess significance and the non-QCD share of the selected jets against the
share before the cut (the simulation's truth), with the windows whose working point is not
resolved marked.

**Jobs.** A training or a search is a :class:`LearningJob` in the process-wide worker thread
that also runs rescoring (:func:`app.jobs.run_in_worker`: one job at a time, so
sessions queue instead of oversubscribing the CPU; torch and the boosting release the GIL, so
other sessions keep working). At most :data:`~app.limits.MAX_LEARNING_JOBS_PER_SESSION` per
session and :data:`~app.limits.MAX_LEARNING_JOBS_TOTAL` on the server are unfinished at a time
(:func:`learning_budget`, an :class:`app.limits.Budget`; a limit reached is said in the page and
starts nothing). The page polls the job for its progress bar (epochs, windows); **Cancel** stops
it after the current epoch or window, and so does closing the page. Every message that quotes what was typed is shown as text
(never HTML); a failure is its message, never a traceback.
"""

from __future__ import annotations

import html
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh renderer)
import numpy as np
import panel as pn
import param

from sophon.discriminant import MAX_TEXT_LENGTH, Discriminant, DiscriminantError
from sophon.store import JetDataset
from sophon.transfer import MAX_SET_TEXT, JetSet, TransferOptions, TransferResult

from app.jobs import WorkerJob, queue
from app.limits import (MAX_LEARNING_JOBS_PER_SESSION, MAX_LEARNING_JOBS_TOTAL,
                        MAX_SCAN_JETS_PER_WINDOW, MAX_SCAN_WINDOWS, MAX_TRANSFER_ENSEMBLE,
                        MAX_TRANSFER_EPOCHS, MAX_TRANSFER_JETS_PER_SET,
                        SCAN_BOOSTING_ITERATIONS, Budget, LimitReached, Limits, SessionUsage)
from app.plots import (efficiency_label, format_number, plot_row, process_colors,
                       readable_ticks)
from app.state import list_models, output_dir, resolve_model, shared
from app.views.base import (ExplorerView, file_name_part, in_document_lock, message_html,
                            problem_message, text_message)
from app.views.rescoring import stored_model_hash
from app.views.spectrum import ToggleGroup

__all__ = ["LearningView", "LearningJob", "HeadDiscriminant", "JobCancelled", "parse_jet_set",
           "head_checkpoint", "learning_budget", "start_job", "roc_plot", "stack_plot",
           "window_plots", "WORKING_POINTS", "REPORTED"]

log = logging.getLogger("sophon.app")

#: The working points offered: the share of the simulated QCD each window's cut keeps.
WORKING_POINTS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)
#: Signal efficiencies whose held-out rejection the page states.
REPORTED = (0.3, 0.5)
#: Epochs a training runs unless asked otherwise (the library's default is 40).
DEFAULT_EPOCHS = 20
PLOT_HEIGHT = 330
_HEAD_COLOR, _NODE_COLOR = "#3b4cc0", "#d62728"
_HEADS = itertools.count(1)  # numbers the trained heads of the process: their names are unique
_BUDGETS: dict[Path, Budget] = {}
_BUDGETS_LOCK = threading.Lock()
#: The jet set of the session's latent-space selection.
SELECTION = "selection"


# --- jet sets and the model head ----------------------------------------------------------------
def parse_jet_set(text: str, selection: np.ndarray | None = None) -> JetSet:
    """The jet set typed as ``text``: ``process:NAME`` (or a bare name), ``classes:QUERY``, or
    ``selection`` (the rows ``selection``, the session's latent-space selection). ValueError,
    whose text is the page's message, for anything else (``rows:`` and ``file:`` read files:
    the command line's, not the page's)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a jet set is empty: type process:NAME, classes:QUERY or selection")
    if len(text) > MAX_SET_TEXT:
        raise ValueError(f"a jet set is text of at most {MAX_SET_TEXT:,} characters, this one "
                         f"has {len(text):,}")
    text = text.strip()
    if text == SELECTION:
        if selection is None or len(selection) == 0:
            raise ValueError("'selection' is the jets selected in the latent space, and none "
                             "are selected: draw a box or a lasso in the Latent space tab")
        return JetSet("rows", np.asarray(selection, dtype=np.int64))
    kind, separator, _ = text.partition(":")
    if separator and kind.strip() in ("rows", "file"):
        raise ValueError(f"{kind.strip()}:... reads a file, and the page reads no file of the "
                         "server; use process:NAME, classes:QUERY or selection here (files: "
                         "sophon transfer on the command line)")
    return JetSet.parse(text)


def set_status(text: str, dataset: JetDataset | None,
               selection: np.ndarray | None = None) -> tuple[bool, str]:
    """(ok, text): how many jets the typed set holds, or why it is not a set."""
    try:
        jet_set = parse_jet_set(text, selection)
        if dataset is None:
            return True, jet_set.describe()
        if jet_set.kind == "process":
            names = list(dataset.process_names) if dataset.has("process") else []
            if jet_set.value not in names:
                return False, (f"unknown process {jet_set.value[:60]!r}; the processes are "
                               f"{', '.join(names) or 'none (no process column)'}")
            count = int(np.count_nonzero(dataset.process_codes == names.index(jet_set.value)))
        elif jet_set.kind == "classes":
            from sophon.labels import mask

            if not dataset.has("jet_label"):
                return False, "the dataset has no true classes (column jet_label)"
            labels = dataset.column("jet_label")
            chosen = mask(jet_set.value)
            count = int(np.count_nonzero((labels >= 0) & chosen[np.clip(labels, 0, None)]))
        else:
            count = len(jet_set.value)
    except ValueError as error:  # QueryError and DiscriminantError are ValueErrors
        return False, str(error)
    return True, f"{jet_set.describe()}: {count:,} jets"


def _status_html(ok: bool, text: str) -> str:
    color, mark = ("#2e7d32", "✓") if ok else ("#c62828", "✗")
    return (f"<span class='learning-set-status-text' style='color:{color};font-size:0.85em'>"
            f"{mark} {html.escape(text)}</span>")


def head_checkpoint(dataset: JetDataset) -> Path | None:
    """The checkpoint whose head scored ``dataset`` (its first layer preloads the transfer
    head): the one a compact dataset names, else a ``.pt``/``.pth`` file of the models folder
    whose sha256 the dataset's model id names; None when there is none."""
    if dataset.score_head is not None:
        return dataset.score_head
    digest = stored_model_hash(dataset)
    if digest is None:
        return None
    from sophon.manifest import sha256_file

    for name in list_models():
        if Path(name).suffix not in (".pt", ".pth"):
            continue
        try:
            path = resolve_model(name)
            if sha256_file(path).startswith(digest):
                return path
        except (OSError, ValueError):
            continue
    return None


# --- the head as a discriminant -------------------------------------------------------------------
@dataclass(frozen=True)
class HeadDiscriminant(Discriminant):
    """A trained head's score as a discriminant: ``log_odds`` gives the head's ln(p_s / p_b) of
    every jet (``values``, (N,) float32, of the dataset ``dataset``) and ``evaluate`` gives
    D = p_s / (p_s + p_b); name, terms, denominator and description are those of its stand-in
    (:meth:`stand_in`), the plain discriminant a link or the composer's form holds. Equal only to
    itself (dataclass equality needs the same class), so no cache mixes it with its stand-in."""

    values: np.ndarray = field(default=None, repr=False, compare=False)
    dataset: JetDataset | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        values = np.array(self.values, dtype=np.float32)  # a copy, read-only
        if values.ndim != 1 or not np.isfinite(values).all():
            raise DiscriminantError(f"{self.name!r}: a head's values are one finite number a jet")
        values.flags.writeable = False
        object.__setattr__(self, "values", values)

    def _check(self, scores: np.ndarray) -> None:
        if len(scores) != len(self.values):
            raise DiscriminantError(f"{self.name!r} holds the values of {len(self.values):,} "
                                    f"jets; this dataset has {len(scores):,}")

    def log_odds(self, scores: np.ndarray, cache=None) -> np.ndarray:
        self._check(scores)
        return self.values

    def evaluate(self, scores: np.ndarray, cache=None) -> np.ndarray:
        self._check(scores)
        return (1.0 / (1.0 + np.exp(-np.clip(self.values, -80.0, 80.0)))).astype(np.float32)

    def latex(self) -> str:
        return r"D = \frac{p_\mathrm{s}}{p_\mathrm{s} + p_\mathrm{b}}"

    def stand_in(self) -> Discriminant:
        """The plain discriminant of the same definition (the best node discriminant's terms
        under the head's name)."""
        return Discriminant(name=self.name, numerator=self.numerator,
                            denominator=self.denominator, level=self.level,
                            description=self.description)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def head_discriminant(result: TransferResult, dataset: JetDataset) -> HeadDiscriminant:
    """The session's discriminant of a trained head (see the module's docstring)."""
    number = next(_HEADS)
    node = result.node_discriminant
    signal, background = _short(result.signal), _short(result.background)
    name = f"{signal} vs {background} (trained head {number})"[:MAX_TEXT_LENGTH["name"]]
    head_50 = result.rejection(0.5)
    description = (
        f"The score ln(p_s/p_b) of the head trained in the Learning tab on {signal} against "
        f"{background} (held-out background rejection {format_number(head_50.rejection)} at "
        f"50 % signal efficiency). In the session that trained it, this score is the "
        f"discriminant; the terms are its stand-in, the best node discriminant "
        f"({_short(node.name)}), which a link, another session or a restarted server computes "
        "instead.")[:MAX_TEXT_LENGTH["description"]]
    return HeadDiscriminant(name=name, numerator=node.numerator, denominator=node.denominator,
                            description=description, values=result.values, dataset=dataset)


# --- background jobs ------------------------------------------------------------------------------
class JobCancelled(Exception):
    """Raised from a job's progress report once its Cancel was pressed."""


@dataclass(eq=False, kw_only=True)
class LearningJob(WorkerJob):
    """One training or search in the worker thread: ``work(job)`` computes the result and calls
    :meth:`report` as it goes (which raises :class:`JobCancelled` once :attr:`cancel` is set)."""

    kind: str  # "training" or "search"
    work: Callable[[LearningJob], object]
    analysis: object = None  # the DatasetAnalysis it works on
    message: str = "waiting for the worker (one job runs at a time on this server)"
    details: dict = field(default_factory=dict)  # how it was asked for, for the page
    seconds: float = 0.0
    ended: threading.Event = field(default_factory=threading.Event)

    def report(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps (epochs, windows) are done; raises JobCancelled after
        Cancel."""
        if self.cancel.is_set():
            raise JobCancelled
        self.done, self.total = done, total

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has finished; whether it has."""
        return self.ended.wait(timeout)

    def run(self) -> None:
        started = time.perf_counter()
        try:
            if self.cancel.is_set():
                raise JobCancelled
            self.state = "running"
            self.result = self.work(self)
            self.state = "done"
        except JobCancelled:
            self.state, self.message = "cancelled", f"the {self.kind} was cancelled"
        except (ValueError, OSError, ImportError) as error:  # the library names what is wrong
            self.state, self.message = "failed", " ".join(str(error).split())[:1000]
        except Exception as error:  # the page shows what failed; the server keeps serving
            log.exception("a learning job (%s) failed", self.kind)
            self.state = "failed"
            self.message = (f"the {self.kind} failed unexpectedly ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:300]}); the server's log has the "
                            "details")
        finally:
            self.seconds = time.perf_counter() - started
            self.close_ticket()
            self.ended.set()


def learning_budget() -> Budget:
    """The process-wide :class:`~app.limits.Budget` of learning jobs (jobs only: they write no
    files)."""
    folder = output_dir().resolve()
    with _BUDGETS_LOCK:
        if folder not in _BUDGETS:
            _BUDGETS[folder] = Budget(folder, Limits(
                jobs_per_session=MAX_LEARNING_JOBS_PER_SESSION,
                jobs_total=MAX_LEARNING_JOBS_TOTAL, kind="learning"))
        return _BUDGETS[folder]


def start_job(kind: str, work: Callable[[LearningJob], object], session: SessionUsage,
              analysis=None, account: Budget | None = None) -> LearningJob:
    """Queue ``work`` in the worker thread for ``session``; LimitReached (its text is the page's
    message) when the session or the server has as many learning jobs as it may."""
    account = learning_budget() if account is None else account
    ticket = account.admit(session, f"learning-{kind}-{id(work)}", 0)
    return queue(LearningJob(kind=kind, work=work, analysis=analysis, ticket=ticket,
                             budget=account))


def _worker_threads() -> int:
    """Half the cores at most: the server's sessions keep the rest (as rescoring does)."""
    return max(1, (os.cpu_count() or 2) // 2)


# --- plots ----------------------------------------------------------------------------------------
def _base_opts(**extra) -> dict:
    return dict(responsive=True, height=PLOT_HEIGHT, toolbar="above", show_grid=True,
                default_tools=["save", "box_zoom", "reset"], fontsize={"title": "11pt"}, **extra)


def _rejection_curve(roc) -> tuple[np.ndarray, np.ndarray]:
    """(signal efficiency, background rejection) where background passes."""
    signal, background = roc.signal_efficiency, roc.background_efficiency
    keep = (background > 0) & (signal > 0)
    return signal[keep], 1.0 / background[keep]


def roc_plot(result: TransferResult) -> hv.Overlay:
    """The held-out ROC curves: background rejection 1/ε_B against signal efficiency, the head
    and the best node discriminant, the head's 30 % and 50 % points marked."""
    dims = (hv.Dimension("signal", label="signal efficiency (held-out half)", range=(0, 1)),
            hv.Dimension("rejection", label="background rejection 1/ε_B"))
    head = hv.Curve(_rejection_curve(result.head_roc), *dims, label="trained head").opts(
        color=_HEAD_COLOR, line_width=2.5, tools=["hover"])
    node = hv.Curve(_rejection_curve(result.node_roc), *dims,
                    label=f"best node D: {_short(result.node_discriminant.name, 40)}").opts(
        color=_NODE_COLOR, line_width=2, line_dash="dashed", tools=["hover"])
    points = [(r.signal_efficiency, r.rejection) for r in
              (result.rejection(e) for e in REPORTED) if np.isfinite(r.rejection)]
    marks = hv.Scatter(points, *dims, label="head at 30 % and 50 %").opts(
        color=_HEAD_COLOR, size=9, marker="circle")
    return (head * node * marks).opts(
        title=f"Held-out ROC: {_short(result.signal, 40)} vs {_short(result.background, 40)}",
        logy=True, legend_position="top_right", yformatter=readable_ticks(True), **_base_opts())


def _jets_label(scan, leading: bool) -> str:
    return "leading-jet mSD [GeV]" if leading else "jet mSD [GeV]"


def stack_plot(scan, *, leading: bool = True, luminosity: float | None = None) -> hv.Overlay:
    """The selected data jets of every window stacked by process (QCD at the bottom): one bar
    per application window [m0 - 5, m0 + 5) GeV (:meth:`sophon.anomaly.ScanResult.stack`)."""
    edges, stacked = scan.stack()
    names = list(stacked)
    colors = process_colors(names)
    order = sorted(names, key=lambda name: (name != scan.windows[0].background, names.index(name)))
    bottom = np.zeros(len(edges))
    layers = []
    for name in order:
        top = bottom + stacked[name]
        layers.append(hv.Rectangles(
            [(float(x0), float(y0), float(x1), float(y1))
             for (x0, x1), y0, y1 in zip(edges, bottom, top)],
            kdims=["x0", "y0", "x1", "y1"], label=name).opts(
            color=colors[name], line_color="white", line_width=0.5))
        bottom = top
    unit = f"events ({luminosity:g} fb⁻¹)" if luminosity else "events"
    title = (f"Selected jets by process: {scan.method.upper()} on "
             f"{'latents' if scan.feature_names[0] == 'latent_0' else 'high-level features'}, "
             f"{efficiency_label(scan.efficiency)} of the simulated QCD")
    return hv.Overlay(layers).opts(
        title=title, xlabel=_jets_label(scan, leading), ylabel=f"selected {unit} / window",
        legend_position="right", yformatter=readable_ticks(False), **_base_opts())


def window_plots(scan) -> tuple[hv.Overlay, hv.Overlay]:
    """Per window: (the truth-free excess significance of the selected data over the predicted
    background, the non-QCD share of the selected jets against the share before the cut);
    windows whose working point is not resolved are drawn hollow and grey."""
    centre = np.array([w.window.centre for w in scan.windows])
    resolved = np.array([w.resolved for w in scan.windows])
    z = np.array([w.excess_significance for w in scan.windows])
    share = np.array([w.non_qcd_share for w in scan.windows])
    baseline = np.array([w.baseline_share[0] for w in scan.windows])
    mass = hv.Dimension("m0", label="window centre m0 [GeV]")
    significance = hv.Dimension("z", label="excess (selected − predicted) / σ")
    fraction = hv.Dimension("share", label="non-QCD share of the selected jets")
    excess = (hv.Scatter((centre[resolved], z[resolved]), mass, significance,
                         label="resolved").opts(color=_HEAD_COLOR, size=8)
              * hv.Scatter((centre[~resolved], z[~resolved]), mass, significance,
                           label="not resolved").opts(color="#999999", size=8,
                                                      fill_alpha=0.0, line_width=1.5)
              * hv.HLine(3.0).opts(color="#555555", line_dash="dotted"))
    shares = (hv.ErrorBars((centre, share[:, 0], share[:, 1]), mass, [fraction, "error"])
              .opts(color=_HEAD_COLOR)
              * hv.Scatter((centre, share[:, 0]), mass, fraction, label="selected").opts(
                  color=_HEAD_COLOR, size=8)
              * hv.Curve((centre, baseline), mass, fraction, label="before the cut").opts(
                  color="#888888", line_dash="dashed"))
    return (excess.opts(title="Excess over the predicted QCD (truth-free)",
                        legend_position="top_right", **_base_opts()),
            shares.opts(title="Non-QCD share of the selected jets (truth)",
                        legend_position="top_right", **_base_opts()))


# --- the view -------------------------------------------------------------------------------------
def _job_controls(label: str, css_class: str) -> tuple[pn.widgets.Button, pn.widgets.Button,
                                                        pn.indicators.Progress, pn.Column]:
    """A job's start button ``label``, its Cancel, its progress bar (hidden until it runs) and
    the slot for its message box; ``css_class`` names the start button (``-cancel`` its
    Cancel) for tests and styles."""
    start = pn.widgets.Button(label=label, color="primary", width=120, css_classes=[css_class])
    cancel = pn.widgets.Button(label="Cancel", width=90, disabled=True,
                               css_classes=[f"{css_class}-cancel"])
    progress = pn.indicators.Progress(value=0, max=100, visible=False,
                                      sizing_mode="stretch_width", bar_color="primary")
    return start, cancel, progress, pn.Column(sizing_mode="stretch_width")


class LearningView(ExplorerView):
    """Transfer learning on two jet sets and the sliding-window search, each in the background
    with a progress bar and a Cancel button; a trained head can become the discriminant."""

    signal = param.String(default="process:Higgs", doc="The signal jet set, as text.")
    background = param.String(default="process:QCD", doc="The background jet set, as text.")
    epochs = param.Integer(default=DEFAULT_EPOCHS, bounds=(1, MAX_TRANSFER_EPOCHS))
    flatten = param.Boolean(default=True, doc="Flat (pT, mSD) reweighting of each set.")
    ensemble = param.Integer(default=1, bounds=(1, MAX_TRANSFER_ENSEMBLE),
                             doc="Heads trained on the same jets, their ln(p_s/p_b) averaged.")
    start = param.Number(default=65.0, bounds=(0.0, 1e4), doc="First window centre (GeV).")
    stop = param.Number(default=295.0, bounds=(0.0, 1e4), doc="Last window centre (GeV).")
    step = param.Number(default=10.0, bounds=(1.0, 1e3), doc="GeV between window centres.")
    working_point = param.Selector(default=1e-3, objects=list(WORKING_POINTS),
                                   doc="The share of the simulated QCD each window's cut keeps.")
    features = param.Selector(default="latent", objects=["latent", "highlevel"])
    method = param.Selector(default="salad", objects=["salad", "cwola", "iad"])
    jets = param.Selector(default="leading", objects=["leading", "all"])
    poll_ms = param.Integer(default=400)

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self.usage = SessionUsage()  # one view per session: its learning jobs
        self.job: LearningJob | None = None
        self.transfer_result: TransferResult | None = None
        self.scan_result = None
        self.head: HeadDiscriminant | None = None
        self._head_of: TransferResult | None = None  # the result self.head was made from
        self._trained_on = None  # the analysis the shown result was trained on
        #: what each part's message box says (plain text), "training" and "search"
        self.status = {"training": "", "search": ""}
        self._callback = None
        self._default_sets()
        self._build_transfer_widgets()
        self._build_search_widgets()
        self.explorer.param.watch(self._on_analysis, "analysis")
        document = pn.state.curdoc
        if document is not None and document.session_context is not None:
            # a closed page's job stops after its current step: the worker serves the others
            document.on_session_destroyed(lambda context: self._cancel_quietly())
        self._update_availability()

    def _cancel_quietly(self) -> None:
        if self.job is not None:
            self.job.cancel.set()

    # --- construction ---------------------------------------------------------------------------
    def _default_sets(self) -> None:
        """process:Higgs against process:QCD where the dataset has them, else its first
        non-QCD process against QCD (or its second process)."""
        if not self.explorer.ready or not self.explorer.dataset.has("process"):
            return
        names = list(self.explorer.dataset.process_names)
        others = [name for name in names if name != "QCD"]
        signal = "Higgs" if "Higgs" in names else (others[0] if others else names[0])
        background = "QCD" if "QCD" in names and signal != "QCD" else \
            next((n for n in names if n != signal), signal)
        self.param.update(signal=f"process:{signal}", background=f"process:{background}")

    def _selection(self) -> np.ndarray | None:
        return self.explorer.selection

    def _set_status(self, text: str) -> str:
        return _status_html(*set_status(text, self.explorer.dataset, self._selection()))

    def _build_transfer_widgets(self) -> None:
        self._signal = pn.widgets.TextInput.from_param(
            self.param.signal, name="Signal jets", max_length=MAX_SET_TEXT,
            sizing_mode="stretch_width", css_classes=["learning-signal"])
        self._background = pn.widgets.TextInput.from_param(
            self.param.background, name="Background jets", max_length=MAX_SET_TEXT,
            sizing_mode="stretch_width", css_classes=["learning-background"])
        self._signal_status = pn.pane.HTML(pn.bind(self._set_status, self.param.signal))
        self._background_status = pn.pane.HTML(pn.bind(self._set_status, self.param.background))
        self._epochs = pn.widgets.IntSlider.from_param(self.param.epochs, name="Epochs",
                                                       width=220)
        self._ensemble = pn.widgets.IntInput.from_param(
            self.param.ensemble, name="Heads averaged", width=120,
            css_classes=["learning-ensemble"])
        self._flatten = pn.widgets.Checkbox.from_param(self.param.flatten,
                                                       name="flat (pT, mSD) reweighting")
        self._train, self._train_cancel, self._train_progress, self._train_status = \
            _job_controls("Train", "learning-train")
        self._transfer_text = pn.pane.HTML("", sizing_mode="stretch_width",
                                           css_classes=["learning-transfer-result"])
        self._roc = pn.pane.HoloViews(None, sizing_mode="stretch_width", visible=False)
        self._use = pn.widgets.Button(label="Use as discriminant", color="success", width=180,
                                      disabled=True, css_classes=["learning-use"])
        self._download = pn.widgets.FileDownload(
            callback=self._score_download, filename="transfer_scores.parquet",
            label="Download the score column", width=220, disabled=True,
            css_classes=["learning-download"])
        self._train.on_click(lambda event: in_document_lock(self.train))
        self._train_cancel.on_click(lambda event: in_document_lock(self.cancel))
        self._use.on_click(lambda event: in_document_lock(self.use_as_discriminant))

    def _build_search_widgets(self) -> None:
        self._first = pn.widgets.FloatInput.from_param(self.param.start, name="First m0 (GeV)",
                                                       width=130)
        self._last = pn.widgets.FloatInput.from_param(self.param.stop, name="Last m0 (GeV)",
                                                      width=130)
        self._spacing = pn.widgets.FloatInput.from_param(self.param.step, name="Step (GeV)",
                                                      width=110)
        self._working_point = pn.widgets.Select.from_param(
            self.param.working_point, name="Working point (share of QCD kept)",
            options={efficiency_label(e): e for e in WORKING_POINTS}, width=230)
        self._features = ToggleGroup.from_param(
            self.param.features, name="", options={"latents": "latent", "high-level": "highlevel"})
        self._method = ToggleGroup.from_param(
            self.param.method, name="", options={"SALAD": "salad", "CWoLa": "cwola", "IAD": "iad"})
        self._jets = ToggleGroup.from_param(
            self.param.jets, name="", options={"leading jet": "leading", "all jets": "all"})
        self._windows_status = pn.pane.HTML(pn.bind(self._windows_text, self.param.start,
                                                    self.param.stop, self.param.step))
        self._run, self._run_cancel, self._run_progress, self._run_status = \
            _job_controls("Run search", "learning-run")
        self._search_text = pn.pane.HTML("", sizing_mode="stretch_width",
                                         css_classes=["learning-search-result"])
        self._stack = pn.pane.HoloViews(None, sizing_mode="stretch_width", visible=False)
        self._excess = pn.pane.HoloViews(None, sizing_mode="stretch_width", visible=False)
        self._shares = pn.pane.HoloViews(None, sizing_mode="stretch_width", visible=False)
        self._run.on_click(lambda event: in_document_lock(self.search))
        self._run_cancel.on_click(lambda event: in_document_lock(self.cancel))

    # --- the windows ----------------------------------------------------------------------------
    def windows(self):
        """The search's windows; AnomalyError (a ValueError) naming the problem, also for more
        than :data:`~app.limits.MAX_SCAN_WINDOWS`."""
        from sophon.anomaly import AnomalyError, sliding_windows

        windows = sliding_windows(float(self.start), float(self.stop), float(self.step))
        if len(windows) > MAX_SCAN_WINDOWS:
            raise AnomalyError(f"{self.start:g}-{self.stop:g} GeV in steps of {self.step:g} GeV "
                               f"gives {len(windows)} windows; this server scans at most "
                               f"{MAX_SCAN_WINDOWS} at a time")
        return windows

    def _windows_text(self, *_) -> str:
        try:
            windows = self.windows()
        except ValueError as error:
            return _status_html(False, str(error))
        first, last = windows[0], windows[-1]
        return _status_html(True, (
            f"{len(windows)} windows: m0 = {first.centre:g} … {last.centre:g} GeV; signal region "
            f"m0 ± 15, sidebands m0 ± (15-25), jets selected in m0 ± 5 GeV"))

    # --- what can run ---------------------------------------------------------------------------
    def _update_availability(self) -> None:
        explorer = self.explorer
        busy = self.job is not None and not self.job.finished
        problems = []
        if explorer.ready and not explorer.dataset.has("latent"):
            problems.append("this dataset stores no latents (column 'latent'): transfer "
                            "learning trains on them")
        self._train.disabled = busy or bool(problems) or not explorer.ready
        self._run.disabled = busy or not explorer.ready
        if problems and not busy:
            self._show("training", "; ".join(problems), "warning")

    def _show(self, part: str, text: str, kind: str = "info") -> None:
        """Plain ``text`` (escaped, never read as HTML) in the message box of ``part``
        ("training" or "search"), of ``kind`` (info, warning, danger, success)."""
        self.status[part] = text
        slot = self._train_status if part == "training" else self._run_status
        css = f"learning-{part}-status"
        box = text_message("", kind, css_classes=[css])
        box.object = message_html(text, f"{css}-text")
        slot.objects = [box] if text else []

    # --- transfer learning ----------------------------------------------------------------------
    def transfer_options(self) -> TransferOptions:
        return TransferOptions(epochs=int(min(self.epochs, MAX_TRANSFER_EPOCHS)),
                               max_jets_per_set=MAX_TRANSFER_JETS_PER_SET,
                               flatten=bool(self.flatten),
                               ensemble=int(min(self.ensemble, MAX_TRANSFER_ENSEMBLE)))

    def train(self, wait: bool = False) -> LearningJob | None:
        """Start training a head on the two typed sets (``wait``: until it has finished, and
        show the result); None, with the reason in the page, when nothing was started."""
        explorer = self.explorer
        if not explorer.ready:
            return None
        try:
            sets = []
            for role, text in (("signal", self.signal), ("background", self.background)):
                ok, why = set_status(text, explorer.dataset, self._selection())
                if not ok:
                    raise ValueError(f"the {role} set: {why}")
                sets.append(parse_jet_set(text, self._selection()))
            signal, background = sets
            checkpoint = head_checkpoint(explorer.dataset)
            if checkpoint is None:
                raise ValueError(
                    f"the head is preloaded from the model that scored the dataset, and "
                    f"{explorer.dataset.path.name} names none that this server has (no score "
                    "head in its metadata, and no .pt file in the models folder with the hash "
                    f"of its model id {explorer.dataset.metadata.model_id[:80]!r})")
        except ValueError as error:
            self._show("training", f"Not started: {error}", "danger")
            return None
        analysis, options = explorer.analysis, self.transfer_options()

        def work(job: LearningJob) -> TransferResult:
            import torch

            from sophon.transfer import fit_transfer

            torch.set_num_threads(_worker_threads())
            job.message = ("preparing: the two sets' latents and weights, the node "
                           "discriminants to compare with")
            job.total = options.epochs * options.ensemble

            def progress(epoch: int, epochs: int) -> None:
                # epochs run over all heads of an ensemble, one head after the other
                job.report(epoch, epochs)
                head, head_epoch = divmod(epoch - 1, options.epochs)
                of_head = (f" of head {head + 1} of {options.ensemble}"
                           if options.ensemble > 1 else "")
                job.message = (f"epoch {head_epoch + 1} of {options.epochs}{of_head}"
                               if epoch < epochs else
                               "evaluating on the held-out half; the head's score of every jet")

            return fit_transfer(analysis.dataset, signal, background, model=checkpoint,
                                options=options, progress=progress)

        return self._start("training", work, wait)

    def _show_transfer(self, result: TransferResult) -> None:
        """The held-out figures of a trained head, as text, and its ROC curve."""
        self.transfer_result = result
        rows = []
        for efficiency in REPORTED:
            head, node = result.rejection(efficiency), result.rejection(efficiency, nodes=True)
            rows.append(
                f"<li class='learning-rejection'>at <b>{efficiency:.0%}</b> signal efficiency: "
                f"trained head <b><span class='learning-head-rejection'>"
                f"{format_number(head.rejection)}</span></b> ± {format_number(head.error)} "
                f"({head.effective_jets:,.1f} effective background jets), best node "
                f"discriminant <span class='learning-node-rejection'>"
                f"{format_number(node.rejection)}</span> ± {format_number(node.error)}</li>")
        jets = result.jets
        node = result.node_discriminant
        heads = result.options.ensemble
        ensemble = f"the average of {heads} heads of " if heads > 1 else ""
        self._transfer_text.object = (
            "<div class='learning-transfer-result-text'>"
            f"<b>{html.escape(result.signal)}</b> against <b>{html.escape(result.background)}"
            f"</b>: background rejection 1/ε<sub>B</sub> on the held-out half "
            f"({jets['signal']['held_out']:,} signal and {jets['background']['held_out']:,} "
            "background jets, never trained on; each counts its weight)<ul>"
            + "".join(rows) + "</ul>"
            f"<small>Best node discriminant (chosen on the training half): "
            f"{html.escape(node.name)}. Head: {ensemble}{result.head.hidden} hidden units "
            f"preloaded from <code>{html.escape(result.model.name)}</code>, best epoch "
            f"{result.best_epoch} of {result.options.epochs}; trained on "
            f"{jets['signal']['train']:,} + {jets['background']['train']:,} jets "
            f"(sets of {jets['signal']['in_set']:,} and {jets['background']['in_set']:,}); "
            f"{result.seconds:.1f} s.</small></div>")
        self._roc.object = roc_plot(result)
        self._roc.visible = True
        self._use.disabled = False
        self._download.disabled = False
        self._download.filename = f"{self.column_name()}.parquet"

    def column_name(self) -> str:
        """``transfer_<signal>_vs_<background>``: the head's score column."""
        def part(text: str, fallback: str) -> str:
            return file_name_part(text.partition(":")[2] or text, fallback)[:22].rstrip("_")

        result = self.transfer_result
        return f"transfer_{part(result.signal, 's')}_vs_{part(result.background, 'b')}"

    def score_file(self) -> tuple[str, bytes]:
        """(file name, parquet bytes): the head's score column, ``jet`` (the dataset row) and
        ``transfer_<name>`` (ln(p_s/p_b), float32)."""
        import polars as pl

        result = self.transfer_result
        if result is None:
            raise ValueError("no trained head yet")
        column = self.column_name()
        buffer = io.BytesIO()
        pl.DataFrame({"jet": np.arange(len(result.values), dtype=np.int64),
                      column: result.values}).write_parquet(buffer)
        return f"{column}.parquet", buffer.getvalue()

    def _score_download(self) -> io.BytesIO:
        name, data = self.score_file()
        self._download.filename = name
        return io.BytesIO(data)

    def use_as_discriminant(self) -> HeadDiscriminant | None:
        """Make the trained head's score the session's discriminant (see the module's
        docstring); None, with the reason, when there is no head for the dataset shown."""
        result, explorer = self.transfer_result, self.explorer
        if result is None:
            return None
        if self._trained_on is not explorer.analysis:
            self._show("training", "Not applied: the head was trained on another dataset "
                       "than the one this session shows now; train it again here.", "warning")
            return None
        if self._head_of is not result:
            self.head, self._head_of = head_discriminant(result, explorer.dataset), result
        explorer.discriminant = self.head
        self._show("training", f"The spectrum, significance, events and latent views now "
                   f"cut on the trained head's score ({self.head.name}). Choose a preset or edit "
                   "the composer to go back; this button brings the head back.", "success")
        return self.head

    def _on_analysis(self, event) -> None:
        """Another dataset: a head trained on the previous one is no discriminant here."""
        head = self.head
        if head is not None and self.explorer.discriminant is head and \
                (event.new is None or event.new.dataset is not head.dataset):
            self.explorer.discriminant = head.stand_in()
            self._show("training", "The session shows another dataset now: the trained "
                       "head's discriminant was replaced by its stand-in, the best node "
                       "discriminant.", "warning")
        self._use.disabled = self.transfer_result is None or self._trained_on is not event.new
        self._update_availability()

    # --- the sliding-window search --------------------------------------------------------------
    def search(self, wait: bool = False) -> LearningJob | None:
        """Start the sliding-window search as set (``wait``: until it has finished, and show
        the result); None, with the reason in the page, when nothing was started."""
        explorer = self.explorer
        if not explorer.ready:
            return None
        try:
            windows = self.windows()
        except ValueError as error:
            self._show("search", f"Not started: {error}", "danger")
            return None
        analysis = explorer.analysis
        features, method, efficiency = self.features, self.method, float(self.working_point)
        leading = self.jets == "leading"

        def work(job: LearningJob):
            from threadpoolctl import threadpool_limits

            from sophon.anomaly import default_classifier, sample_from_dataset, \
                sliding_window_scan

            job.message = "reading the jets' features"
            job.total = len(windows)
            sample = shared(analysis, f"anomaly-sample-{features}-{leading}",
                            lambda: sample_from_dataset(analysis.dataset, features,
                                                        leading_only=leading))

            def progress(done: int, total: int) -> None:
                job.report(done, total)
                job.message = (f"window {done} of {total} done (m0 = "
                               f"{windows[done - 1].centre:g} GeV)")

            job.message = f"training the classifiers of window 1 of {len(windows)}"
            with threadpool_limits(limits=_worker_threads()):
                return sliding_window_scan(
                    sample, method=method, windows=windows, efficiency=efficiency,
                    max_jets_per_window=MAX_SCAN_JETS_PER_WINDOW, progress=progress,
                    classifier=lambda seed: default_classifier(
                        seed, max_iter=SCAN_BOOSTING_ITERATIONS))

        return self._start("search", work, wait, leading=leading)

    def _show_search(self, scan, leading: bool) -> None:
        self.scan_result = scan

        def listed(centres) -> str:
            return ", ".join(f"{c:g}" for c in centres) + " GeV" if centres else "none"

        features = "latents" if scan.feature_names[0] == "latent_0" else "high-level features"
        self._search_text.object = (
            "<div class='learning-search-result-text'>"
            f"<b>{scan.method.upper()}</b> on the {features} of "
            f"{'each event’s leading jet' if leading else 'all jets'}, {len(scan.windows)} "
            f"windows, each cut keeping {efficiency_label(scan.efficiency)} of the simulated QCD "
            f"in m0 ± 5 GeV ({scan.seconds:.1f} s).<br>"
            f"Non-QCD share raised beyond 3σ by the cut (the simulation's truth): "
            f"<b class='learning-share-windows'>{listed(scan.share_enhanced_windows)}</b>.<br>"
            f"Selected data above the predicted QCD beyond 3σ (truth-free): "
            f"<b class='learning-excess-windows'>{listed(scan.enhanced_windows)}</b>.<br>"
            f"<small>Not resolved (fewer than 10 effective simulated QCD jets pass the cut, so the "
            f"prediction is biased low and never counts as enhanced): "
            f"{listed(scan.unresolved_windows)}.</small></div>")
        luminosity = self.explorer.dataset_luminosity
        self._stack.object = stack_plot(scan, leading=leading, luminosity=luminosity)
        excess, shares = window_plots(scan)
        self._excess.object, self._shares.object = excess, shares
        for pane in (self._stack, self._excess, self._shares):
            pane.visible = True

    # --- the job --------------------------------------------------------------------------------
    def _parts(self, kind: str):
        """(progress bar, cancel button) of the part that runs ``kind``."""
        if kind == "training":
            return self._train_progress, self._train_cancel
        return self._run_progress, self._run_cancel

    def _start(self, kind: str, work, wait: bool, **details) -> LearningJob | None:
        _, cancel = self._parts(kind)
        try:
            job = start_job(kind, work, self.usage, analysis=self.explorer.analysis)
        except LimitReached as error:
            self._show(kind, f"⚠ {error}", "warning")
            return None
        job.details.update(details)
        self.job = job
        cancel.disabled = False
        self._update_availability()
        if not wait and (pn.state.curdoc is not None or pn.state._is_pyodide):
            self._callback = pn.state.add_periodic_callback(self.poll, period=self.poll_ms)
        if wait:
            job.wait()
        self.poll()
        return job

    def cancel(self) -> None:
        """Stop the running job after its current epoch or window."""
        if self.job is not None and not self.job.finished:
            self.job.cancel.set()
            self.job.message = "cancelling after the current step"
            self.poll()

    def poll(self) -> None:
        """Show the job's progress; when it is done, its result."""
        job = self.job
        if job is None:
            return
        bar, cancel = self._parts(job.kind)
        part = job.kind
        bar.visible = not job.finished
        bar.value = job.progress
        if not job.finished:
            self._show(part, f"{job.state}: {job.message}")
            return
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        cancel.disabled = True
        self._update_availability()
        if job.state == "done":
            self._show(part, f"✓ done in {job.seconds:.1f} s", "success")
            if job.kind == "training":
                self._trained_on = job.analysis
                self._show_transfer(job.result)
                self._use.disabled = job.analysis is not self.explorer.analysis
            else:
                self._show_search(job.result, job.details.get("leading", True))
        elif job.state == "cancelled":
            self._show(part, f"✗ {job.message}; nothing was kept", "warning")
        else:
            self._show(part, f"✗ The {job.kind} failed: {job.message}", "danger")

    # --- layout ---------------------------------------------------------------------------------
    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        transfer = pn.Column(
            pn.pane.Markdown(
                "### Transfer learning\n"
                "Train a small head, Linear(128, H) → ReLU → Linear(H, 2), on the latents of two "
                "jet sets, its first layer preloaded from the model head that scored the dataset "
                "(the paper's X→bs study, sec. III), and compare it on a held-out half with the "
                "best discriminant built from the 188 output nodes. Sets: `process:NAME`, "
                "`classes:QUERY` or `selection` (the latent-space selection). At most "
                f"{MAX_TRANSFER_JETS_PER_SET:,} jets a set and {MAX_TRANSFER_EPOCHS} epochs.",
                sizing_mode="stretch_width"),
            pn.Row(pn.Column(self._signal, self._signal_status, sizing_mode="stretch_width"),
                   pn.Column(self._background, self._background_status,
                             sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            pn.Row(self._epochs, self._ensemble, self._flatten),
            pn.Row(self._train, self._train_cancel), self._train_progress, self._train_status,
            self._transfer_text, self._roc, pn.Row(self._use, self._download),
            sizing_mode="stretch_width", css_classes=["learning-transfer"])
        search = pn.Column(
            pn.pane.Markdown(
                "### Sliding-window search\n"
                "A bump hunt without a signal model (sec. IV): for each window m0 a classifier "
                "learns the signal region (m0 ± 15 GeV) from the data and a background "
                "simulation (SALAD: reweighted in the sidebands m0 ± (15–25) GeV; CWoLa: signal "
                "region against sidebands; IAD: the ideal), and keeps the jets in m0 ± 5 GeV above "
                "the cut that passes the chosen share of the simulated QCD. Data and simulation "
                "are two halves of the simulated sample. At most "
                f"{MAX_SCAN_WINDOWS} windows, {MAX_SCAN_JETS_PER_WINDOW:,} training jets per "
                "classifier.", sizing_mode="stretch_width"),
            pn.Row(self._first, self._last, self._spacing, self._working_point),
            self._windows_status,
            pn.Row(pn.Column(pn.pane.HTML("<small>features</small>", margin=(0, 5)),
                             self._features),
                   pn.Column(pn.pane.HTML("<small>method</small>", margin=(0, 5)), self._method),
                   pn.Column(pn.pane.HTML("<small>jets</small>", margin=(0, 5)), self._jets)),
            pn.Row(self._run, self._run_cancel), self._run_progress, self._run_status,
            self._search_text, self._stack, plot_row(self._excess, self._shares),
            sizing_mode="stretch_width", css_classes=["learning-search"])
        return pn.Column(transfer, pn.layout.Divider(), search, sizing_mode="stretch_width",
                         css_classes=["learning"])
