"""The jet dataset store: one parquet file, or a directory of them, read lazily with polars.

Layout (schema version 1), one row per jet:

===================  ==============================  ==========================================
column               type                            meaning
===================  ==============================  ==========================================
jet_pt, jet_energy   float32                         GeV
jet_eta, jet_phi     float32
jet_sdmass           float32                         soft-drop mass, GeV
jet_nparticles       int32
jet_tau1..jet_tau4   float32                         N-subjettiness
jet_label            int32 (optional)                true JetClass-II class index (-1: unknown)
event_id, jet_rank   int64, int8 (optional)          event number; 0 = leading jet
process              string (optional)               physics process, e.g. "QCD", "ttbar"
weight               float64 (optional)              expected events at the dataset luminosity
score_<label>        float32, 188 columns            class probabilities in JetClass-II order
latent               fixed_size_list<float32>[128]   the class token entering the model head
umap_x, umap_y       float32 (optional)              2-d embedding of ``latent``
===================  ==============================  ==========================================

Dataset metadata sits in each file's parquet key-value metadata under the key ``sophon`` as JSON
(:class:`DatasetMetadata`): luminosity in fb^-1, the model id, the label list, the schema version.
A dataset without a ``weight`` column is unweighted (every jet counts 1).

*Scores from latents.* The 188 probabilities are a fixed function of the latent (the model's head
followed by a softmax), so a compact dataset may store only ``latent`` and name the checkpoint in
its metadata (``extra["score_head"]``: a path relative to the file's folder, which must stay inside
the folder that holds the dataset, e.g. ``../models/model.pt``). The scores are then computed
once, when first asked for, and cached. A file that has score columns uses them. The store does
not import the network: turning latents into scores is a *score-head loader*, a callable from
the checkpoint's path to a function (N, 128) float32 latents -> (N, 188) probabilities. A
dataset uses the one given as ``JetDataset(path, score_head_loader=...)``, else the one
registered with :func:`set_score_head_loader`, else :func:`default_score_head_loader`, which
imports :mod:`sophon.model` (torch) only when a compact dataset's scores are first asked for,
by name through :mod:`importlib`, so that the store sits below the model in the import graph.

*Latent codes.* A compact file may store ``latent`` as fixed_size_list<uint8>[128], codes of a
per-dimension linear quantisation named in its metadata (``extra["latent_codes"]``: ``offset``
and ``step``, 128 floats each): latent = offset + step x code, decoded when read
(:func:`encode_latents` makes them). Every file of a dataset then carries the same quantisation.

*Shipped files.* A file that ``data_manifest.yaml`` lists (the embedded default and its model) is
checked against the manifest's size and sha256 when opened (:func:`sophon.manifest.verify_listed`:
hashed once per process for each path, size and mtime); an altered copy is a DatasetError.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from sophon import __version__ as SOPHON_VERSION
from sophon.atomic import DATASET_METADATA_KEY, write_table_atomic
from sophon.labels import LABELS, N_CLASSES
from sophon.manifest import ManifestError, verify_listed

__all__ = [
    "SCHEMA_VERSION",
    "SCORE_HEAD_KEY",
    "SCORE_COLUMNS",
    "JET_COLUMNS",
    "LATENT_DIM",
    "LATENT_CODES_KEY",
    "encode_latents",
    "decode_latents",
    "DatasetError",
    "DatasetMetadata",
    "read_metadata",
    "restamp_metadata",
    "ScoreHead",
    "ScoreHeadLoader",
    "set_score_head_loader",
    "default_score_head_loader",
    "JetDataset",
    "write_dataset",
    "write_table_atomic",
    "dataset_files",
]

SCHEMA_VERSION = 1
LATENT_DIM = 128
SCORE_PREFIX = "score_"
SCORE_COLUMNS: tuple[str, ...] = tuple(SCORE_PREFIX + label for label in LABELS)
JET_COLUMNS: tuple[str, ...] = (
    "jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_sdmass", "jet_nparticles",
    "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4",
)
METADATA_KEY = DATASET_METADATA_KEY  # b"sophon", shared with every writer (sophon.atomic)
SCORE_HEAD_KEY = "score_head"  # DatasetMetadata.extra: checkpoint whose head gives the scores
LATENT_CODES_KEY = "latent_codes"  # DatasetMetadata.extra: offset and step of uint8 latent codes
# float32 probabilities summed over 188 classes: rounding alone stays well below this.
PROBABILITY_SUM_TOLERANCE = 2e-3
# Largest weight of one jet, in expected events (a yield summed from such weights stays finite).
MAX_WEIGHT = 1e15
# Columns that hold numbers (integers or floats), whatever their width.
NUMERIC_COLUMNS: tuple[str, ...] = (*JET_COLUMNS, "jet_label", "event_id", "jet_rank", "weight",
                                    "umap_x", "umap_y", *SCORE_COLUMNS)


class DatasetError(ValueError):
    """A dataset file or directory is unusable; the message names the file, column or value."""


@dataclass(frozen=True)
class DatasetMetadata:
    """What a dataset says about itself. ``luminosity_fb`` is in fb^-1 (None: unweighted).
    ``sophon_version``: the version of this package that wrote the file (new metadata: this
    one; a file written before versions were recorded reads as "")."""

    luminosity_fb: float | None = None
    model_id: str = ""
    labels: tuple[str, ...] = field(default=LABELS, repr=False)
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)
    sophon_version: str = SOPHON_VERSION

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "labels": list(self.labels)})

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "") -> DatasetMetadata:
        try:
            raw = json.loads(text)
            return cls(luminosity_fb=raw.get("luminosity_fb"), model_id=raw.get("model_id", ""),
                       labels=tuple(raw.get("labels", LABELS)),
                       schema_version=int(raw.get("schema_version", SCHEMA_VERSION)),
                       extra=dict(raw.get("extra", {})),
                       sophon_version=_version_text(raw.get("sophon_version", "")))
        except (ValueError, TypeError, AttributeError) as error:
            raise DatasetError(f"{source}: unreadable 'sophon' metadata ({error})") from None


def _version_text(value) -> str:
    if not isinstance(value, str) or len(value) > 100:
        raise TypeError(f"'sophon_version' is {str(value)[:60]!r}, not a version")
    return value


def read_metadata(schema: pa.Schema, *, source: str = "") -> DatasetMetadata | None:
    """The :class:`DatasetMetadata` stored in ``schema``'s key-value metadata under
    :data:`~sophon.atomic.DATASET_METADATA_KEY`, or None when there is none; DatasetError when
    it is unreadable."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        return DatasetMetadata.from_json(raw, source=source)
    except (OverflowError, RecursionError, MemoryError) as error:
        raise DatasetError(f"{source}: unreadable 'sophon' metadata ({type(error).__name__})") \
            from None


def restamp_metadata(table: pa.Table, *, source: str = "") -> pa.Table:
    """``table`` with its ``sophon`` metadata naming this package's version as the writer (for a
    dataset file rewritten in place, e.g. by ``sophon embed``); unchanged if it has none."""
    metadata = read_metadata(table.schema, source=source)
    if metadata is None:
        return table
    stamped = replace(metadata, sophon_version=SOPHON_VERSION).to_json()
    return table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: stamped})


#: latents (N, 128) float32 -> probabilities (N, 188) float32
ScoreHead = Callable[[np.ndarray], np.ndarray]
#: a checkpoint's path -> its :data:`ScoreHead`
ScoreHeadLoader = Callable[[Path], ScoreHead]
_SCORE_HEAD_LOADER: ScoreHeadLoader | None = None


def set_score_head_loader(loader: ScoreHeadLoader | None) -> ScoreHeadLoader | None:
    """Register the process-wide score-head loader (None: back to the default); returns the one
    it replaces."""
    global _SCORE_HEAD_LOADER
    previous, _SCORE_HEAD_LOADER = _SCORE_HEAD_LOADER, loader
    return previous


def default_score_head_loader(path: Path) -> ScoreHead:
    """The head of the Sophon checkpoint at ``path`` (:func:`sophon.model.load_checkpoint` and
    :func:`sophon.model.head_probabilities`), imported when first needed."""
    model_module = importlib.import_module("sophon.model")  # torch: only for compact datasets
    model = model_module.load_checkpoint(path)
    if model.config.num_classes != N_CLASSES or model.config.embed_dim != LATENT_DIM:
        raise DatasetError(f"{path}: the model gives {model.config.num_classes} "
                           f"classes from {model.config.embed_dim}-d latents; expected "
                           f"{N_CLASSES} from {LATENT_DIM}")
    return lambda latents: model_module.head_probabilities(model, latents)


def _fixed_size_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_dataset(path: str | os.PathLike, jets: Mapping[str, np.ndarray], *,
                  scores: np.ndarray, latents: np.ndarray | None = None,
                  metadata: DatasetMetadata = DatasetMetadata()) -> Path:
    """Write one dataset file atomically.

    ``jets``: 1-D columns of length N (jet kinematics, ``process``, ``weight``, ...);
    ``scores``: (N, 188) probabilities in JetClass-II order; ``latents``: (N, 128) or None.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != N_CLASSES:
        raise DatasetError(f"{path}: scores must have shape (N, {N_CLASSES}), got {scores.shape}")
    n_jets = scores.shape[0]
    columns: dict[str, pa.Array] = {}
    for name, values in jets.items():
        array = pa.array(np.asarray(values)) if not isinstance(values, pa.Array) else values
        if len(array) != n_jets:
            raise DatasetError(f"{path}: column {name!r} has {len(array)} rows, scores have {n_jets}")
        columns[name] = array
    for index, name in enumerate(SCORE_COLUMNS):
        columns[name] = pa.array(scores[:, index])
    if latents is not None:
        if latents.shape != (n_jets, LATENT_DIM):
            raise DatasetError(f"{path}: latents must have shape ({n_jets}, {LATENT_DIM}), "
                               f"got {latents.shape}")
        columns["latent"] = _fixed_size_list(latents)
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: metadata.to_json()})
    return write_table_atomic(table, path)


def encode_latents(latents: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Per-dimension 8-bit codes of ``latents`` (N, 128): (codes uint8 (N, 128), the metadata
    entry ``{"offset": [...], "step": [...]}``). Each dimension's range [min, max] is cut into
    255 equal steps, so the error is at most half a step."""
    latents = np.asarray(latents, dtype=np.float32)
    low, high = latents.min(axis=0), latents.max(axis=0)
    step = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint((latents - low) / step), 0, 255).astype(np.uint8)
    return codes, {"offset": low.astype(float).tolist(), "step": step.astype(float).tolist()}


def decode_latents(codes: np.ndarray, quantisation: Mapping[str, Sequence[float]]) -> np.ndarray:
    """(N, 128) float32 latents from uint8 ``codes`` and the metadata entry of
    :func:`encode_latents`."""
    offset = np.asarray(quantisation["offset"], dtype=np.float32)
    step = np.asarray(quantisation["step"], dtype=np.float32)
    return offset + step * np.asarray(codes, dtype=np.float32)


def _latent_codes(file: Path, metadata: DatasetMetadata) -> dict | None:
    """The file's latent quantisation, checked: 128 finite offsets and positive steps."""
    entry = metadata.extra.get(LATENT_CODES_KEY)
    if entry is None:
        return None
    try:
        offset = np.asarray(entry["offset"], dtype=np.float64)
        step = np.asarray(entry["step"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{file}: metadata '{LATENT_CODES_KEY}' must hold 'offset' and 'step' "
                           f"lists of {LATENT_DIM} numbers") from None
    if (offset.shape != (LATENT_DIM,) or step.shape != (LATENT_DIM,)
            or not np.isfinite(offset).all() or not (np.isfinite(step) & (step > 0)).all()):
        raise DatasetError(f"{file}: metadata '{LATENT_CODES_KEY}' must hold {LATENT_DIM} finite "
                           "offsets and positive steps")
    return {"offset": offset.tolist(), "step": step.tolist()}


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The parquet files of a dataset: the file itself, or a directory's ``*.parquet`` sorted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise DatasetError(f"{path}: directory holds no .parquet files")
        return files
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file or directory")
    return [path]


def _read_schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (OSError, pa.ArrowException) as error:
        raise DatasetError(f"{file}: unreadable or truncated parquet file ({error})") from None


def _check_score_columns(file: Path, names: Sequence[str]) -> None:
    found = [n for n in names if n.startswith(SCORE_PREFIX)]
    expected = set(SCORE_COLUMNS)
    missing = [n for n in SCORE_COLUMNS if n not in set(found)]
    extra = [n for n in found if n not in expected]
    if extra:
        raise DatasetError(f"{file}: unknown score column(s) {extra[:5]} "
                           f"({len(found)} score columns, expected {N_CLASSES})")
    if missing:
        raise DatasetError(f"{file}: missing score column(s) {missing[:5]}"
                           f"{' and more' if len(missing) > 5 else ''} "
                           f"({len(found)} score columns, expected {N_CLASSES})")
    for position, (got, want) in enumerate(zip(found, SCORE_COLUMNS)):
        if got != want:
            raise DatasetError(f"{file}: score columns out of JetClass-II order: position "
                               f"{position} holds {got!r}, expected {want!r}")


def _file_metadata(file: Path, schema: pa.Schema) -> DatasetMetadata:
    metadata = read_metadata(schema, source=str(file))
    if metadata is None:
        raise DatasetError(f"{file}: the file has no 'sophon' metadata (the parquet key-value "
                           "entry with the class order, luminosity and model id); write it with "
                           "sophon.store.write_dataset")
    luminosity = metadata.luminosity_fb
    if luminosity is not None and (isinstance(luminosity, bool)
                                   or not isinstance(luminosity, (int, float))
                                   or not 0 < luminosity < float("inf")):
        raise DatasetError(f"{file}: metadata 'luminosity_fb' is {_shown(luminosity)}; expected a "
                           "positive number of fb^-1, or null for an unweighted dataset")
    if not isinstance(metadata.model_id, str) or len(metadata.model_id) > 500:
        raise DatasetError(f"{file}: metadata 'model_id' is {_shown(metadata.model_id)}; expected "
                           "text of at most 500 characters")
    if len(metadata.labels) != N_CLASSES:
        raise DatasetError(f"{file}: metadata lists {len(metadata.labels)} classes, "
                           f"expected {N_CLASSES}")
    if tuple(metadata.labels) != LABELS:
        position = next(i for i, (a, b) in enumerate(zip(metadata.labels, LABELS)) if a != b)
        raise DatasetError(f"{file}: metadata label order differs from JetClass-II at index "
                           f"{position}: {metadata.labels[position]!r} != {LABELS[position]!r}")
    if metadata.schema_version > SCHEMA_VERSION:
        raise DatasetError(f"{file}: schema version {metadata.schema_version} is newer than this "
                           f"reader's {SCHEMA_VERSION}")
    return metadata


def _reason(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception, on one line and at most ``limit`` characters."""
    text = " ".join(str(error).split()) or "no message"
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(error).__name__}: {text}"


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _check_column_types(file: Path, schema: pa.Schema, coded_latents: bool) -> None:
    """Numeric columns hold numbers; ``latent`` is a fixed-size list of 128 floats per jet (of
    uint8 codes when the metadata names latent codes)."""
    for name in NUMERIC_COLUMNS:
        index = schema.get_field_index(name)
        if index < 0:
            continue
        kind = schema.field(index).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DatasetError(f"{file}: column {name!r} is stored as {kind}; it must hold "
                               "numbers (integers or floats)")
    index = schema.get_field_index("jet_label")
    if index >= 0 and not pa.types.is_integer(schema.field(index).type):
        raise DatasetError(f"{file}: column 'jet_label' is stored as {schema.field(index).type}; "
                           f"it must hold integer class indices 0 to {N_CLASSES - 1}")
    index = schema.get_field_index("process")
    if index >= 0:
        kind = schema.field(index).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_string_view(kind)):
            raise DatasetError(f"{file}: column 'process' is stored as {kind}; it must hold text "
                               "(the physics process, e.g. 'QCD')")
    index = schema.get_field_index("latent")
    if index < 0:
        return
    kind = schema.field(index).type
    expected = (f"fixed_size_list<uint8>[{LATENT_DIM}] (latent codes)" if coded_latents
                else f"fixed_size_list<float32>[{LATENT_DIM}]")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        import pyarrow.compute as pc

        lengths = pc.list_value_length(pq.read_table(file, columns=["latent"])["latent"])
        wrong = pc.fill_null(pc.not_equal(lengths, LATENT_DIM), True).to_numpy(
            zero_copy_only=False)
        detail = ""
        if wrong.any():
            row = int(np.argmax(wrong))
            detail = f"; row {row} holds {lengths[row].as_py()} numbers"
        raise DatasetError(f"{file}: column 'latent' is a variable-length list ({kind}){detail}; "
                           f"expected {expected}, {LATENT_DIM} numbers per jet")
    if not pa.types.is_fixed_size_list(kind):
        raise DatasetError(f"{file}: column 'latent' is stored as {kind}; expected {expected}")
    if kind.list_size != LATENT_DIM:
        raise DatasetError(f"{file}: column 'latent' holds {kind.list_size} numbers per jet; "
                           f"expected {LATENT_DIM} ({expected})")
    value = kind.value_type
    if not (pa.types.is_uint8(value) if coded_latents else pa.types.is_floating(value)):
        raise DatasetError(f"{file}: column 'latent' holds {value} values; expected {expected}")


def _score_head(file: Path, names: Sequence[str], metadata: DatasetMetadata) -> Path | None:
    """The checkpoint named by ``file``'s metadata for scores from latents, or None when the file
    has score columns (or names no head)."""
    relative = metadata.extra.get(SCORE_HEAD_KEY)
    if not relative or any(n.startswith(SCORE_PREFIX) for n in names):
        return None
    if "latent" not in names:
        raise DatasetError(f"{file}: metadata asks for scores from latents, but there is no "
                           "'latent' column")
    folder = file.parent.resolve()
    head = (folder / str(relative)).resolve()
    if Path(str(relative)).is_absolute() or folder.parent not in head.parents:
        raise DatasetError(f"{file}: score head {relative!r} lies outside {folder.parent}")
    if not head.is_file():
        raise DatasetError(f"{file}: score head {relative!r} (the model whose head computes the "
                           f"scores) is missing: expected {head}")
    return head


def _verify_shipped(file: Path) -> None:
    """A file that data_manifest.yaml lists must match its size and sha256."""
    try:
        verify_listed(file)
    except ManifestError as error:
        detail = str(error).split(": ", 1)[-1]  # the manifest's message names the relative path
        raise DatasetError(f"{file}: {detail}") from None


class JetDataset:
    """A scored jet dataset, loaded column by column on demand and cached.

    Arrays are numpy views over one contiguous copy per column; ``scores`` is (N, 188) float32 in
    Fortran order so that a class-set sum reads only the columns it needs.
    """

    def __init__(self, path: str | os.PathLike, *, validate: bool = True,
                 score_head_loader: ScoreHeadLoader | None = None):
        self.path = Path(path)
        self._score_head_loader = score_head_loader
        self.files = dataset_files(self.path)
        for file in self.files:
            _verify_shipped(file)
        schemas = [_read_schema(f) for f in self.files]
        self.columns: tuple[str, ...] = tuple(schemas[0].names)
        metadatas = [_file_metadata(f, s) for f, s in zip(self.files, schemas)]
        self.metadata = metadatas[0]
        #: the checkpoint whose head turns latents into scores, when the files store no scores
        self.score_head: Path | None = None
        for file, schema, metadata in zip(self.files, schemas, metadatas):
            if tuple(schema.names) != self.columns:
                raise DatasetError(f"{file}: columns differ from {self.files[0].name}")
            head = _score_head(file, schema.names, metadata)
            if head is None:
                _check_score_columns(file, schema.names)
            elif self.score_head not in (None, head):
                raise DatasetError(f"{file}: scores come from {head}, not {self.score_head} as in "
                                   f"{self.files[0].name}")
            if head is not None and self.score_head is None:
                _verify_shipped(head)
            self.score_head = head
            if _latent_codes(file, metadata) != _latent_codes(self.files[0], self.metadata):
                raise DatasetError(f"{file}: latent codes differ from those of "
                                   f"{self.files[0].name}")
            if metadata.luminosity_fb != self.metadata.luminosity_fb:
                raise DatasetError(f"{file}: luminosity {metadata.luminosity_fb} fb^-1 differs "
                                   f"from {self.metadata.luminosity_fb} in {self.files[0].name}")
        self._lazy = pl.scan_parquet([str(f) for f in self.files])
        self.n_jets = self._count_rows()
        if self.n_jets == 0:
            raise DatasetError(f"{self.path}: the dataset holds no jets")
        self._cache: dict[str, np.ndarray] = {}
        if validate:
            self.validate()

    def _count_rows(self) -> int:
        total = 0
        for file in self.files:
            try:
                total += pq.ParquetFile(file).metadata.num_rows
            except (OSError, pa.ArrowException) as error:
                raise DatasetError(f"{file}: unreadable or truncated parquet file ({error})") from None
        return total

    def __len__(self) -> int:
        return self.n_jets

    def __repr__(self) -> str:
        return f"JetDataset({str(self.path)!r}, n_jets={self.n_jets})"

    def has(self, column: str) -> bool:
        return column in self.columns

    def _collect(self, names: Sequence[str]) -> pl.DataFrame:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DatasetError(f"{self.path}: missing column(s) {missing}")
        try:
            return self._lazy.select(list(names)).collect()
        except (pl.exceptions.PolarsError, OSError) as error:
            raise DatasetError(f"{self.path}: cannot read column(s) {list(names)[:4]}: {error}") \
                from None

    def column(self, name: str) -> np.ndarray:
        """One column as a read-only numpy array (cached). Strings come back as an object array."""
        if name not in self._cache:
            series = self._collect([name]).to_series()
            array = series.to_numpy()
            array.flags.writeable = False
            self._cache[name] = array
        return self._cache[name]

    def frame(self, names: Sequence[str], rows: np.ndarray | None = None) -> pl.DataFrame:
        """A polars DataFrame of ``names`` (for tables and downloads), optionally only ``rows``."""
        frame = self._collect(names)
        return frame if rows is None else frame[np.asarray(rows)]

    def row(self, names: Sequence[str], index: int) -> pl.DataFrame:
        """One jet's ``names`` as a one-row DataFrame, reading only that row's row group (cheap
        for constituent list columns, which are large)."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DatasetError(f"{self.path}: missing column(s) {missing}")
        if not 0 <= index < self.n_jets:
            raise DatasetError(f"{self.path}: no jet {index} (the dataset has {self.n_jets})")
        return self._lazy.slice(int(index), 1).select(list(names)).collect()

    @cached_property
    def scores(self) -> np.ndarray:
        """(N, 188) float32, Fortran order: column ``i`` is the probability of ``LABELS[i]``.

        Read from the score columns, or computed from the latents through :attr:`score_head`."""
        if self.score_head is not None:
            matrix = np.asfortranarray(self._head_scores())
        else:
            matrix = np.asfortranarray(self._collect(SCORE_COLUMNS).to_numpy(), dtype=np.float32)
        matrix.flags.writeable = False
        return matrix

    def _head_scores(self) -> np.ndarray:
        latents = self.latents
        finite = np.isfinite(latents).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise DatasetError(f"{self.path}: column 'latent' holds a non-finite value at row {row} "
                               "(the scores are computed from it)")
        loader = self._score_head_loader or _SCORE_HEAD_LOADER or default_score_head_loader
        try:
            head = loader(self.score_head)
        except DatasetError:
            raise
        except Exception as error:  # torch.load alone raises a dozen types on a bad file
            raise DatasetError(f"{self.path}: metadata '{SCORE_HEAD_KEY}' names "
                               f"{self.score_head}, which is not a loadable Sophon checkpoint "
                               f"({_reason(error)})") from None
        try:
            scores = np.asarray(head(latents), dtype=np.float32)
        except Exception as error:
            raise DatasetError(f"{self.path}: the score head {self.score_head} failed on the "
                               f"latents ({_reason(error)})") from None
        if scores.shape != (self.n_jets, N_CLASSES):
            raise DatasetError(f"{self.path}: the score head {self.score_head} gave scores of "
                               f"shape {scores.shape}; expected ({self.n_jets}, {N_CLASSES})")
        return scores

    @cached_property
    def latents(self) -> np.ndarray:
        """(N, 128) float32 latent features."""
        if "latent" not in self.columns:
            raise DatasetError(f"{self.path}: dataset has no 'latent' column")
        stored = self._collect(["latent"]).to_series().to_numpy()
        codes = _latent_codes(self.files[0], self.metadata)
        if codes is not None:
            if stored.dtype != np.uint8:
                raise DatasetError(f"{self.path}: metadata names latent codes, but column "
                                   f"'latent' holds {stored.dtype}, not uint8")
            stored = decode_latents(stored, codes)
        matrix = np.ascontiguousarray(stored, dtype=np.float32)
        matrix.flags.writeable = False
        return matrix

    @cached_property
    def weights(self) -> np.ndarray:
        """Per-jet weight in expected events at the dataset luminosity (ones if unweighted)."""
        if "weight" not in self.columns:
            return np.ones(self.n_jets, dtype=np.float64)
        return self.column("weight").astype(np.float64, copy=False)

    @cached_property
    def process_names(self) -> tuple[str, ...]:
        """Distinct ``process`` values, sorted; ``("all",)`` when the dataset has none."""
        if "process" not in self.columns:
            return ("all",)
        return tuple(sorted(self._collect(["process"]).to_series().unique().to_list()))

    @cached_property
    def process_codes(self) -> np.ndarray:
        """Per-jet index into :attr:`process_names` (int32)."""
        if "process" not in self.columns:
            return np.zeros(self.n_jets, dtype=np.int32)
        lookup = pl.DataFrame({"process": list(self.process_names),
                               "code": np.arange(len(self.process_names), dtype=np.int32)})
        codes = self._collect(["process"]).join(lookup, on="process", how="left",
                                                maintain_order="left")["code"].to_numpy()
        return np.ascontiguousarray(codes, dtype=np.int32)

    def _locate(self, row: int) -> tuple[Path, int]:
        """The file that holds the dataset's ``row``, and the row's index in that file."""
        for file in self.files:
            rows = pq.ParquetFile(file).metadata.num_rows
            if row < rows:
                return file, row
            row -= rows
        return self.path, row

    def _bad_value(self, name: str, row: int, value, rule: str = "") -> DatasetError:
        file, local = self._locate(row)
        return DatasetError(f"{file}: column {name!r} holds {value} at row {local}"
                            f"{'; ' + rule if rule else ''}")

    def validate(self) -> None:
        """Check types and values at load, each failure a DatasetError naming the file, the
        column, the row (in that file) and the value: numeric columns hold numbers and ``latent``
        128 floats per jet; scores are finite, in [0, 1] and sum to 1; weights are finite, >= 0
        and at most :data:`MAX_WEIGHT` expected events; ``process`` is text with no nulls;
        ``jet_label`` holds integer class indices 0 to 187 (or -1: no truth class); masses and pT
        are finite."""
        coded = self.metadata.extra.get(LATENT_CODES_KEY) is not None
        for file in self.files:
            _check_column_types(file, _read_schema(file), coded)
        scores = self.scores
        finite_rows = np.isfinite(scores).all(axis=1)
        if not finite_rows.all():
            row = int(np.argmin(finite_rows))
            index = int(np.argmin(np.isfinite(scores[row])))
            raise self._bad_value(SCORE_COLUMNS[index], row, f"{scores[row, index]} (not finite)")
        low, high = scores.min(axis=0), scores.max(axis=0)
        outside = (low < 0) | (high > 1)
        if outside.any():
            index = int(np.argmax(outside))
            column = scores[:, index]
            row = int(np.argmax((column < 0) | (column > 1)))
            raise self._bad_value(SCORE_COLUMNS[index], row, column[row],
                                  "probabilities must lie in [0, 1]")
        sums = scores.sum(axis=1, dtype=np.float64)
        bad = np.abs(sums - 1.0) > PROBABILITY_SUM_TOLERANCE
        if bad.any():
            file, row = self._locate(int(np.argmax(bad)))
            raise DatasetError(f"{file}: the 188 score columns sum to "
                               f"{sums[int(np.argmax(bad))]:.6f} at row {row}; probabilities "
                               f"must sum to 1 within {PROBABILITY_SUM_TOLERANCE}")
        if "weight" in self.columns:
            weight_series = self._collect(["weight"]).to_series()
            if weight_series.null_count():
                file, row = self._locate(int(weight_series.is_null().arg_max()))
                raise DatasetError(f"{file}: column 'weight' is missing (null) at row {row}")
            weights = self.weights
            bad = ~np.isfinite(weights) | (weights < 0) | (weights > MAX_WEIGHT)
            if bad.any():
                row = int(np.argmax(bad))
                raise self._bad_value("weight", row, float(weights[row]),
                                      f"weights must be finite, non-negative and at most "
                                      f"{MAX_WEIGHT:g} (expected events)")
        if "process" in self.columns:
            process = self._collect(["process"]).to_series()
            if process.null_count():
                file, row = self._locate(int(process.is_null().arg_max()))
                raise DatasetError(f"{file}: column 'process' is missing (null) at row {row}; "
                                   "every jet needs its physics process")
        if "jet_label" in self.columns:
            label = self._collect(["jet_label"]).to_series()
            if label.null_count():
                file, row = self._locate(int(label.is_null().arg_max()))
                raise DatasetError(f"{file}: column 'jet_label' is missing (null) at row {row}")
            values = label.to_numpy()
            bad = (values < -1) | (values >= N_CLASSES)
            if bad.any():
                row = int(np.argmax(bad))
                raise self._bad_value("jet_label", row, int(values[row]),
                                      f"class indices run from 0 to {N_CLASSES - 1} "
                                      "(-1: no truth class)")
        for name in ("jet_sdmass", "jet_pt"):
            if name not in self.columns:
                raise DatasetError(f"{self.path}: missing column {name!r}")
            values = self.column(name)
            if not np.isfinite(values).all():
                row = int(np.argmin(np.isfinite(values)))
                raise self._bad_value(name, row, values[row])
