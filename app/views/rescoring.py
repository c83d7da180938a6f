"""Rescoring: run a model file over the jets that carry constituents, in the background.

Model files are listed from the configured models folder only (:func:`app.state.models_dir`).
A job runs in a process-wide worker thread (one at a time, so concurrent requests queue instead of
oversubscribing the CPU; torch and onnxruntime release the GIL, so other sessions stay
responsive). The work is :func:`sophon.scoring.rescore_dataset`: it reads the constituents a chunk
at a time, rescoring only jets with at least one particle (the others keep their scores), and
writes a new dataset to the configured output folder; the job loads it through the shared cache,
and the session's views switch to it. The page polls the
job for its progress bar. The same dataset rescored with the same model file is reused.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import panel as pn
import param

from sophon.analysis import DatasetAnalysis
from sophon.store import LATENT_DIM, SCORE_COLUMNS

from app.limits import Budget, LimitReached, SessionUsage, Ticket, session_usage
from app.state import (DatasetProblem, data_path, list_models, load_analysis, loaded_paths,
                       models_dir, output_dir, resolve_model)
from app.views.base import ExplorerView, problem_message

__all__ = ["RescoringView", "RescoreJob", "submit", "budget", "estimate_bytes", "gpu_present",
           "has_constituents"]

log = logging.getLogger("sophon.app")
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sophon-rescore")
_JOBS: dict[Path, RescoreJob] = {}
_JOBS_LOCK = threading.Lock()
_BUDGETS: dict[Path, Budget] = {}
CHUNK_JETS = 4096


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


@dataclass
class RescoreJob:
    """One rescoring of a dataset with a model file; shared by the sessions that ask for it."""

    analysis: DatasetAnalysis
    model: Path
    device: str
    output: Path
    total: int = 0
    done: int = 0
    rescored: int = 0
    state: str = "queued"  # queued, running, done, failed, cancelled
    message: str = ""
    result: DatasetAnalysis | None = None
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)
    ticket: Ticket | None = None  # its place in the budget (app.limits), closed when it ends
    budget: Budget | None = None
    written: int = 0  # bytes written under the output folder

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def progress(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    def run(self) -> None:
        try:
            self.state = "running"
            self._run()
        except Exception as error:  # the page shows it; the server keeps serving
            log.exception("rescoring %s with %s failed", self.analysis.dataset.path, self.model)
            self.state, self.message = "failed", f"{type(error).__name__}: {error}"
        finally:
            if self.budget is not None and self.ticket is not None:
                self.budget.close(self.ticket, self.written)

    def _run(self) -> None:
        from sophon.scoring import load_scorer, rescore_dataset

        dataset = self.analysis.dataset
        self.total = dataset.n_jets
        if not has_constituents(dataset):
            raise ValueError(f"{dataset.path}: no constituent columns to rescore")
        if self.output.exists():
            self.message = "found an earlier rescoring with this model; loading it"
        else:
            self.message = f"loading {self.model.name}"
            # half the cores at most: the server's sessions keep the rest
            scorer = load_scorer(self.model, device=self.device,
                                 threads=max(1, (os.cpu_count() or 2) // 2))
            self.message = f"scoring with {scorer.description}"

            def progress(done: int, rescored: int) -> None:
                self.done, self.rescored = done, rescored
                if done == self.total:
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
    from sophon.manifest import sha256_file

    stem = analysis.dataset.path.stem or "dataset"
    return output_dir() / f"{stem}-rescored-{model.stem}-{sha256_file(model)[:10]}.parquet"


def submit(analysis: DatasetAnalysis, model: Path, device: str = "auto",
           session: SessionUsage | None = None, account: Budget | None = None) -> RescoreJob:
    """Start (or join) the rescoring of ``analysis``'s dataset with ``model`` for ``session``.

    Raises :class:`~app.limits.LimitReached` (its text is the page's message) when the session or
    the server has as many jobs as it may, or the bytes would not fit; nothing is started then.
    """
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
    try:
        _EXECUTOR.submit(job.run)
    except BaseException:
        account.close(ticket)
        raise
    return job


class RescoringView(ExplorerView):
    """Pick a model file and a device; rescore with a progress bar; the views follow."""

    poll_ms = param.Integer(default=400)

    def __init__(self, explorer=None, **params):
        super().__init__(explorer, **params)
        self.job: RescoreJob | None = None
        self._callback = None
        self.usage = session_usage(pn.state.curdoc)  # this browser session's jobs and bytes
        devices = ["auto", "cpu"] + (["cuda"] if gpu_present() else [])
        self._model = pn.widgets.Select(label="Model file", options=list_models(), width=320)
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
        self._refresh.on_click(lambda e: self._list_models())
        self._start.on_click(lambda e: self.start())
        self._stop.on_click(lambda e: self.cancel())
        self._update_availability()

    def _list_models(self) -> None:
        self._model.options = list_models()
        self._update_availability()

    def _update_availability(self) -> None:
        explorer = self.explorer
        reasons = []
        if explorer.ready and not has_constituents(explorer.dataset):
            reasons.append("this dataset stores no constituents (`part_*` columns), so there is "
                           "nothing to rescore")
        if not self._model.options:
            reasons.append(f"no model files (.onnx, .pt) in the models folder `{models_dir()}` "
                           "(start the app with `--args --models DIR` or set `SOPHON_MODELS`)")
        self._start.disabled = bool(reasons) or not explorer.ready
        self._status.object = ("<br>".join(f"⚠ {html.escape(r)}" for r in reasons)
                               if reasons else "")

    def start(self) -> RescoreJob | None:
        explorer = self.explorer
        try:
            model = resolve_model(self._model.value or "")
        except ValueError as error:
            self._status.object = f"⚠ {html.escape(str(error))}"
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
        self._status.object = (f"{html.escape(job.state)}: {job.done:,} / {job.total:,} jets"
                               f" — {html.escape(job.message)}")
        if not job.finished:
            return
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self._stop.disabled = True
        self._start.disabled = False
        if job.state == "done" and job.result is not None:
            self.explorer.analysis = job.result
            self._status.object = (f"✓ {html.escape(job.message)}; the views now show "
                                   f"<code>{html.escape(job.output.name)}</code>. The latent map "
                                   "keeps the original UMAP coordinates.")
        elif job.state == "failed":
            self._status.object = f"✗ rescoring failed: {html.escape(job.message)}"

    def __panel__(self):
        if not self.explorer.ready:
            return problem_message(self.explorer)
        return pn.Column(
            pn.pane.Markdown("Rescore the jets that carry constituents with a model file from "
                             f"the models folder (`{models_dir()}`). The job runs in the "
                             "background; other users are not blocked. "
                             + budget().limits.describe(), sizing_mode="stretch_width"),
            pn.Row(self._model, self._refresh, pn.Column(pn.pane.HTML("<small>device</small>",
                                                                      margin=(0, 5)),
                                                         self._device)),
            pn.Row(self._start, self._stop), self._progress, self._status, self._limit,
            sizing_mode="stretch_width", css_classes=["rescoring"])
