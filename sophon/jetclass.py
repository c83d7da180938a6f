"""The JetClass-II parquet schema and table assembly, in the core package (no generator needed).

:data:`JETCLASS_SCHEMA` lists the columns of the published JetClass-II files in their order and
with their exact types: ``float32``/``int32``/``bool`` scalars and lists, none of them nullable,
list items (named ``item``) non-null too. Units: GeV for momenta, energies and masses, mm for
impact parameters and vertex positions, radians for angles.

Readers of other formats (:mod:`sophon.delphes`) and the generator
(:mod:`sophon.generate.writer`) write through these.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["JETCLASS_SCHEMA", "build_table"]


def _scalar(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


def _listed(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, pa.list_(pa.field("item", kind, nullable=False)), nullable=False)


_FLOAT, _INT, _BOOL = pa.float32(), pa.int32(), pa.bool_()
_NUMPY_TYPES = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int32(): np.int32,
                pa.int64(): np.int64, pa.int8(): np.int8, pa.bool_(): np.bool_}

JETCLASS_SCHEMA = pa.schema(
    [_listed(f"part_{n}", _FLOAT) for n in ("px", "py", "pz", "energy", "deta", "dphi", "d0val",
                                            "d0err", "dzval", "dzerr")]
    + [_listed("part_charge", _INT)]
    + [_listed(f"part_{n}", _BOOL) for n in ("isElectron", "isMuon", "isPhoton",
                                             "isChargedHadron", "isNeutralHadron")]
    + [_scalar(f"jet_{n}", _FLOAT) for n in ("pt", "eta", "phi", "energy", "sdmass")]
    + [_scalar("jet_nparticles", _INT)]
    + [_scalar(f"jet_tau{k}", _FLOAT) for k in range(1, 5)]
    + [_scalar("jet_label", _INT)]
    + [_listed(f"genpart_{n}", _FLOAT) for n in ("px", "py", "pz", "energy", "jet_deta",
                                                 "jet_dphi", "x", "y", "z", "t")]
    + [_listed("genpart_pid", _INT)]
    + [_scalar(f"genjet_{n}", _FLOAT) for n in ("pt", "eta", "phi", "energy", "sdmass")]
    + [_scalar("genjet_nparticles", _INT)]
    + [_listed(f"aux_genpart_{n}", _FLOAT) for n in ("pt", "eta", "phi", "mass")]
    + [_listed("aux_genpart_pid", _INT)]
    + [_listed(f"aux_genpart_{n}", _BOOL) for n in ("isResX", "isResY", "isResDecayProd",
                                                    "isTauDecayProd", "isQcdParton")]
)


def build_table(columns: dict, schema: pa.Schema) -> pa.Table:
    """A table of exactly ``schema`` from NumPy columns.

    Scalar columns are 1-d arrays (strings: any sequence); list columns are ``(offsets, values)``
    pairs with ``len(offsets) == n_rows + 1``. A column of ``schema`` missing from ``columns``
    raises ``KeyError`` naming it.
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
                pa.array(np.asarray(values, dtype=_NUMPY_TYPES[item]), type=item),
                type=field.type))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array(list(value) if not isinstance(value, pa.Array) else value,
                                   type=field.type))
        else:
            arrays.append(pa.array(np.asarray(value, dtype=_NUMPY_TYPES[field.type]),
                                   type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
