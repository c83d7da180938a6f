"""Atomic file output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and a failed or interrupted write leaves the previous
file untouched and no temporary behind. :func:`write_table_atomic` does it for a parquet table.

:data:`DATASET_METADATA_KEY` is the parquet key-value entry under which every Sophon writer
(the store, scoring, packaging, the generator's SM files) puts its JSON metadata; it lives here,
beside the writer, so that a writer needs no import of :mod:`sophon.store` to spell it
(:func:`sophon.store.read_metadata` reads it back).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DATASET_METADATA_KEY", "atomic_output", "publish", "write_table_atomic"]

DATASET_METADATA_KEY = b"sophon"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def publish(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the usual permissions (mkstemp makes it 0600) and rename
    it onto ``path``."""
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


def temporary_beside(path: Path) -> Path:
    """A new empty temporary file in ``path``'s folder (created with the folder if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    >>> with atomic_output("out.json") as temporary:
    ...     temporary.write_text("{}")
    """
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_table_atomic(table, path: str | os.PathLike, **parquet_options) -> Path:
    """Write the pyarrow ``table`` to ``path`` (zstd, plus ``parquet_options``) through a temporary
    file in the same folder, then rename.

    A reader never sees a half-written file, and an interrupted write leaves the old file intact.
    """
    import pyarrow.parquet as pq

    with atomic_output(path) as temporary:
        pq.write_table(table, temporary, compression="zstd", **parquet_options)
    return Path(path)
