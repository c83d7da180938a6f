"""Exact efficiency scans of datasets that do not fit in memory, on a Dask cluster.

:class:`DaskScanner` gives the :class:`~sophon.spectrum.EfficiencyScan` that
:meth:`sophon.analysis.DatasetAnalysis.jet_scan` and :meth:`~sophon.analysis.DatasetAnalysis.
event_scan` give, the same thresholds and the same histograms, for a dataset directory of
parquet parts of any size: each partition (a run of row groups of one file) is a task that reads
only the columns the discriminant needs (its numerator and denominator probabilities, mass,
weight, process and, where asked for, ``jet_label``, ``jet_rank``, ``event_id`` and the jet
four-momenta), and the tasks' results are summed in a tree on the cluster, so neither a worker
nor the driver ever holds more than a partition's columns and a few histograms.

How the exact answer is found (docs/dask.md says more), for jets (``D`` is the log-odds
ln(g_A/g_B) in float32, as in memory) and for events (the sum of D over the two leading jets):

1. *Bucket pass.* Each partition returns the weight of its reference jets (all, or QCD) in each
   of the 2^16 buckets of the top 16 bits of D's float32 order key (:func:`order_keys`), the jet
   count per bucket and its process names. After the merge the driver knows, for every level,
   the bucket that holds its threshold, exactly as :func:`sophon.spectrum.
   thresholds_for_efficiencies` finds it.
2. *Fill pass.* Each partition fills the cube ``sum of weights[thresholds passed, process,
   mass bin]`` (and of squared weights, jet counts, the largest weight) for its jets outside
   the cut buckets, whose levels the bucket alone decides (a jet in a higher bucket passes, in a
   lower one fails), and returns the few jets inside the cut buckets (value, weight, dataset
   row, process, mass bin, reference flag). The driver finds each threshold among those jets
   with the in-memory search (same order, ties broken the same way, the tied jets all passing)
   and adds them to the cube with the final thresholds.

When the cut buckets hold more than ``max_candidates`` jets (many jets tied at one value, or a
huge dataset), a *refinement pass* first histograms the low 16 bits of the order key inside the
largest of them: the threshold of those levels is then the exact float32 value found from the
per-key weights, and their jets are never shipped. Either way a level's threshold is the value
of the jet at which the reference weight, accumulated from the highest D down, reaches the
efficiency times the total; jets tied at it all pass.

*Events.* An event's jets may lie in two partitions (a row group boundary between them, or the
same ``event_id`` in two files, which the in-memory table also joins). Partitions whose
``event_id`` ranges (from the parquet statistics) overlap share those ids; each partition
returns the partial records of its shared events (D sums, first row, weight, process, the
four-momenta of the rank-0 and rank-1 jets), the driver joins them as the in-memory
:class:`~sophon.analysis.EventTable` does, and treats them as one more partition. At most
``max_shared_events`` event ids may be shared; beyond that (parts whose events are interleaved)
the scan stops with a DatasetError naming the parts.

*What is exact.* Every per-jet and per-event number (D, the order keys, the mass bins, the
dijet mass) is computed with the same numpy operations as in memory, so it is bit-identical.
The thresholds are the in-memory ones, and so are the jet counts and the largest weights. Sums
of weights are float64 sums in another order (per partition, then in a fixed tree), so they
differ from the in-memory ones by rounding only (relative 1e-15 per bin; bit-identical when the
weights are dyadic rationals, e.g. all equal to 1), and a threshold could differ only where the
accumulated weight passes the target within that rounding: :attr:`ScanReport.decision_margins`
gives, per level, how far from the target the decision was (a fraction of the reference
weight). The answer does not depend on the number of workers or on the order tasks finish in:
the reduction tree is fixed by the partition list.

Needs the ``dask`` extra (``pip install 'sophon-explorer[dask]'``): dask, and distributed for a
cluster (:func:`local_client`). Without a ``client`` a scan runs on dask's current scheduler
(a ``distributed.Client`` made earlier in the process is the default one).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sophon.discriminant import Discriminant
from sophon.extras import require_all
from sophon.labels import LABELS, N_CLASSES
from sophon.labels import mask as class_mask
from sophon.spectrum import (BUCKET_BITS, DEFAULT_EFFICIENCIES, DEFAULT_MASS_BINNING,
                             DIJET_MASS_LABEL, JET_MASS_LABEL, EfficiencyScan, MassBinning,
                             cut_positions, key_values, order_keys)
from sophon.store import MAX_WEIGHT, SCORE_COLUMNS, DatasetError, JetDataset

__all__ = [
    "DaskScanner",
    "ClusterTimeout",
    "Partition",
    "ScanReport",
    "DEFAULT_PARTITION_ROWS",
    "DEFAULT_MAX_CANDIDATES",
    "DEFAULT_MAX_SHARED_EVENTS",
    "DIJET_MASS_BINNING",
    "dataset_partitions",
    "require_dask",
    "local_client",
]

#: Rows a partition holds at most when it joins consecutive row groups of one file (a larger row
#: group is a partition of its own): what one task reads, times the columns it needs.
DEFAULT_PARTITION_ROWS = 1 << 20
#: Jets (or events) in the cut buckets the driver receives at most before it refines buckets.
DEFAULT_MAX_CANDIDATES = 2_000_000
#: Event ids that two partitions may share at most (their jets are joined on the driver).
DEFAULT_MAX_SHARED_EVENTS = 1_000_000
#: The dijet-mass binning of :meth:`sophon.analysis.DatasetAnalysis.event_scan` (GeV).
DIJET_MASS_BINNING = MassBinning(bins=100, low=0.0, high=5000.0)
N_BUCKETS = 1 << BUCKET_BITS
_LOW_MASK = N_BUCKETS - 1
_TARGET_TOLERANCE = 1 - 1e-12  # the in-memory search's tolerance for rounding in the sums
_JET_P4 = ("jet_pt", "jet_eta", "jet_phi", "jet_energy")
Reference = Literal["all", "QCD"]
JetChoice = Literal["all", "leading"]


# ---------------------------------------------------------------------------------------------
# Dask, lazily


def require_dask(purpose: str = "the Dask scan (sophon.dask_scan)", *,
                 distributed: bool = False):
    """The ``dask`` module (and check that ``distributed`` is installed too with
    ``distributed=True``); :class:`~sophon.extras.MissingExtraError` naming the ``dask`` extra
    and its pip command when one is missing."""
    require_all("dask", purpose, ("dask", "distributed") if distributed else ("dask",))
    import dask

    return dask


def local_client(workers: int | None = None, *, threads_per_worker: int = 1,
                 memory_limit: str | int | None = "auto", processes: bool = True, **options):
    """A ``distributed.Client`` on a new ``LocalCluster`` of this machine: ``workers`` processes
    (default: one per core) of ``threads_per_worker`` threads, each allowed ``memory_limit``
    (bytes or text such as ``"400MB"``; "auto": the machine's memory shared out); logs below
    errors silenced (``silence_logs`` in ``options`` to change it). Close it
    with ``client.close(); client.cluster.close()``."""
    require_dask("a local Dask cluster", distributed=True)
    from distributed import Client, LocalCluster

    options.setdefault("silence_logs", logging.ERROR)  # not the nanny's notes on shutting down
    cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1,
                           threads_per_worker=threads_per_worker, processes=processes,
                           memory_limit=memory_limit, dashboard_address=None, **options)
    return Client(cluster)


# ---------------------------------------------------------------------------------------------
# Partitions


@dataclass(frozen=True)
class Partition:
    """One task's rows: ``row_groups`` of parquet ``file``; ``first_row`` is the dataset row of
    its first jet (files in dataset order), ``first_row_in_file`` the same in its file."""

    file: str
    row_groups: tuple[int, ...]
    first_row: int
    first_row_in_file: int
    rows: int

    def __str__(self) -> str:
        groups = (f"row group {self.row_groups[0]}" if len(self.row_groups) == 1 else
                  f"row groups {self.row_groups[0]}-{self.row_groups[-1]}")
        return f"{self.file} ({groups}, rows {self.first_row_in_file}-" \
               f"{self.first_row_in_file + self.rows - 1})"


def dataset_partitions(files: Sequence[str | os.PathLike],
                       rows_per_partition: int = DEFAULT_PARTITION_ROWS) -> list[Partition]:
    """The partitions of a dataset's ``files``: consecutive row groups of one file joined up to
    ``rows_per_partition`` rows (a larger row group alone), empty row groups left out."""
    if rows_per_partition <= 0:
        raise ValueError(f"rows_per_partition must be positive, not {rows_per_partition}")
    partitions, dataset_row = [], 0
    for file in files:
        try:
            metadata = pq.ParquetFile(file).metadata
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{file}: unreadable or truncated parquet file ({error})") from None
        groups: list[int] = []
        rows = file_row = start_in_file = 0
        for index in range(metadata.num_row_groups):
            size = metadata.row_group(index).num_rows
            if size == 0:
                continue
            if groups and rows + size > rows_per_partition:
                partitions.append(Partition(str(file), tuple(groups), dataset_row,
                                            start_in_file, rows))
                dataset_row += rows
                groups, rows, start_in_file = [], 0, file_row
            groups.append(index)
            rows += size
            file_row += size
        if groups:
            partitions.append(Partition(str(file), tuple(groups), dataset_row, start_in_file,
                                        rows))
            dataset_row += rows
    return partitions


# ---------------------------------------------------------------------------------------------
# Reading one partition (on a worker)


class _ScoreColumns:
    """The (N, 188) score matrix as :meth:`Discriminant.components` reads it (``scores[:, i]``
    for the classes it needs): only those columns are read, each a float32 (N,) array, so the
    discriminant's arithmetic is the in-memory one."""

    ndim = 2

    def __init__(self, columns: dict[int, np.ndarray], rows: int):
        self._columns = columns
        self.shape = (rows, N_CLASSES)

    def __getitem__(self, key):
        rows, index = key
        if not (isinstance(rows, slice) and rows == slice(None)):
            raise IndexError("only whole columns of the scores are read")
        return self._columns[int(index)]


@dataclass(frozen=True)
class _Request:
    """What every task of one scan needs to know (shipped once per worker)."""

    discriminant: Discriminant
    level: Literal["jet", "event"]
    jets: JetChoice
    reference: Reference
    binning: MassBinning
    has_weight: bool
    has_process: bool
    has_label: bool

    @property
    def class_indices(self) -> tuple[int, ...]:
        d = self.discriminant
        return tuple(sorted(set(np.flatnonzero(d.numerator_weights).tolist())
                            | {LABELS.index(name) for name in d.denominator_classes}))


@lru_cache(maxsize=64)
def _file_metadata(path: str, modified_ns: int, size: int) -> pq.FileMetaData:
    """A parquet file's footer, parsed once per worker process for each version of the file
    (a dataset's footer lists every row group of ~200 columns: parsing it per task is slow)."""
    return pq.read_metadata(path)


def _parquet_file(path: str) -> pq.ParquetFile:
    status = os.stat(path)
    return pq.ParquetFile(path, metadata=_file_metadata(path, status.st_mtime_ns, status.st_size))


class _Table:
    """A partition's columns, read once, with checked conversions to numpy that name the file,
    the column and the row in the file."""

    def __init__(self, partition: Partition, columns: Iterable[str]):
        self.partition = partition
        names = list(dict.fromkeys(columns))
        try:
            parquet = _parquet_file(partition.file)
            self.table = parquet.read_row_groups(list(partition.row_groups), columns=names)
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{partition}: cannot read column(s) {names[:4]}"
                               f"{' ...' if len(names) > 4 else ''} ({error})") from None
        self.rows = self.table.num_rows

    def _bad(self, name: str, row: int, what: str, rule: str = "") -> DatasetError:
        """The store's message: the file, the column, the value, the row in the file, the
        rule."""
        return DatasetError(f"{self.partition.file}: column {name!r} holds {what} at row "
                            f"{self.partition.first_row_in_file + int(row)}"
                            f"{'; ' + rule if rule else ''}")

    def numbers(self, name: str, dtype) -> np.ndarray:
        column = self.table.column(name)
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise self._bad(name, row, "a missing (null) value")
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise DatasetError(f"{self.partition.file}: column {name!r} is stored as "
                               f"{column.type}; it must hold numbers")
        return np.asarray(column.to_numpy(), dtype=dtype)

    def finite(self, name: str, dtype, low: float = -np.inf, high: float = np.inf,
               rule: str = "") -> np.ndarray:
        values = self.numbers(name, dtype)
        bad = ~np.isfinite(values) | (values < low) | (values > high)
        if bad.any():
            row = int(np.argmax(bad))
            raise self._bad(name, row, f"{values[row]}" if rule else f"{values[row]} (not "
                                                                     "finite)", rule)
        return values

    def scores(self, indices: Sequence[int]) -> _ScoreColumns:
        columns = {index: self.finite(SCORE_COLUMNS[index], np.float32, 0.0, 1.0,
                                      "probabilities must be finite and lie in [0, 1]")
                   for index in indices}
        return _ScoreColumns(columns, self.rows)

    def weights(self, request: _Request) -> np.ndarray:
        if not request.has_weight:
            return np.ones(self.rows, dtype=np.float64)
        return self.finite("weight", np.float64, 0.0, MAX_WEIGHT,
                           f"weights must be finite, non-negative and at most {MAX_WEIGHT:g} "
                           "(expected events)")

    def process_strings(self) -> pa.Array:
        column = self.table.column("process")
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise self._bad("process", row, "a missing (null) value",
                            "every jet needs its physics process")
        column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        return column.cast(pa.string())

    def process_names(self, request: _Request) -> frozenset[str]:
        if not request.has_process:
            return frozenset(("all",))
        return frozenset(pc.unique(self.process_strings()).to_pylist())

    def process_codes(self, request: _Request, names: Sequence[str]) -> np.ndarray:
        if not request.has_process:
            return np.zeros(self.rows, dtype=np.int32)
        codes = pc.index_in(self.process_strings(), value_set=pa.array(list(names), pa.string()))
        if codes.null_count:  # a process not seen by the bucket pass: the file changed meanwhile
            row = int(np.argmax(codes.is_null().to_numpy(zero_copy_only=False)))
            raise self._bad("process", row, "a process the first pass did not see",
                            "did the file change during the scan?")
        return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int32)


def _columns(request: _Request, *, fill: bool) -> list[str]:
    names = [SCORE_COLUMNS[i] for i in request.class_indices]
    names += ["weight"] if request.has_weight else []
    names += ["process"] if request.has_process else []
    if request.level == "event":
        names += ["event_id", "jet_rank"] + (list(_JET_P4) if fill else [])
    else:
        names += ["jet_rank"] if request.jets == "leading" else []
        names += ["jet_label"] if request.reference == "QCD" and request.has_label else []
        names += ["jet_sdmass"] if fill else []
    return names


@dataclass
class _Items:
    """The scan's items (jets or events) of one partition: ``values`` (n,) the discriminant
    (float32 for jets, float64 for events), ``weights`` (n,) float64 expected events,
    ``order`` (n,) int64 the dataset row (jets) or the event id (events), which breaks ties as
    in memory, ``reference`` kind -> (n,) bool (None: every item), ``codes`` (n,) int32 process
    codes and ``mass_index`` (n,) int32 mass bins (fill pass only)."""

    values: np.ndarray
    weights: np.ndarray
    order: np.ndarray
    reference: dict[str, np.ndarray | None]
    codes: np.ndarray | None = None
    mass_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, rows: np.ndarray) -> _Items:
        return _Items(self.values[rows], self.weights[rows], self.order[rows],
                      {kind: None if m is None else m[rows] for kind, m in self.reference.items()},
                      None if self.codes is None else self.codes[rows],
                      None if self.mass_index is None else self.mass_index[rows])

    @staticmethod
    def concatenate(parts: Sequence[_Items]) -> _Items:
        parts = [p for p in parts if p is not None]
        first = parts[0]
        kinds = first.reference.keys()

        def join(arrays):
            return np.concatenate(arrays)

        return _Items(join([p.values for p in parts]), join([p.weights for p in parts]),
                      join([p.order for p in parts]),
                      {kind: None if first.reference[kind] is None else
                       join([p.reference[kind] for p in parts]) for kind in kinds},
                      None if first.codes is None else join([p.codes for p in parts]),
                      None if first.mass_index is None else join([p.mass_index for p in parts]))


_QCD_CLASSES = class_mask("QCD")


def _jet_items(partition: Partition, request: _Request, names: Sequence[str] | None,
               ) -> tuple[_Items, frozenset[str]]:
    """A partition's jets: log-odds as in :meth:`DatasetAnalysis.log_odds`; with ``names``
    (the fill pass) also process codes and mass bins."""
    table = _Table(partition, _columns(request, fill=names is not None))
    values = request.discriminant.log_odds(table.scores(request.class_indices))
    weights = table.weights(request)
    rows = np.arange(table.rows, dtype=np.int64)
    reference: dict[str, np.ndarray | None] = {"all": None}
    processes = table.process_names(request)
    if request.reference == "QCD":
        if request.has_process:
            reference["process"] = np.asarray(
                pc.equal(table.process_strings(), "QCD").to_numpy(zero_copy_only=False))
        if request.has_label:
            labels = table.numbers("jet_label", np.int64)
            bad = (labels < -1) | (labels >= N_CLASSES)
            if bad.any():
                raise table._bad("jet_label", int(np.argmax(bad)), f"{labels[np.argmax(bad)]}",
                                 f"class indices run from 0 to {N_CLASSES - 1} (-1: none)")
            reference["label"] = (labels >= 0) & _QCD_CLASSES[np.clip(labels, 0, None)]
    codes = mass_index = None
    if names is not None:
        codes = table.process_codes(request, names)
        mass_index = request.binning.index(table.finite("jet_sdmass", np.float32))
    items = _Items(values, weights, partition.first_row + rows, reference, codes, mass_index)
    if request.jets == "leading":
        items = items.subset(np.flatnonzero(table.numbers("jet_rank", np.int64) == 0))
    return items, processes


@dataclass
class _EventRecords:
    """Partial events of one partition whose ids other partitions share, to be joined on the
    driver: per record the ``event_id``, the dataset row of its first jet (``first_row``) with
    that jet's ``weight`` and ``process``, the sum of D over its leading jets (``d_sum``), and
    the dataset row (-1: none) and four-momentum (pt, eta, phi, energy: (n, 4) float64, GeV)
    of its last jet of rank 0 and of rank 1."""

    event_id: np.ndarray
    first_row: np.ndarray
    weight: np.ndarray
    process: np.ndarray
    d_sum: np.ndarray
    rank0_row: np.ndarray
    rank0_p4: np.ndarray
    rank1_row: np.ndarray
    rank1_p4: np.ndarray

    def __len__(self) -> int:
        return len(self.event_id)

    @staticmethod
    def empty() -> _EventRecords:
        integers, numbers = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return _EventRecords(integers, integers, numbers, np.zeros(0, object), numbers, integers,
                             np.zeros((0, 4)), integers, np.zeros((0, 4)))

    @staticmethod
    def concatenate(parts: Sequence[_EventRecords]) -> _EventRecords:
        names = _EventRecords.__dataclass_fields__
        return _EventRecords(**{name: np.concatenate([getattr(p, name) for p in parts])
                                for name in names})


def _in_intervals(ids: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """(n,) bool: ``ids`` inside one of the sorted, disjoint closed ``intervals`` (k, 2)."""
    if len(intervals) == 0:
        return np.zeros(len(ids), dtype=bool)
    position = np.searchsorted(intervals[:, 0], ids, side="right") - 1
    return (position >= 0) & (ids <= intervals[np.maximum(position, 0), 1])


def _dijet_mass(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The mass (GeV) of the sum of two jets' four-momenta (n, 4) (pt, eta, phi, energy), as
    :attr:`DatasetAnalysis.events` computes it (vector, clipped at 0)."""
    import vector

    def jets(p4):
        return vector.array({name: p4[:, i] for i, name in
                             enumerate(("pt", "eta", "phi", "energy"))})

    if len(first) == 0:
        return np.zeros(0)
    return np.maximum((jets(first) + jets(second)).mass, 0.0)


def _event_items(partition: Partition, request: _Request, names: Sequence[str] | None,
                 shared: np.ndarray) -> tuple[_Items | None, _EventRecords, frozenset[str]]:
    """A partition's events as :attr:`DatasetAnalysis.events` builds them: the events whose ids
    no other partition holds (complete here), and the partial records of those in ``shared``
    (intervals of event ids). ``names`` (the fill pass): with codes and dijet-mass bins."""
    fill = names is not None
    table = _Table(partition, _columns(request, fill=True))
    d = request.discriminant.evaluate(table.scores(request.class_indices))
    weights = table.weights(request)
    event_id = table.numbers("event_id", np.int64)
    rank = table.numbers("jet_rank", np.int64)
    ids, inverse = np.unique(event_id, return_inverse=True)
    inverse = inverse.astype(np.int64)
    n_events = len(ids)
    rows = np.arange(table.rows, dtype=np.int64)
    first = np.zeros(n_events, dtype=np.int64)
    first[inverse[::-1]] = rows[::-1]  # each event's first jet
    leading = rank < 2
    d_sum = np.bincount(inverse[leading], weights=d[leading].astype(np.float64),
                        minlength=n_events)
    chosen = []
    for position in (0, 1):  # each event's (last) jet of rank 0 and of rank 1, -1: none
        jet_of_event = np.full(n_events, -1, dtype=np.int64)
        at = np.flatnonzero(rank == position)
        jet_of_event[inverse[at]] = at
        chosen.append(jet_of_event)
    # as in memory: pt must be finite (the store validates it), eta, phi and energy are used as
    # they are (a NaN gives a NaN dijet mass, the overflow bin)
    p4 = np.column_stack([table.finite(name, np.float64) if name == "jet_pt" else
                          table.numbers(name, np.float64) for name in _JET_P4])
    processes = table.process_names(request)
    boundary = _in_intervals(ids, shared)
    picked = np.flatnonzero(boundary)
    # the process of each shared event's first jet, as text (only those: few)
    strings = (np.asarray(table.process_strings().take(pa.array(first[picked])).to_pylist(),
                          dtype=object) if request.has_process
               else np.full(len(picked), "all", dtype=object))

    def p4_of(jet_rows):
        out = np.full((len(jet_rows), 4), np.nan)
        present = jet_rows >= 0
        out[present] = p4[jet_rows[present]]
        return out

    records = _EventRecords(
        event_id=ids[picked], first_row=partition.first_row + first[picked],
        weight=weights[first[picked]], process=strings, d_sum=d_sum[picked],
        rank0_row=np.where(chosen[0][picked] >= 0, partition.first_row + chosen[0][picked], -1),
        rank0_p4=p4_of(chosen[0][picked]),
        rank1_row=np.where(chosen[1][picked] >= 0, partition.first_row + chosen[1][picked], -1),
        rank1_p4=p4_of(chosen[1][picked]))
    local = np.flatnonzero(~boundary)
    if not len(local):
        return None, records, processes
    items = _Items(d_sum[local], weights[first[local]], ids[local], {"all": None})
    if fill:
        codes = table.process_codes(request, names)
        items.codes = codes[first[local]]
        mass = np.full(len(local), np.nan)
        j1, j2 = chosen[0][local], chosen[1][local]
        both = (j1 >= 0) & (j2 >= 0)
        mass[both] = _dijet_mass(p4[j1[both]], p4[j2[both]])
        items.mass_index = request.binning.index(mass)
    return items, records, processes


def _joined_events(records: _EventRecords, names: Sequence[str],
                   binning: MassBinning) -> _Items | None:
    """The shared events, their partial records joined as the in-memory event table joins jets
    by ``event_id``: the first jet's weight and process, D summed, the last rank-0 and rank-1
    jets' dijet mass."""
    if not len(records):
        return None
    ids, inverse = np.unique(records.event_id, return_inverse=True)
    n_events = len(ids)
    by_first = np.lexsort((records.first_row, inverse))
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[by_first]) != 0])
    first = by_first[starts]
    d_sum = np.bincount(inverse, weights=records.d_sum, minlength=n_events)
    chosen = []
    for rows, p4 in ((records.rank0_row, records.rank0_p4), (records.rank1_row, records.rank1_p4)):
        by_row = np.lexsort((rows, inverse))
        last = by_row[np.r_[starts[1:] - 1, len(by_row) - 1]]
        chosen.append((rows[last] >= 0, p4[last]))
    both = chosen[0][0] & chosen[1][0]
    mass = np.full(n_events, np.nan)
    mass[both] = _dijet_mass(chosen[0][1][both], chosen[1][1][both])
    lookup = {name: code for code, name in enumerate(names)}
    codes = np.array([lookup[name] for name in records.process[first]], dtype=np.int32)
    return _Items(d_sum, records.weight[first], ids, {"all": None}, codes, binning.index(mass))


# ---------------------------------------------------------------------------------------------
# The passes (on workers) and their merges


@dataclass
class _BucketSums:
    """The bucket pass of some partitions: per reference kind the weight in each of the
    N_BUCKETS buckets and the total; ``counts`` the items per bucket; process names;
    ``records`` the shared events' partial records (events only); ``rows`` jets read."""

    weight: dict[str, np.ndarray]
    total: dict[str, float]
    counts: np.ndarray
    processes: frozenset[str]
    records: _EventRecords | None
    rows: int


def _bucket_sums(items: _Items | None, processes: frozenset[str], records, rows: int,
                 kinds: Sequence[str]) -> _BucketSums:
    if items is None or not len(items):
        return _BucketSums({k: np.zeros(N_BUCKETS) for k in kinds}, {k: 0.0 for k in kinds},
                           np.zeros(N_BUCKETS, np.int64), processes, records, rows)
    buckets = order_keys(items.values) >> BUCKET_BITS
    weight, total = {}, {}
    for kind in kinds:
        members = items.reference.get(kind)
        if kind != "all" and members is None:
            continue
        b, w = (buckets, items.weights) if members is None else \
            (buckets[members], items.weights[members])
        weight[kind] = np.bincount(b, weights=w, minlength=N_BUCKETS)
        total[kind] = float(w.sum())
    counts = np.bincount(buckets, minlength=N_BUCKETS).astype(np.int64)
    return _BucketSums(weight, total, counts, processes, records, rows)


def _merge_bucket_sums(parts: Sequence[_BucketSums]) -> _BucketSums:
    kinds = set.intersection(*(set(p.weight) for p in parts))
    records = [p.records for p in parts if p.records is not None]
    weight = {}
    for kind in kinds:
        weight[kind] = parts[0].weight[kind].copy()
        for part in parts[1:]:
            weight[kind] += part.weight[kind]
    counts = parts[0].counts.copy()
    for part in parts[1:]:
        counts += part.counts
    total = {kind: float(np.sum([p.total[kind] for p in parts])) for kind in kinds}
    return _BucketSums(weight, total, counts, frozenset().union(*(p.processes for p in parts)),
                       _EventRecords.concatenate(records) if records else None,
                       sum(p.rows for p in parts))


def _reference_kinds(request: _Request) -> tuple[str, ...]:
    return ("all",) if request.reference == "all" else ("process", "label")


def _bucket_pass(partition: Partition, request: _Request, shared: np.ndarray) -> _BucketSums:
    if request.level == "event":
        items, records, processes = _event_items(partition, request, None, shared)
        return _bucket_sums(items, processes, records, partition.rows, ("all",))
    items, processes = _jet_items(partition, request, None)
    return _bucket_sums(items, processes, None, partition.rows, _reference_kinds(request))


@dataclass
class _LowSums:
    """The refinement pass: (buckets, N_BUCKETS) reference weight per low 16 bits of the key
    inside each refined bucket."""

    weight: np.ndarray


def _low_sums(items: _Items | None, kind: str, buckets: np.ndarray) -> _LowSums:
    weight = np.zeros((len(buckets), N_BUCKETS))
    if items is None or not len(items):
        return _LowSums(weight)
    members = items.reference.get(kind)
    values, weights = (items.values, items.weights) if members is None else \
        (items.values[members], items.weights[members])
    keys = order_keys(values)
    high = keys >> BUCKET_BITS
    for index, bucket in enumerate(buckets):
        inside = high == bucket
        weight[index] = np.bincount(keys[inside] & _LOW_MASK, weights=weights[inside],
                                    minlength=N_BUCKETS)
    return _LowSums(weight)


def _merge_low_sums(parts: Sequence[_LowSums]) -> _LowSums:
    weight = parts[0].weight.copy()
    for part in parts[1:]:
        weight += part.weight
    return _LowSums(weight)


def _refine_pass(partition: Partition, request: _Request, shared: np.ndarray, kind: str,
                 buckets: np.ndarray) -> _LowSums:
    if request.level == "event":
        items = _event_items(partition, request, None, shared)[0]
    else:
        items = _jet_items(partition, request, None)[0]
    return _low_sums(items, kind, buckets)


@dataclass(frozen=True)
class _Plan:
    """What the fill pass needs: ``bucket_bounds`` (int64, increasing) the lowest order key that
    passes each level still decided by its bucket ((cut bucket + 1) << 16); ``thresholds``
    (float32, increasing) the levels already decided exactly; ``candidate_buckets`` (sorted)
    the cut buckets whose items go to the driver; process ``names``; the reference ``kind``."""

    n_levels: int
    bucket_bounds: np.ndarray
    thresholds: np.ndarray
    candidate_buckets: np.ndarray
    names: tuple[str, ...]
    kind: str


@dataclass
class _Filled:
    """The fill pass of some partitions: per number of thresholds passed (levels + 1), process
    and mass bin, the sums of weights and of squared weights; ``counts`` (levels + 1, processes)
    items; ``largest`` (levels + 1,) the largest weight; ``reference_weight`` (levels + 1,) the
    reference weight; ``candidates`` the items in the cut buckets (None: none)."""

    sum_w: np.ndarray
    sum_w2: np.ndarray
    counts: np.ndarray
    largest: np.ndarray
    reference_weight: np.ndarray
    candidates: _Items | None


def _cube(items: _Items, passed: np.ndarray, n_levels: int, n_processes: int, n_bins: int,
          kind: str) -> _Filled:
    """Histograms of ``items`` by thresholds passed, as :meth:`EfficiencyScan.from_thresholds`
    fills them."""
    passed = passed.astype(np.int64)
    flat = (passed * n_processes + items.codes) * n_bins + items.mass_index
    size = (n_levels + 1) * n_processes * n_bins
    shape = (n_levels + 1, n_processes, n_bins)
    weights = items.weights
    sum_w = np.bincount(flat, weights=weights, minlength=size).reshape(shape)
    sum_w2 = np.bincount(flat, weights=weights * weights, minlength=size).reshape(shape)
    counts = np.bincount(passed * n_processes + items.codes,
                         minlength=(n_levels + 1) * n_processes).reshape(shape[:2])
    largest = np.zeros(n_levels + 1)
    np.maximum.at(largest, passed, weights)
    members = items.reference.get(kind)
    reference_weight = np.bincount(passed if members is None else passed[members],
                                   weights=weights if members is None else weights[members],
                                   minlength=n_levels + 1)
    return _Filled(sum_w, sum_w2, counts.astype(np.int64), largest, reference_weight, None)


def _fill(items: _Items | None, plan: _Plan, n_processes: int, n_bins: int) -> _Filled:
    empty = _cube(_Items(np.zeros(0, np.float32), np.zeros(0), np.zeros(0, np.int64),
                         {plan.kind: None if plan.kind == "all" else np.zeros(0, bool)},
                         np.zeros(0, np.int32), np.zeros(0, np.int32)),
                  np.zeros(0, np.int64), plan.n_levels, n_processes, n_bins, plan.kind)
    if items is None or not len(items):
        return empty
    keys = order_keys(items.values)
    buckets = keys >> BUCKET_BITS
    is_candidate = np.zeros(len(items), dtype=bool)
    if len(plan.candidate_buckets):
        position = np.searchsorted(plan.candidate_buckets, buckets)
        is_candidate = plan.candidate_buckets[np.minimum(position, len(plan.candidate_buckets)
                                                         - 1)] == buckets
    rest = items.subset(np.flatnonzero(~is_candidate))
    passed = (np.searchsorted(plan.bucket_bounds, keys[~is_candidate].astype(np.int64),
                              side="right")
              + np.searchsorted(plan.thresholds, rest.values, side="right"))
    filled = _cube(rest, passed, plan.n_levels, n_processes, n_bins, plan.kind)
    if is_candidate.any():
        filled.candidates = items.subset(np.flatnonzero(is_candidate))
    return filled


def _merge_filled(parts: Sequence[_Filled]) -> _Filled:
    first = parts[0]
    merged = _Filled(first.sum_w.copy(), first.sum_w2.copy(), first.counts.copy(),
                     first.largest.copy(), first.reference_weight.copy(), None)
    for part in parts[1:]:
        merged.sum_w += part.sum_w
        merged.sum_w2 += part.sum_w2
        merged.counts += part.counts
        np.maximum(merged.largest, part.largest, out=merged.largest)
        merged.reference_weight += part.reference_weight
    candidates = [p.candidates for p in parts if p.candidates is not None]
    merged.candidates = _Items.concatenate(candidates) if candidates else None
    return merged


def _fill_pass(partition: Partition, request: _Request, shared: np.ndarray,
               plan: _Plan) -> _Filled:
    if request.level == "event":
        items = _event_items(partition, request, plan.names, shared)[0]
    else:
        items = _jet_items(partition, request, plan.names)[0]
        if plan.kind != "all":
            items.reference = {plan.kind: items.reference[plan.kind]}
    return _fill(items, plan, len(plan.names), request.binning.bins + 2)


# ---------------------------------------------------------------------------------------------
# The driver's side: thresholds from the merged sums


def _weight_above(bucket_weight: np.ndarray) -> np.ndarray:
    """Weight strictly above each bucket (scanning from the highest bucket down)."""
    return np.concatenate([np.cumsum(bucket_weight[::-1])[::-1][1:], [0.0]])


def _cut_buckets(bucket_weight: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each level's cut bucket: the highest one where the weight at or above it still reaches
    the target (as :func:`sophon.spectrum.thresholds_for_efficiencies`)."""
    at_or_above = _weight_above(bucket_weight) + bucket_weight
    cut = np.searchsorted(-at_or_above, -targets, side="right") - 1
    return np.clip(cut, 0, len(bucket_weight) - 1)


def _search_candidates(candidates: _Items | None, kind: str, cut_buckets: np.ndarray,
                       above: np.ndarray, targets: np.ndarray, total: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (float32) and decision margins (fractions of ``total``) of the levels whose
    cut buckets' reference items are ``candidates``: the in-memory search, over the same items
    in the same order (highest key first, ties by descending dataset row or event id)."""
    result = np.full(len(targets), np.inf, dtype=np.float32)
    margins = np.full(len(targets), np.nan)
    if candidates is None or not len(targets):
        return result, margins
    members = candidates.reference.get(kind)
    values = candidates.values if members is None else candidates.values[members]
    weights = candidates.weights if members is None else candidates.weights[members]
    order_ids = candidates.order if members is None else candidates.order[members]
    values32 = np.asarray(values, dtype=np.float32)
    keys = order_keys(values32)
    buckets = keys >> BUCKET_BITS
    inside = np.isin(buckets, cut_buckets)
    values32, weights, keys, buckets, order_ids = (a[inside] for a in
                                                   (values32, weights, keys, buckets, order_ids))
    if not len(values32):
        return result, margins
    order = np.lexsort((order_ids, keys))[::-1]
    positions, found, reached = cut_positions(buckets[order], cut_buckets, weights[order],
                                              above[cut_buckets], targets)
    result[found] = values32[order[positions[found]]]
    without = reached - weights[order[positions]]  # the weight above the cut's own jet
    if total > 0:
        margins[found] = (np.minimum(reached - targets, targets - without) / total)[found]
    return result, margins


def _exact_in_bucket(low_weight: np.ndarray, bucket: int, above: float, targets: np.ndarray,
                     total: float) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (float32) and margins of levels cut inside ``bucket`` from its per-key
    reference weight ``low_weight`` (N_BUCKETS,): the highest key where the weight at or above
    it reaches the target (the lowest key holding weight when rounding leaves none)."""
    at_or_above = above + np.cumsum(low_weight[::-1])[::-1]
    low = np.searchsorted(-at_or_above, -targets, side="right") - 1
    held = np.flatnonzero(low_weight > 0)
    lowest = int(held[0]) if len(held) else 0
    low = np.where(low < lowest, lowest, low)
    keys = (np.uint32(bucket) << np.uint32(BUCKET_BITS)) | low.astype(np.uint32)
    reached = at_or_above[low]
    without = reached - low_weight[low]
    margins = np.minimum(reached - targets, targets - without) / total if total > 0 else \
        np.full(len(targets), np.nan)
    return key_values(keys), margins


# ---------------------------------------------------------------------------------------------
# The scanner


@dataclass(frozen=True)
class ScanReport:
    """How a scan was computed. ``passes`` over the dataset (2, or 3 with a refinement);
    ``partitions`` tasks per pass; ``jets_read`` rows read per pass; ``candidates`` jets (or
    events) sent
    to the driver; ``refined_levels`` the levels found by refinement; ``shared_events`` events
    joined on the driver; ``decision_margins`` (levels,) how far the accumulated reference
    weight at each threshold was from the target, as a fraction of the reference weight (a
    threshold could change with the order of summation only below about 1e-15);
    ``seconds`` per pass."""

    passes: int
    partitions: int
    jets_read: int
    candidates: int
    refined_levels: tuple[int, ...]
    shared_events: int
    decision_margins: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


class ClusterTimeout(TimeoutError):
    """A pass over the cluster took longer than its scanner's ``timeout``."""


class DaskScanner:
    """Exact efficiency scans of one dataset (a parquet file, or a directory of parts) on a
    Dask cluster; the answers of :class:`~sophon.analysis.DatasetAnalysis` (see the module
    docstring for what is exact and why).

    ``client``: a ``distributed.Client`` (None: dask's current scheduler);
    ``rows_per_partition``: rows one task reads at most (row groups are never split);
    ``max_candidates``: items the driver receives at most before cut buckets are refined;
    ``max_shared_events``: event ids that partitions may share; ``binning``: the jet-mass
    binning (GeV); ``split_every``: results merged per tree node; ``timeout``: seconds one pass
    over the cluster may take with a ``client`` before it is cancelled and a
    :class:`ClusterTimeout` raised (None: no limit). A worker paused for memory (at 80 % of its
    limit, by Dask's default) runs no task until it recovers, so without a limit a pass that
    needs it would wait for good.

    The dataset's files, columns and metadata are checked when it is opened
    (:class:`~sophon.store.JetDataset` without loading a column); values are checked as each
    task reads them (scores in [0, 1], weights finite and non-negative, no missing process),
    each failure a DatasetError naming the file, the column and the row. A dataset that stores
    latents instead of scores is refused (its scores come from a model's head in memory).
    """

    def __init__(self, path: str | os.PathLike, *, client=None,
                 rows_per_partition: int = DEFAULT_PARTITION_ROWS,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES,
                 max_shared_events: int = DEFAULT_MAX_SHARED_EVENTS,
                 binning: MassBinning = DEFAULT_MASS_BINNING, split_every: int = 8,
                 timeout: float | None = None):
        require_dask()
        self.dataset = JetDataset(path, validate=False)  # files, schemas and metadata checked
        self.path = self.dataset.path
        if self.dataset.score_head is not None:
            raise DatasetError(f"{self.path}: stores latents and computes its scores with the "
                               f"head of {self.dataset.score_head}; the Dask scan reads score "
                               "columns (score the jets with `sophon score`, or load the "
                               "dataset in memory)")
        for name in ("jet_sdmass",):
            if not self.dataset.has(name):
                raise DatasetError(f"{self.path}: missing column {name!r}")
        self.client = client
        self.binning = binning
        self.max_candidates = int(max_candidates)
        self.max_shared_events = int(max_shared_events)
        self.split_every = max(2, int(split_every))
        self.timeout = None if timeout is None else float(timeout)
        self.partitions = dataset_partitions(self.dataset.files, rows_per_partition)
        self.n_jets = self.dataset.n_jets
        self.last_report: ScanReport | None = None
        self._shared: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"DaskScanner({str(self.path)!r}, n_jets={self.n_jets}, "
                f"partitions={len(self.partitions)})")

    # --- running on the cluster -----------------------------------------------------------
    def _run(self, task: Callable[..., Any], merge: Callable[[Sequence[Any]], Any],
             *arguments, partitions: Sequence[Partition] | None = None) -> Any:
        """``task(partition, *arguments)`` for every partition, merged by ``merge`` in a tree of
        ``split_every`` per node on the cluster; the root's value."""
        dask = require_dask()
        # traverse=False: the arguments are shipped as they are (once per worker), never
        # unpacked and rebuilt by dask
        shared = [dask.delayed(argument, traverse=False) for argument in arguments]
        level = [dask.delayed(_releasing, pure=False)(task, dask.delayed(partition,
                                                                         traverse=False), *shared)
                 for partition in (self.partitions if partitions is None else partitions)]
        while len(level) > 1:
            level = [dask.delayed(merge, pure=False)(level[i:i + self.split_every])
                     for i in range(0, len(level), self.split_every)]
        if self.client is None:
            return dask.compute(level[0])[0]
        future = self.client.compute(level[0])
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:  # distributed's TimeoutError is the builtin one
            future.cancel()
            raise ClusterTimeout(f"{self.path}: the Dask cluster did not finish a pass over "
                                 f"{len(self.partitions):,} partitions within "
                                 f"{self.timeout:g} s (a worker paused for memory runs no "
                                 "task: see the cluster's dashboard)") from None

    # --- the request ----------------------------------------------------------------------
    def _request(self, discriminant: Discriminant, level: str, jets: str, reference: str,
                 binning: MassBinning) -> _Request:
        if not isinstance(discriminant, Discriminant):
            raise TypeError(f"a scan needs a Discriminant, not {type(discriminant).__name__}")
        has = self.dataset.has
        return _Request(discriminant, level, jets, reference, binning, has("weight"),
                        has("process"), has("jet_label"))

    @staticmethod
    def _efficiencies(efficiencies: Sequence[float]) -> np.ndarray:
        efficiencies = np.asarray(efficiencies, dtype=np.float64)
        if np.any(np.diff(efficiencies) > 0):
            raise ValueError("efficiencies must be in decreasing order")
        return efficiencies

    # --- scans ----------------------------------------------------------------------------
    def jet_scan(self, discriminant: Discriminant, *,
                 efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                 reference: Reference = "all", jets: JetChoice = "all") -> EfficiencyScan:
        """:meth:`sophon.analysis.DatasetAnalysis.jet_scan` on the cluster: jet mSD spectra
        (GeV bins of ``binning``) at each efficiency of ``discriminant``, counted over all jets'
        weight or QCD jets' (``reference``); ``jets="leading"``: each event's leading jet
        only."""
        if jets not in ("all", "leading"):
            raise ValueError(f"jets must be 'all' or 'leading', not {jets!r}")
        if reference not in ("all", "QCD"):
            raise ValueError(f"reference must be 'all' or 'QCD', not {reference!r}")
        if jets == "leading" and not self.dataset.has("jet_rank"):
            raise ValueError(f"{self.path}: the leading-jet spectrum needs 'jet_rank'")
        request = self._request(discriminant, "jet", jets, reference, self.binning)
        return self._scan(request, self._efficiencies(efficiencies), JET_MASS_LABEL)

    def event_scan(self, discriminant: Discriminant, *,
                   efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                   binning: MassBinning = DIJET_MASS_BINNING) -> EfficiencyScan:
        """:meth:`sophon.analysis.DatasetAnalysis.event_scan` on the cluster: dijet-mass
        spectra (GeV) at each event efficiency of the sum of D over the two leading jets."""
        if not (self.dataset.has("event_id") and self.dataset.has("jet_rank")):
            raise ValueError(f"{self.path}: event-level views need 'event_id' and 'jet_rank'")
        for name in _JET_P4:
            if not self.dataset.has(name):
                raise DatasetError(f"{self.path}: missing column {name!r} (the dijet mass "
                                   "needs the jets' pt, eta, phi and energy)")
        request = self._request(discriminant, "event", "all", "all", binning)
        return self._scan(request, self._efficiencies(efficiencies), DIJET_MASS_LABEL)

    def _scan(self, request: _Request, efficiencies: np.ndarray,
              mass_label: str) -> EfficiencyScan:
        seconds: dict[str, float] = {}
        clock = time.perf_counter()
        shared = self.shared_event_ids() if request.level == "event" else np.zeros((0, 2),
                                                                                   np.int64)
        buckets = self._run(_bucket_pass, _merge_bucket_sums, request, shared)
        seconds["buckets"] = time.perf_counter() - clock
        names = tuple(sorted(buckets.processes)) if request.has_process else ("all",)
        kind = self._reference_kind(request, names)
        joined = None
        if request.level == "event" and buckets.records is not None:
            joined = _joined_events(buckets.records, names, request.binning)
        bucket_weight = buckets.weight[kind].copy()
        total = buckets.total[kind]
        counts = buckets.counts.copy()
        if joined is not None:  # the shared events: one more partition, on the driver
            extra = _bucket_sums(joined, frozenset(), None, 0, ("all",))
            bucket_weight += extra.weight["all"]
            total += extra.total["all"]
            counts += extra.counts

        n_levels = len(efficiencies)
        targets = efficiencies * total * _TARGET_TOLERANCE
        above = _weight_above(bucket_weight)
        cut = _cut_buckets(bucket_weight, targets)
        thresholds = np.full(n_levels, np.inf, dtype=np.float32)
        margins = np.full(n_levels, np.nan)
        decided = np.zeros(n_levels, dtype=bool)  # thresholds known before the fill pass
        refined: list[int] = []
        if total <= 0:
            decided[:] = True  # no reference weight: every threshold is +inf, as in memory
        else:
            distinct = np.unique(cut)
            sizes = counts[distinct]
            to_refine: list[int] = []
            for index in np.argsort(-sizes, kind="stable"):
                if sizes.sum() - sizes[to_refine].sum() <= self.max_candidates:
                    break
                to_refine.append(int(index))
            if to_refine:
                clock = time.perf_counter()
                refine_buckets = distinct[to_refine]
                low = self._run(_refine_pass, _merge_low_sums, request, shared, kind,
                                refine_buckets)
                if joined is not None:
                    extra = _low_sums(joined, "all", refine_buckets)
                    low.weight += extra.weight
                seconds["refine"] = time.perf_counter() - clock
                for row, bucket in enumerate(refine_buckets):
                    levels = np.flatnonzero(cut == bucket)
                    thresholds[levels], margins[levels] = _exact_in_bucket(
                        low.weight[row], int(bucket), float(above[bucket]), targets[levels],
                        total)
                    decided[levels] = True
                    refined += levels.tolist()
        undecided = np.flatnonzero(~decided)
        plan = _Plan(n_levels=n_levels,
                     bucket_bounds=(cut[undecided].astype(np.int64) + 1) << BUCKET_BITS,
                     thresholds=np.sort(thresholds[decided]),
                     candidate_buckets=np.unique(cut[undecided]).astype(np.uint32),
                     names=names, kind=kind)
        clock = time.perf_counter()
        filled = self._run(_fill_pass, _merge_filled, request, shared, plan)
        seconds["fill"] = time.perf_counter() - clock
        n_processes, n_bins = len(names), request.binning.bins + 2
        if joined is not None:
            filled = _merge_filled([filled, _fill(joined, plan, n_processes, n_bins)])
        candidates = filled.candidates
        if len(undecided):
            found, found_margins = _search_candidates(candidates, kind, cut[undecided],
                                                      above, targets[undecided], total)
            thresholds[undecided], margins[undecided] = found, found_margins
        if candidates is not None:
            passed = np.searchsorted(thresholds, candidates.values, side="right")
            if kind != "all":
                candidates.reference = {kind: candidates.reference[kind]}
            filled = _merge_filled([filled, _cube(candidates, passed, n_levels, n_processes,
                                                  n_bins, kind)])
        scan = EfficiencyScan(
            efficiencies=efficiencies, thresholds=thresholds, binning=request.binning,
            process_names=names, sum_of_weights=_passing(filled.sum_w),
            sum_of_weights_squared=_passing(filled.sum_w2), jet_counts=_passing(filled.counts),
            max_weight=np.maximum.accumulate(filled.largest[::-1])[::-1][1:],
            achieved_efficiencies=(_passing(filled.reference_weight) / total if total > 0
                                   else np.full(n_levels, np.nan)),
            mass_label=mass_label)
        self.last_report = ScanReport(
            passes=2 + bool(refined), partitions=len(self.partitions), jets_read=buckets.rows,
            candidates=0 if candidates is None else len(candidates),
            refined_levels=tuple(sorted(refined)),
            shared_events=0 if joined is None else len(joined), decision_margins=margins,
            seconds=seconds)
        return scan

    def _reference_kind(self, request: _Request, names: Sequence[str]) -> str:
        """Which jets define the efficiency: all, QCD by process, or QCD by true class (as
        :attr:`DatasetAnalysis.qcd_reference` chooses)."""
        if request.reference == "all":
            return "all"
        if request.has_process and "QCD" in names:
            return "process"
        if request.has_label:
            return "label"
        raise ValueError(f"{self.path}: no 'process' or 'jet_label' column to find QCD jets")

    # --- events shared between partitions --------------------------------------------------
    def shared_event_ids(self) -> np.ndarray:
        """(k, 2) int64 sorted, disjoint closed intervals of event ids that two or more
        partitions' ``event_id`` ranges hold (from the parquet statistics, else read): the
        events joined on the driver. DatasetError when they may hold more than
        ``max_shared_events`` ids."""
        if self._shared is not None:
            return self._shared
        ranges = self._event_id_ranges()
        points = sorted([(low, 1) for low, _ in ranges] + [(high + 1, -1) for _, high in ranges])
        intervals, depth, start = [], 0, None
        for position, step in points:
            before, depth = depth, depth + step
            if before < 2 <= depth:
                start = position
            elif before >= 2 > depth:
                if start is not None and position - 1 >= start:
                    intervals.append((start, position - 1))
        shared = np.array(intervals, dtype=np.int64).reshape(-1, 2)
        width = int((shared[:, 1] - shared[:, 0] + 1).sum()) if len(shared) else 0
        if width > self.max_shared_events:
            widest = shared[int(np.argmax(shared[:, 1] - shared[:, 0]))]
            holders = [str(p) for p, (low, high) in zip(self.partitions, ranges)
                       if low <= widest[1] and high >= widest[0]][:3]
            raise DatasetError(f"{self.path}: the event ids of {' and '.join(holders)} overlap "
                               f"({width:,} event ids shared between partitions, at most "
                               f"{self.max_shared_events:,}): the Dask event scan needs each "
                               "event's jets together in one part (sort the jets by event_id, "
                               "or give each part its own event ids)")
        self._shared = shared
        return shared

    def _event_id_ranges(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int] | None] = []
        for partition in self.partitions:
            metadata = pq.ParquetFile(partition.file).metadata
            column = next(i for i in range(metadata.num_columns)
                          if metadata.schema.column(i).path == "event_id")
            low = high = None
            for group in partition.row_groups:
                statistics = metadata.row_group(group).column(column).statistics
                if statistics is None or not statistics.has_min_max:
                    low = None
                    break
                low = statistics.min if low is None else min(low, statistics.min)
                high = statistics.max if high is None else max(high, statistics.max)
            ranges.append(None if low is None else (int(low), int(high)))
        missing = [p for p, r in zip(self.partitions, ranges) if r is None]
        if missing:
            read = self._run(_event_id_range, _merge_ranges, partitions=missing)
            found = iter(read)
            ranges = [r if r is not None else next(found) for r in ranges]
        return ranges


def _releasing(task: Callable[..., Any], *arguments) -> Any:
    """``task(*arguments)``, then the memory pyarrow's pool keeps of the partition's columns
    handed back to the system: a worker's memory is what the distributed scheduler watches (it
    pauses a worker at 80 % of its limit), and the pool would otherwise hold it."""
    try:
        return task(*arguments)
    finally:
        pa.default_memory_pool().release_unused()


def _event_id_range(partition: Partition) -> list[tuple[int, int]]:
    ids = _Table(partition, ["event_id"]).numbers("event_id", np.int64)
    return [(int(ids.min()), int(ids.max()))]


def _merge_ranges(parts: Sequence[list]) -> list:
    return [r for part in parts for r in part]


def _passing(per_passed_count: np.ndarray) -> np.ndarray:
    """From histograms by number of thresholds passed (k = 0..L) to the nested histograms of
    level l = 0..L-1 (items passing at least l + 1 thresholds), as the in-memory scan sums."""
    return np.cumsum(per_passed_count[::-1], axis=0)[::-1][1:]


# ---------------------------------------------------------------------------------------------
# A sample of whole events (the per-jet views of the app on a cluster,
# sophon.cluster_analysis)

#: splitmix64's increment (2^64 / golden ratio): seeds one apart give unrelated draws.
_SPLITMIX_STEP = 0x9E3779B97F4A7C15
_UINT64_MASK = (1 << 64) - 1


def event_draws(event_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) float64 in [0, 1): one pseudo-random number per event id and ``seed`` (the
    splitmix64 finaliser of the id), the same for every jet of an event, on every worker and in
    every run. An event is drawn with probability p when its number is below p."""
    offset = np.uint64(((int(seed) + 1) * _SPLITMIX_STEP) & _UINT64_MASK)
    mixed = np.asarray(event_ids, dtype=np.int64).astype(np.uint64) + offset  # wraps mod 2^64
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(31)
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # the top 53 bits


def _sample_partition(partition: Partition, fraction: float, seed: int,
                      by_event: bool) -> pa.Table:
    """The rows of ``partition`` whose event is drawn (:func:`event_draws` of ``event_id``, or
    of the dataset row without ``by_event``), every column, read one column at a time so that
    a worker holds one column of the partition besides the drawn rows; weights divided by
    ``fraction`` (a dataset without weights gets weight 1 / fraction)."""
    if by_event:
        ids = _Table(partition, ["event_id"]).numbers("event_id", np.int64)
    else:
        ids = np.arange(partition.first_row, partition.first_row + partition.rows)
    drawn = pa.array(event_draws(ids, seed) < fraction)
    parquet = _parquet_file(partition.file)
    columns = {}
    for name in parquet.schema_arrow.names:
        try:
            column = parquet.read_row_groups(list(partition.row_groups), columns=[name])[name]
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{partition}: cannot read column {name!r} ({error})") from None
        columns[name] = column.filter(drawn)
    if fraction < 1:
        weight = (columns["weight"].cast(pa.float64()) if "weight" in columns else
                  pa.chunked_array([np.ones(int(np.count_nonzero(drawn)))], pa.float64()))
        columns["weight"] = pc.divide(weight, fraction)
    return pa.table(columns)


def _concatenate_tables(parts: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(parts, promote_options="permissive")


def sample_events(scanner: DaskScanner, fraction: float, seed: int = 0) -> pa.Table:
    """Whole events of ``scanner``'s dataset, each drawn with probability ``fraction`` (by
    :func:`event_draws` of its ``event_id`` and ``seed``; a dataset without event ids: each jet
    alone), on the cluster: every column, the rows in dataset order, each weight divided by
    ``fraction`` (a dataset without weights gets the weight 1 / fraction) so that a weighted
    sum over the sample is an unbiased estimate of the whole dataset's. One task per partition
    returns only its drawn rows; the table carries the first file's ``sophon`` metadata."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the sampled fraction must lie in (0, 1], not {fraction}")
    table = scanner._run(_sample_partition, _concatenate_tables, float(fraction), int(seed),
                         scanner.dataset.has("event_id"))
    schema = pq.read_schema(scanner.dataset.files[0])
    return table.replace_schema_metadata(schema.metadata)
