"""Score JetClass-II files, or rescore a dataset, with a Sophon model into a :mod:`sophon.store`
dataset.

The scorers themselves (:class:`~sophon.scorers.TorchScorer`, :class:`~sophon.scorers.OnnxScorer`,
:func:`~sophon.scorers.load_scorer`) live in :mod:`sophon.scorers`; this module reads the inputs a
chunk at a time, featurises them, scores them and writes the dataset: :func:`score_files` (the
``sophon score`` command) from JetClass-II parquet files, :func:`rescore_dataset` (the app's
rescoring) from a dataset that stores constituents.

Command line::

    sophon score INPUT.parquet... --model sophon.pt -o DATASET [--device auto|cpu|cuda]
                 [--precision auto|fp32|bf16|fp16] [--batch-size N] [--compile] [--overwrite]
                 [--dask [ADDRESS] [--dask-workers N]]

writes ``DATASET/part-<input stem>.parquet`` per input (atomically), skipping inputs whose part is
already complete, so an interrupted run resumes where it stopped. An input ending in ``.root`` is
a Delphes file: its jets (``--jet-branch``, default ``JetPUPPIAK8``) are read with their
constituents as :mod:`sophon.delphes` reads them, streamed, and ``event_id`` counts on across the
ROOT inputs of one run (the second file's first event follows the first file's last). A Delphes
jet left without a constituent by the selection is not scored (the converter drops it too); the
run says how many were dropped and the part's metadata records it
(``extra["jets_without_constituents"]``).

Hostile or broken input stops the run with a message and exit code 2, before anything is
written for that input: an output folder that cannot be created or written to (checked before
any jet is scored), a jet with a non-finite constituent or jet input (the message names the
file, the jet's row and the column), a model that gives a non-finite score or latent (the file
and the row). SIGTERM and SIGINT stop the run cleanly: the part being written is removed, parts
already complete are kept (a rerun resumes), and the exit code is 128 + the signal number.

``--dask [ADDRESS]`` (:func:`score_files_on_dask`, the ``dask`` extra) scores each input as a
task on a Dask cluster: the scheduler at ADDRESS, or a LocalCluster of ``--dask-workers``
one-thread processes on this machine. The parts, their atomic writes and the resumption are
those of the run in one process; the progress bar advances as the scheduler reports inputs done.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sophon.features import (PARTICLE_COLUMNS, REQUIRED_COLUMNS, MissingColumnError,
                             RaggedInputs, ragged_inputs)
# The scorer family lives in sophon.scorers; these names stay importable from here too
# (sophon.training and the benchmarks import resolve_device, resolve_precision, cpu_has_bf16).
from sophon.scorers import (OnnxScorer, Scorer, TorchScorer, cpu_has_bf16,  # noqa: F401
                            load_scorer, resolve_device, resolve_precision)
from sophon.store import (JET_COLUMNS, LATENT_DIM, SCORE_COLUMNS, SCORE_HEAD_KEY,
                          DatasetMetadata, JetDataset, read_metadata, write_dataset)

__all__ = [
    "OPTIONAL_JET_COLUMNS",
    "score_table",
    "score_files",
    "score_files_on_dask",
    "rescore_dataset",
    "constituent_counts",
    "part_path",
    "register_cli",
]

T = TypeVar("T")
# Per-jet columns copied to the dataset when an input has them (truth label, SM-sample bookkeeping).
OPTIONAL_JET_COLUMNS: tuple[str, ...] = ("jet_label", "event_id", "jet_rank", "process", "weight")
# Jets read and featurised at once from a file: bounds memory, and is the pool sorted into buckets.
DEFAULT_CHUNK_JETS = 32_768
# sophon score --dask without an address: a LocalCluster made for the run
LOCAL_CLUSTER = "local"
# how long sophon score --dask ADDRESS waits for the scheduler
DASK_CONNECT_TIMEOUT = "20s"


# ---------------------------------------------------------------------------------------------------
# Tables and files


def _carried_columns(names: Iterable[str]) -> list[str]:
    present = set(names)
    return [name for name in (*JET_COLUMNS, *OPTIONAL_JET_COLUMNS) if name in present]


def _check_columns(names: Sequence[str], source: str) -> None:
    present = set(names)
    needed = tuple(dict.fromkeys(REQUIRED_COLUMNS + JET_COLUMNS))
    for name in needed:
        if name not in present:
            raise MissingColumnError(f"{source}: missing column {name!r} (JetClass-II schema; "
                                     f"scoring needs {', '.join(needed)})")


def _check_constituents(inputs: RaggedInputs, source: str, first_row: int = 0) -> None:
    empty = np.flatnonzero(inputs.multiplicity == 0)
    if len(empty):
        raise ValueError(f"{source}: jet at row {first_row + int(empty[0])} has no constituents "
                         f"({len(empty)} such jets); the model needs at least one particle per jet")


def _check_finite_inputs(batch: pa.RecordBatch | pa.Table, source: str, first_row: int = 0) -> None:
    """Every model input of every jet is a finite number; else a ValueError naming the jet's row,
    the column and the value. The run stops there: a part without that jet would silently
    drop it, and the model would give it NaN scores."""
    for name in REQUIRED_COLUMNS:
        if name not in batch.schema.names:
            continue
        column = _as_array(batch.column(name))
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            values, parents = pc.list_flatten(column), pc.list_parent_indices(column)
        else:
            values, parents = column, None
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            continue  # ragged_inputs names columns of the wrong type
        numbers = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        bad = ~np.isfinite(numbers)
        if bad.any():
            position = int(np.argmax(bad))
            row = int(parents.to_numpy()[position]) if parents is not None else position
            where = ""
            if parents is not None:
                offsets = column.offsets.to_numpy()
                where = f"particle {position - int(offsets[row] - offsets[0])} of the jet; "
            raise ValueError(f"{source}: jet at row {first_row + row} has a non-finite value "
                             f"({numbers[position]}) in column {name!r} ({where}"
                             f"{int(bad.sum())} such value(s) in rows {first_row} to "
                             f"{first_row + len(column) - 1}); stopped, no part written for this "
                             "input: drop or fix the jet and rerun")


def _check_finite_outputs(probabilities: np.ndarray, latents: np.ndarray, source: str,
                          first_row: int = 0) -> None:
    """The model's scores and latents are finite for every jet; else a ValueError naming the
    file and the jet's row."""
    for what, values in (("score", probabilities), ("latent", latents)):
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise ValueError(f"{source}: the model gave a non-finite {what} for the jet at row "
                             f"{first_row + row} ({int((~finite).sum())} such jet(s)); stopped, "
                             "no part written for this input")


def check_output_folder(output: Path) -> None:
    """The output dataset folder exists (created if needed) and a file can be written in it;
    else a ValueError naming it (checked before scoring, so a run does not fail at the end)."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a directory (the dataset is a directory "
                         "of parts)")
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".sophon-write-check.", dir=output)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{output}: cannot write the output dataset there ({reason}); choose "
                         "another -o folder") from None


def score_table(table: pa.Table | pa.RecordBatch, scorer: Scorer, *,
                source_name: str = "table") -> tuple[dict[str, pa.Array], np.ndarray, np.ndarray]:
    """Score an in-memory JetClass-II table: (jet columns to keep, probabilities, latents)."""
    _check_columns(table.schema.names, source_name)
    if table.num_rows == 0:
        raise ValueError(f"{source_name}: holds no jets")
    inputs = ragged_inputs(table, source_name=source_name)
    _check_constituents(inputs, source_name)
    _check_finite_inputs(table, source_name)
    probabilities, latents = scorer.score_ragged(inputs)
    _check_finite_outputs(probabilities, latents, source_name)
    jets = {name: _as_array(table.column(name)) for name in _carried_columns(table.schema.names)}
    return jets, probabilities, latents


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def part_path(output: Path, source: Path) -> Path:
    """The dataset part written for one input file."""
    return output / f"part-{source.stem}.parquet"


def _existing_part_state(part: Path, source: Path, rows: int, model_id: str) -> str:
    """"complete", "missing" (absent or unusable: rescore), or raise for a different model.
    ``rows``: the input's rows (a Delphes input's jets, with those it drops), as the part's
    ``source_rows`` records them."""
    if not part.exists():
        return "missing"
    try:
        parquet = pq.ParquetFile(part)
        metadata = read_metadata(parquet.schema_arrow, source=str(part))
    except (OSError, pa.ArrowException, ValueError):
        return "missing"
    if metadata is None or metadata.extra.get("source_rows", parquet.metadata.num_rows) != rows:
        return "missing"
    if metadata.model_id != model_id:
        raise ValueError(f"{part}: already scored with model {metadata.model_id!r}, not {model_id!r}; "
                         "choose a new output directory or pass --overwrite")
    if metadata.extra.get("source_file") not in (None, source.name):
        raise ValueError(f"{part}: holds the scores of {metadata.extra.get('source_file')!r}, not "
                         f"{source.name!r} (two inputs with the same file name?)")
    return "complete"


def _input_metadata_luminosity(schema: pa.Schema) -> float | None:
    try:
        metadata = read_metadata(schema)
    except ValueError:
        return None
    return None if metadata is None else metadata.luminosity_fb


class _ParquetInput:
    """A JetClass-II parquet input, seen as scoring reads every input: ``schema_arrow``,
    ``num_rows`` and ``iter_batches`` (a Delphes input is a :class:`sophon.delphes.DelphesFile`)."""

    def __init__(self, source: Path):
        try:
            self._parquet = pq.ParquetFile(source)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{source}: not a readable parquet file ({error})") from None
        self.schema_arrow = self._parquet.schema_arrow
        self.num_rows = self._parquet.metadata.num_rows

    def iter_batches(self, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
        return self._parquet.iter_batches(batch_size=batch_size, columns=columns)


def is_delphes_input(source: str | os.PathLike) -> bool:
    """An input read as a Delphes ROOT file (by its ``.root`` suffix)."""
    return Path(source).suffix.lower() == ".root"


def _featurised_chunks(reader, columns: list[str], chunk_jets: int,
                       source: str) -> Iterator[tuple[pa.RecordBatch, RaggedInputs]]:
    for batch in reader.iter_batches(batch_size=chunk_jets, columns=columns):
        yield batch, ragged_inputs(batch, source_name=source)


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items``, each computed in a worker thread while the caller uses the previous one (reading
    and featurising the next chunk overlaps scoring on the GPU; numpy and pyarrow release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def _opened_inputs(inputs: Sequence[str | os.PathLike], output: Path,
                   jet_branch: str | None, first_event_id: int = 0) -> list[tuple[Path, object]]:
    """Each input with its reader (checked: it exists, has the JetClass-II columns and jets, and
    no two inputs write the same part). A Delphes input's ``event_id`` starts where the previous
    ROOT input's ended, the first at ``first_event_id``."""
    sources = [Path(p) for p in inputs]
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a directory (the dataset is a directory "
                         "of parts)")
    seen: dict[str, Path] = {}
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such input file")
        if source.stem in seen and seen[source.stem].resolve() != source.resolve():
            raise ValueError(f"{source} and {seen[source.stem]} would both write "
                             f"{part_path(output, source).name}; rename one")
        seen[source.stem] = source

    files: list[tuple[Path, object]] = []
    next_event_id = first_event_id
    for source in sources:
        if is_delphes_input(source):
            from sophon.delphes import DEFAULT_JET_BRANCH, DelphesFile

            parquet = DelphesFile(source, jet_branch=jet_branch or DEFAULT_JET_BRANCH,
                                  event_id_offset=next_event_id)
            next_event_id += parquet.num_events
        else:
            parquet = _ParquetInput(source)
        _check_columns(parquet.schema_arrow.names, str(source))
        if parquet.num_rows == 0:
            raise ValueError(f"{source}: holds no jets (empty file)")
        files.append((source, parquet))
    return files


def score_files(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, scorer: Scorer, *,
                overwrite: bool = False, luminosity_fb: float | None = None,
                chunk_jets: int = DEFAULT_CHUNK_JETS, progress: bool = True,
                prefetch: bool | None = None, log=print,
                jet_branch: str | None = None, first_event_id: int = 0) -> list[Path]:
    """Score JetClass-II parquet files (or Delphes ``.root`` files, their ``jet_branch``, default
    ``JetPUPPIAK8``) into the dataset directory ``output``, one part per input.

    Files are streamed in chunks of ``chunk_jets`` jets; each part is written atomically once its
    input is complete, and inputs whose part is already complete (same model, same row count) are
    skipped. ``prefetch`` (default: when scoring on CUDA) featurises the next chunk in a thread.
    ``first_event_id``: the first Delphes input's first event id (the next ones count on).
    Returns the part paths in input order.
    """
    if prefetch is None:
        prefetch = getattr(getattr(scorer, "device", None), "type", "cpu") == "cuda"
    from tqdm.auto import tqdm

    output = Path(output)
    files = _opened_inputs(inputs, output, jet_branch, first_event_id)
    check_output_folder(output)

    parts: list[Path] = []
    todo: list[tuple[Path, object, Path]] = []
    for source, parquet in files:
        part = part_path(output, source)
        parts.append(part)
        state = "missing" if overwrite else _existing_part_state(
            part, source, parquet.num_rows, scorer.model_id)
        if state == "complete":
            log(f"{source.name}: already scored in {part}, skipped")
        else:
            todo.append((source, parquet, part))

    total = sum(parquet.num_rows for _, parquet, _ in todo)
    with tqdm(total=total, unit="jet", unit_scale=True, disable=not progress or total == 0,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for source, parquet, part in todo:
            bar.set_description(source.name)
            names = parquet.schema_arrow.names
            columns = list(dict.fromkeys([*REQUIRED_COLUMNS, *_carried_columns(names)]))
            kept: dict[str, list[pa.Array]] = {name: [] for name in _carried_columns(names)}
            scores, latents = [], []
            first_row = 0
            chunks = _featurised_chunks(parquet, columns, chunk_jets, str(source))
            for batch, ragged in (_prefetched(chunks) if prefetch else chunks):
                _check_constituents(ragged, str(source), first_row)
                _check_finite_inputs(batch, str(source), first_row)
                probabilities, latent = scorer.score_ragged(ragged)
                _check_finite_outputs(probabilities, latent, str(source), first_row)
                scores.append(probabilities)
                latents.append(latent)
                for name in kept:
                    kept[name].append(batch.column(name))
                first_row += batch.num_rows
                bar.update(batch.num_rows)
            # a Delphes input gives no row for a jet left without a constituent
            without_constituents = parquet.num_rows - first_row
            bar.update(without_constituents)
            if without_constituents:
                from sophon.delphes import CONSTITUENT_SELECTION

                if first_row == 0:
                    raise ValueError(f"{source}: none of its {parquet.num_rows:,} jets keeps a "
                                     f"constituent after the Delphes selection "
                                     f"({CONSTITUENT_SELECTION}); nothing to score")
                log(f"{source.name}: {without_constituents:,} of {parquet.num_rows:,} jets not "
                    f"scored: none of their constituents passes the Delphes selection "
                    f"({CONSTITUENT_SELECTION}), and the model needs at least one")
            jets = {name: pa.concat_arrays(chunks) for name, chunks in kept.items()}
            luminosity = luminosity_fb if luminosity_fb is not None else \
                _input_metadata_luminosity(parquet.schema_arrow)
            extra = {"source_file": source.name, "source_rows": parquet.num_rows,
                     "scorer": scorer.description}
            if is_delphes_input(source):
                extra["jets_without_constituents"] = without_constituents
            metadata = DatasetMetadata(luminosity_fb=luminosity, model_id=scorer.model_id,
                                       extra=extra)
            write_dataset(part, jets, scores=np.concatenate(scores), latents=np.concatenate(latents),
                          metadata=metadata)
    return parts


# ---------------------------------------------------------------------------------------------------
# Scoring on a Dask cluster

#: Per worker process and thread: the scorer of each (model file as it is now, scorer options),
#: loaded by the first input a worker scores and kept for the next ones.
_WORKER_SCORERS: dict[tuple, Scorer] = {}
_WORKER_SCORERS_LOCK = threading.Lock()


def _worker_scorer(model: str, options: dict) -> Scorer:
    status = os.stat(model)  # a model file rewritten in place is loaded again
    key = (threading.get_ident(), model, status.st_mtime_ns, status.st_size,
           tuple(sorted(options.items())))
    with _WORKER_SCORERS_LOCK:
        scorer = _WORKER_SCORERS.get(key)
    if scorer is None:
        scorer = load_scorer(model, **options)
        with _WORKER_SCORERS_LOCK:
            _WORKER_SCORERS[key] = scorer
    return scorer


def _score_input_task(source: str, output: str, model: str, options: dict, overwrite: bool,
                      luminosity_fb: float | None, chunk_jets: int, jet_branch: str | None,
                      first_event_id: int) -> tuple[str, list[str]]:
    """One input scored on a worker into its part of ``output`` (:func:`score_files`, so
    atomic and skipped when already complete): (the part's path, the messages it logged)."""
    messages: list[str] = []
    parts = score_files([source], output, _worker_scorer(model, options), overwrite=overwrite,
                        luminosity_fb=luminosity_fb, chunk_jets=chunk_jets, progress=False,
                        log=messages.append, jet_branch=jet_branch, first_event_id=first_event_id)
    return str(parts[0]), messages


def score_files_on_dask(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
                        model: str | os.PathLike, client, *, scorer_options: dict | None = None,
                        overwrite: bool = False, luminosity_fb: float | None = None,
                        chunk_jets: int = DEFAULT_CHUNK_JETS, progress: bool = True, log=print,
                        jet_branch: str | None = None) -> list[Path]:
    """:func:`score_files` with each input a task on the Dask cluster of ``client`` (a
    ``distributed.Client``, or a function returning one, called only when some input is still
    to be scored: a local cluster is then not started for nothing): the same parts, each written atomically by the worker that scores
    it, and inputs whose part is already complete skipped (checked here first, and again by the
    worker), so an interrupted run resumes. Workers load the ``model`` file once each, with
    ``scorer_options`` (:func:`~sophon.scorers.load_scorer`'s ``device``, ``precision``,
    ``batch_size``, ``compile``, ``threads``); the model is loaded here too, to stop at once on
    a bad file. Inputs, model and output must lie at the same paths on every worker (a shared
    file system). ``progress``: a tqdm bar over jets, advanced as the scheduler reports each
    input done. The first input that fails stops the run: the inputs not yet started are
    cancelled and its error is raised. Returns the part paths in input order.
    """
    from sophon.dask_scan import require_dask

    require_dask("sophon score --dask", distributed=True)
    from distributed import as_completed
    from tqdm.auto import tqdm

    options = dict(scorer_options or {})
    output = Path(output).resolve()
    model = Path(model).resolve()
    files = _opened_inputs([Path(p).resolve() for p in inputs], output, jet_branch)
    check_output_folder(output)
    scorer = load_scorer(model, **options)
    parts: list[Path] = []
    pending: dict = {}
    for source, reader in files:
        part = part_path(output, source)
        parts.append(part)
        if not overwrite and _existing_part_state(part, source, reader.num_rows,
                                                  scorer.model_id) == "complete":
            log(f"{source.name}: already scored in {part}, skipped")
            continue
        if callable(client) and not hasattr(client, "submit"):
            client = client()
        future = client.submit(_score_input_task, str(source), str(output), str(model), options,
                               overwrite, luminosity_fb, chunk_jets, jet_branch,
                               getattr(reader, "event_id_offset", 0), pure=False,
                               key=f"sophon-score-{source.name}-{os.urandom(4).hex()}")
        pending[future] = (source, reader.num_rows)
    total = sum(rows for _, rows in pending.values())
    if not pending:
        return parts
    try:
        with tqdm(total=total, unit="jet", unit_scale=True, disable=not progress or total == 0,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for future in as_completed(list(pending)):
                source, rows = pending[future]
                _, messages = future.result()  # the worker's error, raised here
                for message in messages:
                    log(message)
                bar.set_description(source.name)
                bar.update(rows)
    except BaseException:
        client.cancel(list(pending))
        raise
    return parts


# ---------------------------------------------------------------------------------------------------
# Rescoring a dataset


def constituent_counts(dataset: JetDataset, chunk_jets: int = 65_536) -> np.ndarray | None:
    """(N,) int32: how many constituents each jet of ``dataset`` stores (0 for a jet stored
    without any, and for a null list), or None when the dataset stores no constituent columns.

    These are the jets :func:`rescore_dataset` rescores (the count of one particle column, as
    the model inputs count them); only that column's lists are read, ``chunk_jets`` at a time.
    """
    column = PARTICLE_COLUMNS[0]
    if not dataset.has(column):
        return None
    counts = np.zeros(dataset.n_jets, dtype=np.int32)
    offset = 0
    for file in dataset.files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_jets, columns=[column]):
            lengths = pc.fill_null(pc.list_value_length(batch.column(0)), 0)
            counts[offset:offset + batch.num_rows] = lengths.to_numpy(zero_copy_only=False)
            offset += batch.num_rows
    return counts


def rescore_dataset(dataset: JetDataset, output: str | os.PathLike, scorer: Scorer, *,
                    chunk_jets: int = 4096, progress: Callable[[int, int], None] | None = None,
                    cancelled: Callable[[], bool] | None = None) -> int | None:
    """Rescore the jets of ``dataset`` that carry constituents and write the result to ``output``
    (one file, atomically): the dataset's jet columns, the new scores and latents, its metadata
    with the scorer's model id (and no score head: the file stores its own scores).

    Jets without a constituent keep their scores (and latents, zero when the dataset has none).
    The constituents are read ``chunk_jets`` at a time; after each chunk ``progress(jets read,
    jets rescored)`` is called, and ``cancelled()`` is asked before each: when it is true nothing
    is written and None comes back. Returns the number of jets rescored.
    """
    if not all(dataset.has(c) for c in REQUIRED_COLUMNS):
        raise ValueError(f"{dataset.path}: no constituent columns to rescore")
    scores = np.array(dataset.scores, dtype=np.float32, order="C")
    latents = (np.array(dataset.latents, dtype=np.float32) if dataset.has("latent")
               else np.zeros((dataset.n_jets, LATENT_DIM), dtype=np.float32))
    offset = rescored = 0
    for file in dataset.files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_jets,
                                                       columns=list(REQUIRED_COLUMNS)):
            if cancelled is not None and cancelled():
                return None
            ragged = ragged_inputs(batch, source_name=str(file))
            keep = ragged.multiplicity > 0
            if keep.any():
                offsets = np.append(ragged.offsets[:-1][keep], ragged.offsets[-1])
                subset = RaggedInputs(ragged.features, ragged.vectors, offsets,
                                      ragged.max_particles)
                probabilities, latent = scorer.score_ragged(subset)
                rows = offset + np.flatnonzero(keep)
                scores[rows] = probabilities
                latents[rows] = latent
                rescored += int(keep.sum())
            offset += batch.num_rows
            if progress is not None:
                progress(offset, rescored)
    kept = [c for c in dataset.columns if c not in set(SCORE_COLUMNS) and c != "latent"]
    table = pa.concat_tables([pq.read_table(f, columns=kept) for f in dataset.files])
    jets = {name: table.column(name).combine_chunks() for name in kept}
    extra = {k: v for k, v in dataset.metadata.extra.items() if not k.startswith(SCORE_HEAD_KEY)}
    metadata = DatasetMetadata(
        luminosity_fb=dataset.metadata.luminosity_fb, model_id=scorer.model_id,
        extra={**extra, "rescored_from": str(dataset.path), "rescored_jets": rescored,
               "scorer": scorer.description})
    write_dataset(output, jets, scores=scores, latents=latents, metadata=metadata)
    return rescored


# ---------------------------------------------------------------------------------------------------
# Command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


class Interrupted(BaseException):
    """SIGTERM or SIGINT during ``sophon score`` (a BaseException, so that no ``except
    Exception`` keeps the run going); every ``finally`` runs, so no temporary part is left."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _main(args: argparse.Namespace) -> int:
    if threading.current_thread() is not threading.main_thread():
        return _score(args)
    previous = {signum: signal.signal(signum, _interrupt)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _score(args)
    except Interrupted as interruption:
        name = signal.Signals(interruption.signum).name
        print(f"sophon score: stopped by {name}; the part being written was removed, complete "
              "parts are kept (rerun the same command to resume)", file=sys.stderr)
        return 128 + interruption.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _score_with_dask(args: argparse.Namespace, log) -> int:
    """``sophon score --dask [ADDRESS]``: on the scheduler at ADDRESS, or on a LocalCluster of
    ``--dask-workers`` one-thread processes (default: one per core) made for the run, once some
    input is left to score."""
    from sophon.dask_scan import local_client, require_dask

    require_dask("sophon score --dask", distributed=True)
    from distributed import Client

    options = dict(device=args.device, precision=args.precision, batch_size=args.batch_size,
                   compile=args.compile, threads=args.threads)
    made: list = []

    def connect():
        if args.dask == LOCAL_CLUSTER:
            client = local_client(args.dask_workers)
            where = f"a local Dask cluster of {len(client.scheduler_info()['workers'])} worker(s)"
        else:
            try:
                client = Client(args.dask, timeout=DASK_CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as error:
                raise ValueError(f"--dask {args.dask}: cannot reach the Dask scheduler "
                                 f"({error})") from None
            where = f"the Dask scheduler at {args.dask}"
        made.append(client)
        log(f"scoring with {args.model} on {where}")
        return client

    try:
        parts = score_files_on_dask(args.inputs, args.output, args.model, connect,
                                    scorer_options=options, overwrite=args.overwrite,
                                    luminosity_fb=args.luminosity_fb, chunk_jets=args.chunk_jets,
                                    progress=not args.quiet, log=log, jet_branch=args.jet_branch)
    finally:
        for client in made:
            cluster = client.cluster if args.dask == LOCAL_CLUSTER else None
            client.close()
            if cluster is not None:
                cluster.close()
                # a local worker stopped while writing leaves its part's temporary: remove it
                for source in args.inputs:
                    part = part_path(Path(args.output), Path(source))
                    for temporary in part.parent.glob(f".{part.name}.*.tmp"):
                        temporary.unlink(missing_ok=True)
    log(f"wrote {len(parts)} part(s) to {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    if getattr(args, "dask", None) is not None:
        log = (lambda message: None) if args.quiet else \
            (lambda message: print(message, file=sys.stderr))
        return _score_with_dask(args, log)
    scorer = load_scorer(args.model, device=args.device, precision=args.precision,
                         batch_size=args.batch_size, compile=args.compile, threads=args.threads)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    log(f"scoring with {scorer.model_id} ({scorer.description})")
    parts = score_files(args.inputs, args.output, scorer, overwrite=args.overwrite,
                        luminosity_fb=args.luminosity_fb, chunk_jets=args.chunk_jets,
                        progress=not args.quiet, log=log, jet_branch=args.jet_branch)
    log(f"wrote {len(parts)} part(s) to {args.output}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``sophon score``."""
    parser = subparsers.add_parser(
        "score", help="score JetClass-II parquet files (or Delphes ROOT files) with a Sophon "
                      "model into a dataset",
        description="Score JetClass-II-schema parquet files (published or generated) with a Sophon "
                    "model (.pt checkpoint or .onnx) and write a dataset directory with one part per "
                    "input: jet columns, the 188 class probabilities and the 128-d latent. Parts are "
                    "written atomically; rerunning skips inputs already scored.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="JetClass-II parquet file(s), or Delphes ROOT file(s) (*.root)")
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="model: a PyTorch state dict (published mod.* layout) or an ONNX file")
    parser.add_argument("-o", "--output", required=True, metavar="DATASET",
                        help="output dataset directory (created; one part-<stem>.parquet per input)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the torch model runs (default: cuda if available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="jets per forward pass (default: 2048 on cuda, 32 on cpu)")
    parser.add_argument("--chunk-jets", type=_positive_int, default=DEFAULT_CHUNK_JETS,
                        help="jets read and sorted by multiplicity at once (memory bound)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU cores (default: all; on the CPU each core scores its own batches)")
    parser.add_argument("--luminosity-fb", type=float, default=None,
                        help="dataset luminosity in fb^-1 (default: taken from the inputs, if any)")
    parser.add_argument("--jet-branch", default=None, metavar="BRANCH",
                        help="for .root inputs: the Delphes Jet-class branch (default JetPUPPIAK8)")
    parser.add_argument("--overwrite", action="store_true", help="rescore inputs already scored")
    parser.add_argument("--dask", nargs="?", const=LOCAL_CLUSTER, default=None, metavar="ADDRESS",
                        help="score each input as a task on a Dask cluster: the scheduler at "
                             "ADDRESS (e.g. tcp://host:8786), or without ADDRESS a local "
                             "cluster on this machine's cores (needs the 'dask' extra; inputs, "
                             "model and output at the same paths on every worker)")
    parser.add_argument("--dask-workers", type=_positive_int, default=None, metavar="N",
                        help="with --dask and no ADDRESS: worker processes of the local cluster "
                             "(default: one per core)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    parser.set_defaults(handler=_main)
