"""The app's long jobs (rescoring, the Learning tab's trainings and searches).

One process-wide worker thread runs them one at a time, so that the sessions keep the other
core and a second job waits its turn instead of halving the first one's speed. Each job is a
:class:`WorkerJob` that its sessions poll for progress; its place in a
:class:`~app.limits.Budget` (a ticket) is closed when it ends, or at once when it cannot be
queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from app.limits import Budget, Ticket

__all__ = ["WorkerJob", "run_in_worker", "queue"]

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sophon-jobs")
Job = TypeVar("Job", bound="WorkerJob")


def run_in_worker(task: Callable[[], object]) -> Future:
    """Run ``task`` in the process-wide worker thread that runs the app's long jobs one at a
    time."""
    return _EXECUTOR.submit(task)


@dataclass(eq=False, kw_only=True)
class WorkerJob:
    """What every long job reports to the page: ``done`` of ``total`` steps, its ``state``
    (queued, running, done, failed, cancelled) and ``message``, its ``result``; ``cancel`` is set
    by the page's Cancel. Subclasses define :meth:`run`, which must end by :meth:`close_ticket`."""

    total: int = 0
    done: int = 0
    state: str = "queued"
    message: str = ""
    result: object = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ticket: Ticket | None = None  # its place in the budget (app.limits)
    budget: Budget | None = None
    written: int = 0  # bytes written under the output folder

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def progress(self) -> int:
        """Percent done (0 while the total is unknown)."""
        return int(100 * self.done / self.total) if self.total else 0

    def run(self) -> None:
        raise NotImplementedError

    def close_ticket(self) -> None:
        """Free the job's place in its budget, charging the bytes it wrote."""
        if self.budget is not None and self.ticket is not None:
            self.budget.close(self.ticket, self.written)


def queue(job: Job) -> Job:
    """Queue ``job.run`` in the worker thread; when it cannot be queued its ticket is closed
    before the error goes on."""
    try:
        run_in_worker(job.run)
    except BaseException:
        job.close_ticket()
        raise
    return job
