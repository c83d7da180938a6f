"""JetClass-II columns -> the three inputs of the Sophon model, exactly as the published contract says.

Per particle (units: GeV for momenta and energies, mm for impact parameters)::

    part_{px,py,pz,energy}_scale = part_{px,py,pz,energy} / jet_pt * 500   (jet pT scaled to 500 GeV)
    part_pt_scale_log = log(hypot(px_scale, py_scale))     part_e_scale_log = log(energy_scale)
    part_logptrel     = log(hypot(px, py) / jet_pt)         part_logerel     = log(energy / jet_energy)
    part_deltaR       = hypot(deta, dphi)                   part_d0, part_dz = tanh(d0val), tanh(dzval)

and each channel becomes ``clip((x - subtract) * multiply, clip_min, clip_max)`` with the constants in
:data:`PF_FEATURES` / :data:`PF_VECTORS`. A jet keeps its first 128 particles (JetClass-II stores them
pT-ordered); shorter jets are zero-padded, and padded slots carry mask 0.

Everything is vectorised over the flat particle arrays (pyarrow list offsets or awkward layouts):
there is no Python loop over jets or particles. :func:`ragged_inputs` keeps the particles flat
(cheap, for bucketing by multiplicity); :func:`build_inputs` returns the padded ``(N, C, 128)``
arrays of the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "MAX_PARTICLES",
    "PF_FEATURES",
    "PF_VECTORS",
    "PARTICLE_COLUMNS",
    "JET_INPUT_COLUMNS",
    "REQUIRED_COLUMNS",
    "MissingColumnError",
    "JetInputs",
    "RaggedInputs",
    "ragged_inputs",
    "build_inputs",
]

MAX_PARTICLES = 128
# The jet pT every jet's four-momenta are scaled to, GeV.
SCALED_JET_PT = 500.0


@dataclass(frozen=True)
class Channel:
    """One input channel: ``clip((variable - subtract) * multiply, clip_min, clip_max)``."""

    variable: str
    subtract: float
    multiply: float
    clip_min: float
    clip_max: float


_UNBOUNDED = 1.0e8
# The published contract (sophon_model_contract.yaml, ``inputs``), in channel order.
PF_FEATURES: tuple[Channel, ...] = (
    Channel("part_pt_scale_log", 1.7, 0.7, -5, 5),
    Channel("part_e_scale_log", 2.0, 0.7, -5, 5),
    Channel("part_logptrel", -4.7, 0.7, -5, 5),
    Channel("part_logerel", -4.7, 0.7, -5, 5),
    Channel("part_deltaR", 0.2, 4.0, -5, 5),
    Channel("part_charge", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_isChargedHadron", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_isNeutralHadron", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_isPhoton", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_isElectron", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_isMuon", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_d0", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_d0err", 0, 1, 0, 1),
    Channel("part_dz", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_dzerr", 0, 1, 0, 1),
    Channel("part_deta", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_dphi", 0, 1, -_UNBOUNDED, _UNBOUNDED),
)
PF_VECTORS: tuple[Channel, ...] = (
    Channel("part_px_scale", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_py_scale", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_pz_scale", 0, 1, -_UNBOUNDED, _UNBOUNDED),
    Channel("part_energy_scale", 0, 1, -_UNBOUNDED, _UNBOUNDED),
)

# Columns read from a JetClass-II file to build the inputs.
PARTICLE_COLUMNS: tuple[str, ...] = (
    "part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi",
    "part_d0val", "part_d0err", "part_dzval", "part_dzerr", "part_charge",
    "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon",
)
JET_INPUT_COLUMNS: tuple[str, ...] = ("jet_pt", "jet_energy")
REQUIRED_COLUMNS: tuple[str, ...] = PARTICLE_COLUMNS + JET_INPUT_COLUMNS


class MissingColumnError(ValueError):
    """A JetClass-II column the model needs is absent; the message names the column and source."""


@dataclass(frozen=True)
class JetInputs:
    """The padded model inputs of N jets, float32, particle axis of length L (128 by contract).

    ``pf_features`` (N, 17, L), ``pf_vectors`` (N, 4, L) in GeV after scaling to jet pT = 500 GeV,
    ``pf_mask`` (N, 1, L) with 1 for a real particle, ``multiplicity`` (N,) real particles per jet
    (at most L).
    """

    pf_features: np.ndarray
    pf_vectors: np.ndarray
    pf_mask: np.ndarray
    multiplicity: np.ndarray

    def __len__(self) -> int:
        return len(self.multiplicity)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The three arrays under their published ONNX input names."""
        return {"pf_features": self.pf_features, "pf_vectors": self.pf_vectors, "pf_mask": self.pf_mask}


@dataclass(frozen=True)
class RaggedInputs:
    """Per-particle inputs of N jets kept flat: row ``offsets[i]:offsets[i+1]`` belongs to jet i.

    ``features`` (total, 17) and ``vectors`` (total, 4) float32, already transformed and clipped;
    jets are already truncated to ``max_particles``.
    """

    features: np.ndarray
    vectors: np.ndarray
    offsets: np.ndarray
    max_particles: int = MAX_PARTICLES

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def multiplicity(self) -> np.ndarray:
        """(N,) int64 number of real particles per jet after truncation."""
        return np.diff(self.offsets)

    def padded(self, jets: np.ndarray | None = None, length: int | None = None) -> JetInputs:
        """Zero-padded inputs of ``jets`` (indices, default all) with a particle axis of ``length``.

        ``length`` defaults to ``max_particles`` (the contract's 128); a shorter length trims the
        padding of a bucket of low-multiplicity jets and must still hold every selected jet.
        """
        jets = np.arange(len(self)) if jets is None else np.asarray(jets, dtype=np.int64)
        length = self.max_particles if length is None else int(length)
        counts = self.multiplicity[jets]
        if len(counts) and counts.max(initial=0) > length:
            raise ValueError(f"padded length {length} is shorter than a selected jet "
                             f"({int(counts.max())} particles)")
        n_jets = len(jets)
        total = int(counts.sum())
        # Destination (jet, slot) and source row of every selected particle, without a loop.
        local_jet = np.repeat(np.arange(n_jets), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        slot = np.arange(total) - starts
        source = np.repeat(self.offsets[:-1][jets], counts) + slot

        features = np.zeros((n_jets, length, self.features.shape[1]), dtype=np.float32)
        vectors = np.zeros((n_jets, length, self.vectors.shape[1]), dtype=np.float32)
        mask = np.zeros((n_jets, 1, length), dtype=np.float32)
        features[local_jet, slot] = self.features[source]
        vectors[local_jet, slot] = self.vectors[source]
        mask[local_jet, 0, slot] = 1.0
        # Built particle-major for a contiguous scatter, then laid out channel-major as the model
        # expects (N, C, L).
        return JetInputs(
            pf_features=np.ascontiguousarray(features.transpose(0, 2, 1)),
            pf_vectors=np.ascontiguousarray(vectors.transpose(0, 2, 1)),
            pf_mask=mask,
            multiplicity=counts.astype(np.int64),
        )


# ---------------------------------------------------------------------------------------------------
# Column access for pyarrow tables / record batches, awkward arrays and plain mappings.


def _source_label(source_name: str | None) -> str:
    return f"{source_name}: " if source_name else ""


def _column_names(source: Any) -> list[str]:
    if isinstance(source, (pa.Table, pa.RecordBatch)):
        return list(source.schema.names)
    if isinstance(source, Mapping):
        return list(source.keys())
    fields = getattr(source, "fields", None)  # awkward Array of records
    if fields is not None:
        return list(fields)
    raise TypeError(f"cannot read JetClass-II columns from {type(source).__name__}; expected a "
                    "pyarrow Table/RecordBatch, an awkward Array of records or a mapping of columns")


def _list_column(source: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-jet lengths of a list column (pyarrow or awkward)."""
    column = source[name]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, (pa.ListArray, pa.LargeListArray)):
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        # ``flatten`` honours slicing offsets and skips null lists.
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values, lengths.astype(np.int64)
    import awkward as ak

    array = ak.Array(column) if not isinstance(column, ak.Array) else column
    lengths = ak.to_numpy(ak.fill_none(ak.num(array, axis=1), 0)).astype(np.int64)
    values = ak.to_numpy(ak.flatten(array, axis=1))
    return np.asarray(values), lengths


def _jet_column(source: Any, name: str) -> np.ndarray:
    column = source[name]
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        return column.to_numpy(zero_copy_only=False)
    try:
        import awkward as ak

        if isinstance(column, ak.Array):
            return ak.to_numpy(column)
    except ImportError:  # pragma: no cover - awkward is a dependency
        pass
    return np.asarray(column)


def _transform(values: np.ndarray, channel: Channel) -> np.ndarray:
    values = values.astype(np.float32, copy=False)
    if channel.subtract != 0 or channel.multiply != 1:
        values = (values - np.float32(channel.subtract)) * np.float32(channel.multiply)
    return np.clip(values, np.float32(channel.clip_min), np.float32(channel.clip_max))


def ragged_inputs(source: Any, *, max_particles: int = MAX_PARTICLES,
                  source_name: str | None = None) -> RaggedInputs:
    """Flat per-particle model inputs from JetClass-II columns.

    ``source``: a pyarrow Table/RecordBatch, an awkward Array of records, or a mapping from column
    name to pyarrow list arrays / awkward arrays (particle columns) and 1-D arrays (jet columns).
    ``source_name`` (e.g. the file path) prefixes error messages. Raises :class:`MissingColumnError`
    naming the first missing column, and ``ValueError`` if particle columns disagree on a jet's
    multiplicity.
    """
    names = set(_column_names(source))
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise MissingColumnError(f"{_source_label(source_name)}missing column {name!r} "
                                     f"(the Sophon inputs need {', '.join(REQUIRED_COLUMNS)})")

    flat: dict[str, np.ndarray] = {}
    lengths: np.ndarray | None = None
    for name in PARTICLE_COLUMNS:
        values, column_lengths = _list_column(source, name)
        if lengths is None:
            lengths = column_lengths
        elif len(column_lengths) != len(lengths) or not np.array_equal(column_lengths, lengths):
            jet = int(np.argmax(column_lengths != lengths)) if len(column_lengths) == len(lengths) else 0
            raise ValueError(f"{_source_label(source_name)}column {name!r} disagrees with "
                             f"{PARTICLE_COLUMNS[0]!r} on the number of particles (jet {jet})")
        flat[name] = values
    assert lengths is not None
    n_jets = len(lengths)

    # Truncate every jet to its first ``max_particles`` (pT-ordered) particles.
    offsets = np.zeros(n_jets + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    kept_lengths = np.minimum(lengths, max_particles)
    if np.array_equal(kept_lengths, lengths):
        keep = slice(None)
    else:
        slot = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
        keep = slot < max_particles
    kept = {name: values[keep] for name, values in flat.items()}
    kept_offsets = np.zeros(n_jets + 1, dtype=np.int64)
    np.cumsum(kept_lengths, out=kept_offsets[1:])

    jet_pt = np.repeat(_jet_column(source, "jet_pt").astype(np.float32), kept_lengths)
    jet_energy = np.repeat(_jet_column(source, "jet_energy").astype(np.float32), kept_lengths)
    if len(jet_pt) != int(kept_offsets[-1]):
        raise ValueError(f"{_source_label(source_name)}jet columns and particle columns have "
                         "different numbers of jets")

    px, py, pz, energy = (kept[f"part_{c}"].astype(np.float32) for c in ("px", "py", "pz", "energy"))
    with np.errstate(divide="ignore", invalid="ignore"):
        px_scale = px / jet_pt * np.float32(SCALED_JET_PT)
        py_scale = py / jet_pt * np.float32(SCALED_JET_PT)
        pz_scale = pz / jet_pt * np.float32(SCALED_JET_PT)
        energy_scale = energy / jet_pt * np.float32(SCALED_JET_PT)
        variables: dict[str, np.ndarray] = {
            "part_pt_scale_log": np.log(np.hypot(px_scale, py_scale)),
            "part_e_scale_log": np.log(energy_scale),
            "part_logptrel": np.log(np.hypot(px, py) / jet_pt),
            "part_logerel": np.log(energy / jet_energy),
            "part_deltaR": np.hypot(kept["part_deta"].astype(np.float32),
                                    kept["part_dphi"].astype(np.float32)),
            "part_d0": np.tanh(kept["part_d0val"].astype(np.float32)),
            "part_dz": np.tanh(kept["part_dzval"].astype(np.float32)),
            "part_px_scale": px_scale,
            "part_py_scale": py_scale,
            "part_pz_scale": pz_scale,
            "part_energy_scale": energy_scale,
        }
    for name in ("part_charge", "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton",
                 "part_isElectron", "part_isMuon", "part_d0err", "part_dzerr", "part_deta", "part_dphi"):
        variables[name] = kept[name]

    total = int(kept_offsets[-1])

    def particle_major(channels: tuple[Channel, ...]) -> np.ndarray:
        # Filled channel by channel (contiguous rows), then transposed once: writing strided
        # columns of a (particles, channels) array directly is several times slower.
        by_channel = np.empty((len(channels), total), dtype=np.float32)
        for index, channel in enumerate(channels):
            by_channel[index] = _transform(variables[channel.variable], channel)
        return np.ascontiguousarray(by_channel.T)

    return RaggedInputs(features=particle_major(PF_FEATURES), vectors=particle_major(PF_VECTORS),
                        offsets=kept_offsets, max_particles=max_particles)


def build_inputs(source: Any, *, max_particles: int = MAX_PARTICLES,
                 source_name: str | None = None) -> JetInputs:
    """The contract's padded inputs ``(N, 17, 128)``, ``(N, 4, 128)``, ``(N, 1, 128)`` float32,
    plus the per-jet multiplicity, from JetClass-II columns (see :func:`ragged_inputs`)."""
    return ragged_inputs(source, max_particles=max_particles, source_name=source_name).padded()
