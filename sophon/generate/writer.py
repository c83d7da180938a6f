"""The generator's parquet files: the JetClass-II schema and table assembly of
:mod:`sophon.jetclass` (re-exported here), the SM schema, metadata and atomic writing.

SM files append :data:`SM_FIELDS` (``event_id``, ``jet_rank``,
``process``, ``weight``). Generation settings go into the file's key-value metadata under
``sophon.generate`` (JSON); SM files also carry ``luminosity_fb`` (plain, and as
``{"luminosity_fb": L}`` under ``sophon``, the key :mod:`sophon.store` and scoring read).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sophon import __version__, atomic
from sophon.jetclass import JETCLASS_SCHEMA, build_table

__all__ = ["JETCLASS_SCHEMA", "SM_FIELDS", "SM_SCHEMA", "METADATA_KEY", "build_table",
           "write_table_atomic", "with_metadata", "read_generation_metadata"]

METADATA_KEY = b"sophon.generate"


def _scalar(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


SM_FIELDS = [
    _scalar("event_id", pa.int64()),  # unique within the sample
    _scalar("jet_rank", pa.int8()),  # 0: leading jet of the event, 1: second
    _scalar("process", pa.string()),  # "QCD", "W+jets", ...
    _scalar("weight", pa.float64()),  # expected events at the luminosity (fb^-1) of the file
]
SM_SCHEMA = pa.schema(list(JETCLASS_SCHEMA) + SM_FIELDS)


def with_metadata(table: pa.Table, generation: dict, *, luminosity_fb: float | None = None
                  ) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(generation, sort_keys=True).encode()
    if luminosity_fb is not None:
        metadata[b"luminosity_fb"] = repr(float(luminosity_fb)).encode()
        # The key the scored-dataset store (sophon.store.DatasetMetadata) reads the luminosity from.
        metadata[atomic.DATASET_METADATA_KEY] = json.dumps(
            {"luminosity_fb": float(luminosity_fb), "sophon_version": __version__}).encode()
    return table.replace_schema_metadata(metadata)


def read_generation_metadata(path: str | os.PathLike) -> dict:
    """The ``sophon.generate`` metadata of a generated file."""
    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY.decode()!r} metadata (not a generated file?)")
    return json.loads(metadata[METADATA_KEY])


def write_table_atomic(table: pa.Table, path: str | os.PathLike, *,
                       row_group_size: int = 20_000) -> Path:
    """Write through a temporary file in the target folder, then rename over ``path``."""
    # list items named "item", as in JetClass-II
    return atomic.write_table_atomic(table, path, row_group_size=row_group_size,
                                     use_compliant_nested_type=False)
