"""The JetClass-II parquet schema, table assembly and atomic writing.

:data:`JETCLASS_SCHEMA` lists the columns of the published JetClass-II files in their order and
with their exact types: ``float32``/``int32``/``bool`` scalars and lists, none of them nullable,
list items non-null too. SM files append :data:`SM_FIELDS` (``event_id``, ``jet_rank``,
``process``, ``weight``). Generation settings go into the file's key-value metadata under
``sophon.generate`` (JSON); SM files also carry ``luminosity_fb`` (plain, and as
``{"luminosity_fb": L}`` under ``sophon``, the key :mod:`sophon.store` and scoring read).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon import __version__, atomic

__all__ = ["JETCLASS_SCHEMA", "SM_FIELDS", "SM_SCHEMA", "METADATA_KEY", "build_table",
           "write_table_atomic", "with_metadata", "read_generation_metadata"]

METADATA_KEY = b"sophon.generate"


def _scalar(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


def _listed(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, pa.list_(pa.field("item", kind, nullable=False)), nullable=False)


_F, _I, _B = pa.float32(), pa.int32(), pa.bool_()
_NUMPY = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int32(): np.int32,
          pa.int64(): np.int64, pa.int8(): np.int8, pa.bool_(): np.bool_}

JETCLASS_SCHEMA = pa.schema(
    [_listed(f"part_{n}", _F) for n in ("px", "py", "pz", "energy", "deta", "dphi", "d0val",
                                        "d0err", "dzval", "dzerr")]
    + [_listed("part_charge", _I)]
    + [_listed(f"part_{n}", _B) for n in ("isElectron", "isMuon", "isPhoton", "isChargedHadron",
                                          "isNeutralHadron")]
    + [_scalar(f"jet_{n}", _F) for n in ("pt", "eta", "phi", "energy", "sdmass")]
    + [_scalar("jet_nparticles", _I)]
    + [_scalar(f"jet_tau{k}", _F) for k in range(1, 5)]
    + [_scalar("jet_label", _I)]
    + [_listed(f"genpart_{n}", _F) for n in ("px", "py", "pz", "energy", "jet_deta", "jet_dphi",
                                             "x", "y", "z", "t")]
    + [_listed("genpart_pid", _I)]
    + [_scalar(f"genjet_{n}", _F) for n in ("pt", "eta", "phi", "energy", "sdmass")]
    + [_scalar("genjet_nparticles", _I)]
    + [_listed(f"aux_genpart_{n}", _F) for n in ("pt", "eta", "phi", "mass")]
    + [_listed("aux_genpart_pid", _I)]
    + [_listed(f"aux_genpart_{n}", _B) for n in ("isResX", "isResY", "isResDecayProd",
                                                 "isTauDecayProd", "isQcdParton")]
)

SM_FIELDS = [
    _scalar("event_id", pa.int64()),  # unique within the sample
    _scalar("jet_rank", pa.int8()),  # 0: leading jet of the event, 1: second
    _scalar("process", pa.string()),  # "QCD", "W+jets", ...
    _scalar("weight", pa.float64()),  # expected events at the luminosity (fb^-1) of the file
]
SM_SCHEMA = pa.schema(list(JETCLASS_SCHEMA) + SM_FIELDS)


def build_table(columns: dict, schema: pa.Schema) -> pa.Table:
    """A table of exactly ``schema`` from NumPy columns.

    Scalar columns are 1-d arrays (strings: any sequence); list columns are ``(offsets, values)``
    pairs with ``len(offsets) == n_rows + 1``.
    """
    arrays = []
    for field in schema:
        if field.name not in columns:
            raise KeyError(f"column {field.name!r} is missing")
        value = columns[field.name]
        if pa.types.is_list(field.type):
            offsets, values = value
            item = field.type.value_type
            arrays.append(pa.ListArray.from_arrays(
                pa.array(np.asarray(offsets, dtype=np.int32)),
                pa.array(np.asarray(values, dtype=_NUMPY[item]), type=item),
                type=field.type))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array(list(value) if not isinstance(value, pa.Array) else value,
                                   type=field.type))
        else:
            arrays.append(pa.array(np.asarray(value, dtype=_NUMPY[field.type]),
                                   type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


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
