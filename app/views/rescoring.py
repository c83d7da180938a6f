"""Rescoring: run a model file over the jets that carry constituents, in the background.

Model files are listed from the configured models folder only (:func:`app.state.models_dir`),
less the one that made the dataset's stored scores (its file hash is in the dataset's model id:
rescoring with it would reproduce them; the page says so). What is rescored is always the
ORIGINAL dataset (the one a rescored file says it was ``rescored_from``), never an earlier
output, so output names never grow and the same model gives the same file.
A job runs in a process-wide worker thread (one at a time, so concurrent requests queue instead of
oversubscribing the CPU; torch and onnxruntime release the GIL, so other sessions stay
responsive). The work is :func:`sophon.scoring.rescore_dataset`: it reads the constituents a chunk
at a time, rescoring only jets with at least one particle (the others keep their scores), and
writes a new dataset to the configured output folder; the job loads it through the shared cache,
and the session's views switch to it. The page polls the
job for its progress bar, which counts the jets actually scored (those with constituents, see
:func:`sophon.scoring.constituent_counts`). The same dataset rescored with the same model file is
reused.

A session keeps ONE rescored dataset: when it switches to another, the previous one is released
(forgotten by the shared cache and deleted from the output folder) unless another session still
shows it, and so is what a closed session showed; so neither the server's memory nor the output
folder grows with the number of clicks.

What a session may start and write is bounded by :mod:`app.limits` (jobs per session and in
all, bytes per session, the output folder's size and age); a limit reached shows its message in
the page and starts nothing.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import panel as pn
import param

from sophon.analysis import DatasetAnalysis
from sophon.store import LATENT_DIM, SCORE_COLUMNS

from app.jobs import WorkerJob, queue
from app.limits import (OUTPUT_PATTERNS, Budget, LimitReached, SessionUsage,
                        session_usage)
from app.state import (DatasetProblem, data_path, list_models, load_analysis, loaded_paths,
                       models_dir, output_dir, release_analysis, resolve_model)
from app.views.base import ExplorerView, in_document_lock, problem_message
from app.views.jet_detail import stored_constituents

__all__ = ["RescoringView", "RescoreJob", "submit", "budget", "estimate_bytes",
           "gpu_present", "has_constituents", "original_analysis", "stored_model_hash",
           "offered_models", "jets_to_rescore", "show", "release"]

log = logging.getLogger("sophon.app")
_JOBS: dict[Path, RescoreJob] = {}
_JOBS_LOCK = threading.Lock()
_BUDGETS: dict[Path, Budget] = {}
CHUNK_JETS = 4096
#: The rescored dataset each session shows (its one kept output), by the session's usage record.
_SHOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def budget() -> Budget:
    """The process-wide :class:`~app.limits.Budget` of the configured output folder."""
    folder = output_dir().resolve()
    with _JOBS_LOCK:
        if folder not in _BUDGETS:
            _BUDGETS[folder] = Budget(folder, in_use=lambda: {data_path(), *loaded_paths()})
        return _BUDGETS[folder]


def estimate_bytes(dataset) -> int:
    """A generous size of ``dataset`` rescored: its files (the columns kept, compressed) plus the
    188 scores and 128 latents of every jet as uncompressed float32."""
    stored = sum(Path(f).stat().st_size for f in dataset.files)
    return stored + dataset.n_jets * (len(SCORE_COLUMNS) + LATENT_DIM) * 4


def gpu_present() -> bool:
    """A cheap guess (no torch import) whether a CUDA device exists on this machine."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def has_constituents(dataset) -> bool:
    from sophon.features import REQUIRED_COLUMNS

    return all(dataset.has(c) for c in REQUIRED_COLUMNS)


def jets_to_rescore(analysis: DatasetAnalysis) -> int:
    """How many jets of ``analysis``'s dataset carry constituents: the jets a rescoring scores
    (the others keep their scores). Counted once per dataset and process."""
    counts = stored_constituents(analysis)
    return 0 if counts is None else int(np.count_nonzero(counts))


def original_analysis(analysis: DatasetAnalysis) -> DatasetAnalysis:
    """The dataset a rescored dataset was made from (its metadata's ``rescored_from``, followed
    back to one that was not rescored), loaded through the shared cache; ``analysis`` itself
    when it is an original, or when its original cannot be opened any more."""
    seen = set()
    while True:
        source = analysis.dataset.metadata.extra.get("rescored_from")
        if not source or source in seen:
            return analysis
        seen.add(source)
        loaded = load_analysis(source)
        if isinstance(loaded, DatasetProblem):
            log.warning("%s was rescored from %s, which cannot be opened: rescoring it as it is",
                        analysis.dataset.path, source)
            return analysis
        analysis = loaded


def stored_model_hash(dataset) -> str | None:
    """The leading hex digits of the sha256 of the model file that made ``dataset``'s stored
    scores (its model id ``NAME@sha256:HEX``), or None when the id names no file hash."""
    model_id = dataset.metadata.model_id or ""
    if "@sha256:" not in model_id:
        return None
    digits = model_id.rsplit("@sha256:", 1)[1].strip().lower()
    return digits if len(digits) >= 8 and all(c in "0123456789abcdef" for c in digits) else None


def offered_models(dataset, names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(offered, left out): the models folder's files, less those whose hash is the one of the
    model that made ``dataset``'s stored scores (rescoring with it reproduces them)."""
    from sophon.manifest import sha256_file

    names = list_models() if names is None else names
    stored = stored_model_hash(dataset)
    if stored is None:
        return names, []
    offered, same = [], []
    for name in names:
        try:
            digest = sha256_file(resolve_model(name))
        except (OSError, ValueError):
            continue
        (same if digest.startswith(stored) else offered).append(name)
    return offered, same


@dataclass(eq=False, kw_only=True)
class RescoreJob(WorkerJob):
    """One rescoring of a dataset with a model file; shared by the sessions that ask for it."""

    analysis: DatasetAnalysis
    model: Path
    device: str
    output: Path
    rescored: int = 0
    result: DatasetAnalysis | None = None
    started: float = field(default_factory=time.time)

    def run(self) -> None:
        try:
            self.state = "running"
            self._run()
        except Exception as error:  # the page shows it; the server keeps serving
            log.exception("rescoring %s with %s failed", self.analysis.dataset.path, self.model)
            self.state, self.message = "failed", f"{type(error).__name__}: {error}"
        finally:
            self.close_ticket()

    def _run(self) -> None:
        from sophon.scoring import load_scorer, rescore_dataset

        dataset = self.analysis.dataset
        if not has_constituents(dataset):
            raise ValueError(f"{dataset.path}: no constituent columns to rescore")
        self.message = "counting the jets with constituents"
        self.total = jets_to_rescore(self.analysis)  # what is scored: jets with constituents
        if self.output.exists():
            self.message = "found an earlier rescoring with this model; loading it"
        else:
            self.message = f"loading {self.model.name}"
            # half the cores at most: the server's sessions keep the rest
            scorer = load_scorer(self.model, device=self.device,
                                 threads=max(1, (os.cpu_count() or 2) // 2))
            self.message = f"scoring with {scorer.description}"

            def progress(read: int, rescored: int) -> None:
                self.done = self.rescored = rescored
                if read == dataset.n_jets:
                    self.message = "writing the rescored dataset"

            rescored = rescore_dataset(dataset, self.output, scorer, chunk_jets=CHUNK_JETS,
                                       progress=progress, cancelled=self.cancel.is_set)
            if rescored is None:
                self.state, self.message = "cancelled", "cancelled"
                return
            self.rescored = rescored
            self.written = self.output.stat().st_size
        self.done = self.total
        self.message = "loading the rescored dataset"
        loaded = load_analysis(self.output)
        if isinstance(loaded, DatasetProblem):
            raise ValueError(loaded.message)
        self.result = loaded
        self.state = "done"
        self.message = (f"rescored {self.rescored:,} jets in {time.time() - self.started:.1f} s"
                        if self.rescored else "loaded the earlier rescoring")


def output_path(analysis: DatasetAnalysis, model: Path) -> Path:
    """Where ``analysis``'s ORIGINAL dataset (:func:`original_analysis`) rescored with ``model``
    goes: one name per original and model file, however often it is asked for."""
    from sophon.manifest import sha256_file

    stem = original_analysis(analysis).dataset.path.stem or "dataset"
    return output_dir() / f"{stem}-rescored-{model.stem}-{sha256_file(model)[:10]}.parquet"


def submit(analysis: DatasetAnalysis, model: Path, device: str = "auto",
           session: SessionUsage | None = None, account: Budget | None = None) -> RescoreJob:
    """Start (or join) the rescoring of ``analysis``'s dataset with ``model`` for ``session``.

    What is rescored is the original dataset (:func:`original_analysis`), also when ``analysis``
    is itself a rescoring. Raises :class:`~app.limits.LimitReached` (its text is the page's
    message) when the session or the server has as many jobs as it may, or the bytes would not
    fit; nothing is started then.
    """
    analysis = original_analysis(analysis)
    output = output_path(analysis, model)
    session = SessionUsage() if session is None else session
    account = budget() if account is None else account
    with _JOBS_LOCK:
        job = _JOBS.get(output)
        if job is not None and job.state in ("queued", "running") and job.ticket is not None:
            account.join(session, job.ticket)
            return job
        # an earlier rescoring on disk is loaded, not written again
        estimate = 0 if output.exists() else estimate_bytes(analysis.dataset)
        ticket = account.admit(session, output, estimate)
        job = RescoreJob(analysis=analysis, model=model, device=device, output=output,
                         ticket=ticket, budget=account)
        _JOBS[output] = job
    return queue(job)


def show(session: SessionUsage, output: Path | None) -> None:
    """``session`` now shows the rescored dataset ``output`` (None: none, e.g. the session has
    ended); the one it showed before is released (:func:`release`). So a session keeps one."""
    with _JOBS_LOCK:
        previous = _SHOWN.get(session)
        if output is None:
            _SHOWN.pop(session, None)
        else:
            _SHOWN[session] = Path(output)
    if previous is not None and previous != output:
        release(previous)


def release(output: Path) -> bool:
    """Forget the rescored dataset ``output`` (the shared cache and its derived objects) and
    delete its file, unless some session shows it or a job is writing it; whether it was
    released. Only the app's own files in the output folder are deleted, never the served
    dataset."""
    output = Path(output)
    with _JOBS_LOCK:
        if output in list(_SHOWN.values()):
            return False
        job = _JOBS.get(output)
        if job is not None and not job.finished:
            return False
        _JOBS.pop(output, None)  # a finished job holds its result: let it go
    release_analysis(output)
    ours = (output.parent.resolve() == output_dir().resolve()
            and any(output.match(pattern) for pattern in OUTPUT_PATTERNS)
            and output.resolve() != data_path().resolve())
    if ours:
        try:
            output.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("could not delete the replaced rescoring %s", output, exc_info=True)
    log.info("released the rescored dataset %s", output)
    return True


class RescoringView(ExplorerView):
    """Pick a model file and a device; rescore with a progress bar; the views follow."""

    poll_ms = param.Integer(default=400)

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self.job: RescoreJob | None = None
        self._callback = None
        self.usage = session_usage(pn.state.curdoc)  # this browser session's jobs and bytes
        devices = ["auto", "cpu"] + (["cuda"] if gpu_present() else [])
        self._model = pn.widgets.Select(label="Model file", options=[], width=320)
        self._same = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["rescore-same"])
        self._refresh = pn.widgets.Button(label="↻", width=40,
                                          description="list the models again")
        self._device = pn.widgets.RadioButtonGroup(label="Device", options=devices, value="auto",
                                                   color="primary", variant="outline")
        self._start = pn.widgets.Button(label="Rescore", color="primary", width=120)
        self._stop = pn.widgets.Button(label="Cancel", width=90, disabled=True)
        self._progress = pn.indicators.Progress(value=0, max=100, sizing_mode="stretch_width",
                                                visible=False, bar_color="primary")
        self._status = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["rescore-status"])
        # a limit reached (app.limits): plain text, never HTML
        self._limit = pn.pane.Str("", visible=False, sizing_mode="stretch_width",
                                  css_classes=["rescore-limit"],
                                  styles={"white-space": "pre-wrap", "color": "#8a4b00",
                                          "background": "#fff4e5", "padding": "6px 10px",
                                          "border-radius": "4px"})
        self._refresh.on_click(lambda e: in_document_lock(self._list_models))
        self._start.on_click(lambda e: in_document_lock(self.start))
        self._stop.on_click(lambda e: in_document_lock(self.cancel))
        document = pn.state.curdoc
        if document is not None and document.session_context is not None:
            # a closed page's rescored dataset is released (unless another page shows it)
            usage = self.usage
            document.on_session_destroyed(lambda context: show(usage, None))
        self._list_models()

    @property
    def original(self) -> DatasetAnalysis | None:
        """What a rescoring here rescores: the original of the dataset the session shows."""
        explorer = self.explorer
        return original_analysis(explorer.analysis) if explorer.ready else None

    def _show_status(self, text: str) -> None:
        """The status line (HTML), in a div the page (and a test) can read."""
        self._status.object = f"<div class='rescore-status-text'>{text}</div>" if text else ""

    def _list_models(self) -> None:
        """The models folder's files, less the one that made the original's stored scores."""
        original = self.original
        if original is None:
            offered, same = list_models(), []
        else:
            offered, same = offered_models(original.dataset)
        self._model.options = offered
        self._same.object = "" if not same else (
            "<small class='rescore-same-text'>Not offered: "
            + ", ".join(f"<code>{html.escape(name)}</code>" for name in same)
            + f" made the stored scores of <code>{html.escape(original.dataset.path.name)}"
            "</code>; rescoring with it would reproduce them.</small>")
        self._update_availability()

    def _update_availability(self) -> None:
        explorer = self.explorer
        reasons = []
        if explorer.ready and not has_constituents(explorer.dataset):
            reasons.append("this dataset stores no constituents (`part_*` columns), so there is "
                           "nothing to rescore")
        if not self._model.options:
            other = " other than the one that made the stored scores" if self._same.object \
                else ""
            reasons.append(f"no model files (.onnx, .pt){other} in the models folder "
                           f"`{models_dir()}` (start the app with `--args --models DIR` or set "
                           "`SOPHON_MODELS`)")
        self._start.disabled = bool(reasons) or not explorer.ready
        self._show_status("<br>".join(f"⚠ {html.escape(r)}" for r in reasons))

    def start(self) -> RescoreJob | None:
        explorer = self.explorer
        try:
            model = resolve_model(self._model.value or "")
        except ValueError as error:
            self._show_status(f"⚠ {html.escape(str(error))}")
            return None
        try:
            job = submit(explorer.analysis, model, self._device.value, session=self.usage)
        except LimitReached as error:
            self._limit.object = f"⚠ {error}"
            self._limit.visible = True
            return None
        self._limit.object, self._limit.visible = "", False
        self.job = job
        self._start.disabled = True
        self._stop.disabled = False
        self._progress.visible = True
        if pn.state.curdoc is not None or pn.state._is_pyodide:
            self._callback = pn.state.add_periodic_callback(self.poll, period=self.poll_ms)
        self.poll()
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel.set()

    def poll(self) -> None:
        """Show the job's progress; when it is done, switch the session to the new dataset."""
        job = self.job
        if job is None:
            return
        self._progress.value = job.progress
        n_jets = job.analysis.dataset.n_jets
        counted = "" if not job.total else (  # 0: not counted yet
            f"<span class='rescore-count'>{job.done:,} / {job.total:,}</span> jets with "
            f"constituents scored (the other {n_jets - job.total:,} of the {n_jets:,} jets keep "
            "their scores) — ")
        self._show_status(f"{html.escape(job.state)}: {counted}{html.escape(job.message)}")
        if not job.finished:
            return
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self._stop.disabled = True
        self._start.disabled = False
        if job.state == "done" and job.result is not None:
            if self.explorer.analysis is not job.result:
                self.explorer.analysis = job.result
            show(self.usage, job.output)  # the session's previous rescoring is released
            self._show_status(f"✓ {html.escape(job.message)}; the views now show "
                              f"<code>{html.escape(job.output.name)}</code>. The latent map "
                              "keeps the original UMAP coordinates.")
        elif job.state == "failed":
            self._show_status(f"✗ rescoring failed: {html.escape(job.message)}")

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(
            pn.pane.Markdown("Rescore the jets that carry constituents with a model file from "
                             f"the models folder (`{models_dir()}`). The job runs in the "
                             "background; other users are not blocked. "
                             + budget().limits.describe() + " Each session keeps one "
                             "rescored dataset: rescoring again replaces it. The original "
                             "dataset is always the one rescored.", sizing_mode="stretch_width"),
            pn.Row(self._model, self._refresh, pn.Column(pn.pane.HTML("<small>device</small>",
                                                                      margin=(0, 5)),
                                                         self._device)),
            self._same, pn.Row(self._start, self._stop), self._progress, self._status,
            self._limit,
            sizing_mode="stretch_width", css_classes=["rescoring"])
