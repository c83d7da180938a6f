"""What one browser session may cost the shared server: rescoring jobs and the files they write.

A served app is shared: in a workshop room every participant's session runs on the organiser's
machine. Rescoring is the one thing a session can do that costs much CPU time and writes files,
so it is bounded here (the numbers are the module constants below; the page says them):

- :data:`MAX_JOBS_PER_SESSION` rescoring jobs at a time per session (one that joins another
  session's identical job counts too), so one session cannot fill the queue;
- :data:`MAX_JOBS_TOTAL` jobs at a time on the server (queued or running; they run one after the
  other), so the queue, and the wait of the last one in it, stays short;
- :data:`MAX_SESSION_BYTES` bytes written under the output folder per session, checked against an
  estimate before a job starts and charged with the real file size when it is written;
- :data:`MAX_OUTPUT_BYTES` bytes of rescored files in the output folder in all (a reloaded page is
  a new session, so the per-session budget alone does not bound the disk): to make room, the
  oldest rescored files no session has loaded are deleted; if that is not enough, the job is
  refused;
- :data:`OUTPUT_MAX_AGE_S`: rescored files (and temporaries left by an interrupted write) older
  than this are deleted when the server starts and before each job, unless loaded or in use.

The Learning tab's jobs (a transfer training, a sliding-window search) cost CPU time only: each
has its own :class:`Budget` with ``Limits(kind="learning", ...)``
(:data:`MAX_LEARNING_JOBS_PER_SESSION`, :data:`MAX_LEARNING_JOBS_TOTAL`, no bytes), and their
sizes are capped by :data:`MAX_TRANSFER_JETS_PER_SET`, :data:`MAX_TRANSFER_EPOCHS`,
:data:`MAX_SCAN_WINDOWS`, :data:`MAX_SCAN_JETS_PER_WINDOW` and :data:`SCAN_BOOSTING_ITERATIONS`.

Only the app's own files are ever deleted: names matching :data:`OUTPUT_PATTERNS` (what
:func:`app.views.rescoring.output_path` writes), never other files in a configured folder.

A limit reached raises :class:`LimitReached`, whose text is the message the page shows.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JOBS_PER_SESSION",
    "MAX_JOBS_TOTAL",
    "MAX_SESSION_BYTES",
    "MAX_OUTPUT_BYTES",
    "OUTPUT_MAX_AGE_S",
    "OUTPUT_PATTERNS",
    "MAX_LEARNING_JOBS_PER_SESSION",
    "MAX_LEARNING_JOBS_TOTAL",
    "MAX_TRANSFER_JETS_PER_SET",
    "MAX_TRANSFER_EPOCHS",
    "MAX_TRANSFER_ENSEMBLE",
    "MAX_SCAN_WINDOWS",
    "MAX_SCAN_JETS_PER_WINDOW",
    "SCAN_BOOSTING_ITERATIONS",
    "Limits",
    "LimitReached",
    "SessionUsage",
    "Ticket",
    "Budget",
    "session_usage",
    "format_bytes",
]

log = logging.getLogger("sophon.app")

#: Rescoring jobs one session may have unfinished at a time.
MAX_JOBS_PER_SESSION = 1
#: Rescoring jobs unfinished at a time on the whole server (one runs, the others wait in line).
MAX_JOBS_TOTAL = 3
#: Bytes one session may write under the output folder (the embedded default, rescored, is
#: about 0.1 GB).
MAX_SESSION_BYTES = 1_000_000_000
#: Bytes of rescored files the output folder may hold in all.
MAX_OUTPUT_BYTES = 5_000_000_000
#: Age (seconds since last written) after which a rescored file is deleted.
OUTPUT_MAX_AGE_S = 24 * 3600.0
#: The file names the app writes in the output folder: rescored datasets and the temporaries of
#: their atomic writes (sophon.atomic). Nothing else there is ever deleted.
OUTPUT_PATTERNS = ("*-rescored-*.parquet", ".*-rescored-*.parquet.*.tmp")

# --- the Learning tab (app/views/learning.py): its jobs run in the same worker thread as
# rescoring, one after the other, and write no files
#: Learning jobs (a transfer training or a sliding-window search) one session may have
#: unfinished at a time.
MAX_LEARNING_JOBS_PER_SESSION = 1
#: Learning jobs unfinished at a time on the whole server.
MAX_LEARNING_JOBS_TOTAL = 3
#: The most jets of each set one transfer training uses (a random subset beyond; the embedded
#: default holds 83,802 QCD jets, 2,741 Z+jets jets and 2,403 Higgs jets).
MAX_TRANSFER_JETS_PER_SET = 20_000
#: The most epochs one transfer training runs.
MAX_TRANSFER_EPOCHS = 100
#: The most heads one transfer training averages (each trains for the epochs asked).
MAX_TRANSFER_ENSEMBLE = 10
#: The most mass windows one sliding-window search scans (the paper's scan has 24).
MAX_SCAN_WINDOWS = 30
#: The most training jets of each of a search's classifiers (a uniform subset beyond).
MAX_SCAN_JETS_PER_WINDOW = 20_000
#: Boosting iterations of each of a search's classifiers (they stop earlier on their own).
SCAN_BOOSTING_ITERATIONS = 50


class LimitReached(Exception):
    """A limit refuses a job; ``str(error)`` is the message for the page (plain text)."""


@dataclass(frozen=True)
class Limits:
    """The numbers (module constants by default; tests use small ones)."""

    jobs_per_session: int = MAX_JOBS_PER_SESSION
    jobs_total: int = MAX_JOBS_TOTAL
    session_bytes: int = MAX_SESSION_BYTES
    output_bytes: int = MAX_OUTPUT_BYTES
    max_age_s: float = OUTPUT_MAX_AGE_S
    #: what the jobs are, in the messages ("rescoring job", "learning job")
    kind: str = "rescoring"

    def describe(self) -> str:
        """One sentence for the page."""
        return (f"Limits on this server: {self.jobs_per_session} rescoring per session at a time, "
                f"{self.jobs_total} at a time for all users; each session may write "
                f"{format_bytes(self.session_bytes)} of rescored data, the output folder holds at "
                f"most {format_bytes(self.output_bytes)}, and rescored files older than "
                f"{self.max_age_s / 3600:g} h are deleted.")


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


@dataclass(eq=False)
class SessionUsage:
    """What one browser session has used: its unfinished jobs and the bytes it has written."""

    tickets: set = field(default_factory=set)
    bytes_written: int = 0
    bytes_reserved: int = 0  # estimates of its unfinished jobs

    @property
    def running(self) -> int:
        return len(self.tickets)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def session_usage(document: Any | None) -> SessionUsage:
    """The usage record of the session whose bokeh document is ``document`` (one per browser
    tab); a fresh one when there is no document (a notebook, a test)."""
    if document is None:
        return SessionUsage()
    with _SESSIONS_LOCK:
        usage = _SESSIONS.get(document)
        if usage is None:
            usage = _SESSIONS[document] = SessionUsage()
        return usage


@dataclass(eq=False)
class Ticket:
    """An admitted job: it holds one slot of the server and of each session waiting on it, and
    its estimated bytes, until :meth:`Budget.close`."""

    key: Path
    owner: SessionUsage
    estimate: int
    holders: list = field(default_factory=list)
    closed: bool = False


class Budget:
    """The process-wide accounting of rescoring against :class:`Limits`, for one output folder.

    ``in_use()`` gives the files that must not be deleted (datasets loaded by some session).
    Thread-safe: sessions admit jobs from their threads, the worker closes them.
    """

    def __init__(self, output: str | Path, limits: Limits | None = None,
                 in_use: Callable[[], Iterable[Path]] | None = None):
        self.output = Path(output)
        self.limits = limits or Limits()
        self._in_use = in_use or (lambda: ())
        self._lock = threading.Lock()
        self._open: set[Ticket] = set()

    # --- jobs ------------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._open)

    def admit(self, session: SessionUsage, key: str | Path, estimate: int) -> Ticket:
        """Admit a new job writing about ``estimate`` bytes to ``key`` for ``session``, or raise
        :class:`LimitReached` saying which limit and what to do."""
        limits = self.limits
        estimate = max(0, int(estimate))
        with self._lock:
            self._check_session(session)
            if len(self._open) >= limits.jobs_total:
                raise LimitReached(
                    f"The server is already running {len(self._open)} {limits.kind} jobs, the most "
                    f"it runs at a time for all users ({limits.jobs_total}). Try again when one "
                    "has finished.")
            used = session.bytes_written + session.bytes_reserved
            if used + estimate > limits.session_bytes:
                raise LimitReached(
                    f"This rescoring would write about {format_bytes(estimate)}, and this "
                    f"session has already written (or is writing) {format_bytes(used)} of the "
                    f"{format_bytes(limits.session_bytes)} one session may write. Rescoring "
                    "the same dataset with the same model file again reuses what was written "
                    "and costs nothing.")
            if estimate:
                self._make_room(estimate, keep={Path(key)})
            ticket = Ticket(key=Path(key), owner=session, estimate=estimate, holders=[session])
            self._open.add(ticket)
            session.tickets.add(ticket)
            session.bytes_reserved += estimate
            return ticket

    def join(self, session: SessionUsage, ticket: Ticket) -> None:
        """``session`` waits on another session's job (the same dataset and model): it holds one
        of the session's slots but costs no bytes."""
        with self._lock:
            if ticket in session.tickets or ticket.closed:
                return
            self._check_session(session)
            ticket.holders.append(session)
            session.tickets.add(ticket)

    def close(self, ticket: Ticket, written: int = 0) -> None:
        """The job has finished (done, failed or cancelled) having written ``written`` bytes:
        free its slots and charge the bytes to the session that started it."""
        with self._lock:
            if ticket.closed:
                return
            ticket.closed = True
            self._open.discard(ticket)
            for session in ticket.holders:
                session.tickets.discard(ticket)
            ticket.owner.bytes_reserved -= ticket.estimate
            ticket.owner.bytes_written += max(0, int(written))

    def _check_session(self, session: SessionUsage) -> None:
        limit = self.limits.jobs_per_session
        if session.running >= limit:
            raise LimitReached(
                f"This session already has {session.running} {self.limits.kind} job"
                f"{'s' if session.running != 1 else ''} unfinished, the most one session may "
                f"have ({limit}). Wait for it to finish, or cancel it.")

    # --- files -----------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """The app's own files in the output folder (:data:`OUTPUT_PATTERNS`), oldest first."""
        if not self.output.is_dir():
            return []
        found = {p for pattern in OUTPUT_PATTERNS for p in self.output.glob(pattern)
                 if p.is_file()}
        return sorted(found, key=_mtime)

    def used_bytes(self) -> int:
        return sum(_size(p) for p in self.files())

    def _protected(self, extra: Iterable[Path] = ()) -> set[Path]:
        keep = {Path(p).resolve() for p in self._in_use()}
        keep.update(Path(t.key).resolve() for t in self._open)
        keep.update(Path(p).resolve() for p in extra)
        return keep

    @staticmethod
    def _kept(path: Path, keep: set[Path]) -> bool:
        """Whether ``path`` is a kept file, in a kept folder, or the temporary of a kept file
        (``.NAME.xxxx.tmp``)."""
        resolved = path.resolve()
        if resolved in keep or any(parent in keep for parent in resolved.parents):
            return True
        return any(path.name.startswith(f".{k.name}.") and k.parent == resolved.parent
                   for k in keep)

    def clean(self, now: float | None = None) -> list[Path]:
        """Delete the app's files older than ``max_age_s`` that nobody uses; the deleted paths."""
        with self._lock:
            return self._clean(now)

    def _clean(self, now: float | None = None) -> list[Path]:
        now = time.time() if now is None else now
        keep = self._protected()
        removed = []
        for path in self.files():
            if now - _mtime(path) > self.limits.max_age_s and not self._kept(path, keep):
                if _remove(path):
                    removed.append(path)
        return removed

    def _make_room(self, needed: int, keep: set[Path]) -> None:
        """Clean, then delete the oldest unused rescored files until ``needed`` more bytes fit
        under ``output_bytes`` (counting the estimates of unfinished jobs); else LimitReached."""
        self._clean()
        keep = self._protected(keep)
        reserved = sum(t.estimate for t in self._open)
        files = self.files()
        used = sum(_size(p) for p in files)
        for path in files:
            if used + reserved + needed <= self.limits.output_bytes:
                break
            if not self._kept(path, keep):
                size = _size(path)
                if _remove(path):
                    used -= size
        if used + reserved + needed > self.limits.output_bytes:
            raise LimitReached(
                f"The output folder is full: rescored datasets that sessions are using take "
                f"{format_bytes(used + reserved)} of the {format_bytes(self.limits.output_bytes)} "
                f"it may hold, and this rescoring needs about {format_bytes(needed)}. Try again "
                "later, or ask whoever runs the server.")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        log.warning("could not delete the old output %s", path, exc_info=True)
        return False
    log.info("deleted the old output %s", path)
    return True
