"""Delphes ROOT files -> JetClass-II-schema jets, read as the published Sophon analyzer reads them.

The jets of one ``Jet``-class branch of the ``Delphes`` tree (default ``JetPUPPIAK8``; jet radius
R = 1.5 when the branch name contains ``AK15``, else 0.8) become rows of
:data:`DELPHES_SCHEMA`: the columns of :data:`~sophon.jetclass.JETCLASS_SCHEMA` in their
order and types, plus ``event_id`` (the tree entry, plus an offset) and ``jet_rank`` (0 = the
event's highest-pT jet of the branch). Per jet (GeV, radians)::

    jet_pt, jet_eta, jet_phi       PT, Eta, Phi
    jet_energy                     energy of the four-vector (PT, Eta, Phi, Mass)
    jet_sdmass                     mass of SoftDroppedP4[0] (negative when spacelike, as ROOT's M())
    jet_tau1..4                    Tau[0..3]
    jet_nparticles                 constituents kept (below)

Constituents are the jet's ``Constituents`` references (a TRefArray: uproot gives the referenced
objects' ``fUniqueID``), looked up among the event's ``ParticleFlowCandidate`` entries and, for
references found there, among its ``Particle`` (GenParticle) entries. A constituent is dropped
when |pz| > 10000 GeV, |eta| > 5 or pT <= 0, or when its reference resolves to neither branch; the
rest are ordered by decreasing pT. A jet left without any constituent is not written (the model
needs at least one particle per jet, so ``sophon score`` could not score it): the conversion
report counts such jets (:attr:`ConversionReport.jets_without_constituents`), ``sophon convert
delphes`` and ``sophon score`` say how many, and the other jets keep their ``jet_rank`` (so an
event whose leading jet was dropped has no jet of rank 0). Per constituent (GeV, radians, mm)::

    part_px, part_py, part_pz, part_energy   from (PT, Eta, Phi, Mass)
    part_deta                      sign(jet eta) * (eta - jet eta), with sign(0) = -1
    part_dphi                      phi - jet phi wrapped into [-pi, pi) (ROOT's Phi_mpi_pi)
    part_charge                    Charge
    part_isElectron, part_isMuon   |PID| == 11, |PID| == 13
    part_isPhoton                  PID == 22
    part_isChargedHadron           charge != 0 and neither electron nor muon
    part_isNeutralHadron           charge == 0 and not a photon
    part_d0val, part_d0err         D0, ErrorD0 (0 for a GenParticle)
    part_dzval, part_dzerr         DZ minus the first Vertex's Z when DZ != 0 (and the event has
                                   a vertex), else DZ; ErrorDZ (0 for a GenParticle)

The truth columns (``genpart_*``, ``genjet_*``, ``aux_genpart_*``) are left empty (lists) or NaN
(``genjet_pt/eta/phi/energy/sdmass``, with ``genjet_nparticles`` 0), and ``jet_label`` is -1 (no
truth class): a Delphes file holds no JetClass-II truth labelling.

The file is read ``step_events`` events at a time with ``uproot`` (a multi-GB file streams in
bounded memory); everything per chunk is vectorised with awkward and numpy. A missing tree or
branch, or an unreadable file, raises :class:`DelphesError` naming the file and the branch.

Command line::

    sophon convert delphes FILE.root -o OUT.parquet [--jet-branch JetPUPPIAK8] [--process NAME]

``sophon score FILE.root ...`` reads ROOT inputs through the same reader (:class:`DelphesFile`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon import atomic
from sophon.jetclass import JETCLASS_SCHEMA, build_table

__all__ = [
    "DELPHES_TREE",
    "DEFAULT_JET_BRANCH",
    "DEFAULT_STEP_EVENTS",
    "DELPHES_SCHEMA",
    "DelphesError",
    "DelphesFile",
    "ConversionReport",
    "CONSTITUENT_SELECTION",
    "jet_radius",
    "convert_delphes",
    "register_cli",
]

DELPHES_TREE = "Delphes"
DEFAULT_JET_BRANCH = "JetPUPPIAK8"
PF_BRANCH = "ParticleFlowCandidate"
GEN_BRANCH = "Particle"
VERTEX_BRANCH = "Vertex"
# Events read at once: a Delphes event with pileup holds thousands of particles; 1000 events of
# the needed leaves stay far below a gigabyte.
DEFAULT_STEP_EVENTS = 1000

# The analyzer's constituent selection: dropped when |pz| > 10 TeV, |eta| > 5 or pT <= 0.
MAX_ABS_PZ = 10000.0
MAX_ABS_ETA = 5.0
#: What a kept constituent passes, for messages.
CONSTITUENT_SELECTION = f"|pz| <= {MAX_ABS_PZ:g} GeV, |eta| <= {MAX_ABS_ETA:g}, pT > 0"

DELPHES_SCHEMA = pa.schema(list(JETCLASS_SCHEMA) + [
    pa.field("event_id", pa.int64(), nullable=False),  # tree entry + event_id_offset
    pa.field("jet_rank", pa.int8(), nullable=False),  # 0: the event's leading jet of the branch
])

_JET_LEAVES = ("PT", "Eta", "Phi", "Mass", "Tau[5]", "SoftDroppedP4[5]", "Constituents")
_PF_LEAVES = ("fUniqueID", "PT", "Eta", "Phi", "Mass", "Charge", "PID", "D0", "ErrorD0", "DZ",
              "ErrorDZ")
_GEN_LEAVES = ("fUniqueID", "PT", "Eta", "Phi", "Mass", "Charge", "PID")
_TRUTH_LIST_COLUMNS = tuple(f.name for f in JETCLASS_SCHEMA
                            if f.name.startswith(("genpart_", "aux_genpart_")))
_GENJET_FLOAT_COLUMNS = tuple(f"genjet_{n}" for n in ("pt", "eta", "phi", "energy", "sdmass"))


class DelphesError(ValueError):
    """A Delphes file that cannot be read as asked; the message names the file and the branch."""


def jet_radius(jet_branch: str) -> float:
    """The jet radius of a Delphes jet branch, as the analyzer sets it: 1.5 when the name
    contains ``AK15``, else 0.8."""
    return 1.5 if "AK15" in jet_branch else 0.8


def _leaf(branch: str, leaf: str) -> str:
    return f"{branch}/{branch}.{leaf}"


@dataclass
class ConversionReport:
    """What a conversion read: events, jets of the branch (``jets``), constituents kept, the
    constituent references dropped because they resolve to no ``ParticleFlowCandidate`` or
    ``Particle`` entry (``unresolved_references``) or fail the analyzer's selection (|pz| > 10000
    GeV, |eta| > 5, pT <= 0: ``failed_selection``), and the jets not written because none of their
    constituents is left (``jets_without_constituents``)."""

    events: int = 0
    jets: int = 0
    constituents: int = 0
    unresolved_references: int = 0
    failed_selection: int = 0
    jets_without_constituents: int = 0
    output: Path | None = field(default=None)

    @property
    def jets_written(self) -> int:
        """The jets written: those of the branch that kept at least one constituent."""
        return self.jets - self.jets_without_constituents


class DelphesFile:
    """One Delphes ROOT file opened for reading jets of ``jet_branch`` as JetClass-II rows.

    ``event_id`` of a jet is its tree entry plus ``event_id_offset`` (give the files of one sample
    distinct offsets so their events stay distinct in one dataset); ``process``, when given, adds
    a ``process`` column of that name. Opening checks that the tree and every needed branch exist.
    """

    def __init__(self, path: str | os.PathLike, *, jet_branch: str = DEFAULT_JET_BRANCH,
                 step_events: int = DEFAULT_STEP_EVENTS, event_id_offset: int = 0,
                 process: str | None = None):
        uproot = _import_uproot()
        self.path = Path(path)
        self.jet_branch = jet_branch
        self.step_events = int(step_events)
        if self.step_events <= 0:
            raise ValueError(f"step_events must be positive, not {step_events}")
        self.event_id_offset = int(event_id_offset)
        self.process = process
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such input file")
        try:
            self._file = uproot.open(self.path)
        except Exception as error:  # uproot raises many kinds for a damaged or foreign file
            raise DelphesError(f"{self.path}: not a readable ROOT file "
                               f"({type(error).__name__}: {error})") from None
        try:
            self._tree = self._file[DELPHES_TREE]
        except Exception as error:
            contents = [f"{key} ({kind})" for key, kind in
                        self._file.classnames(cycle=False, recursive=False).items()]
            raise DelphesError(f"{self.path}: no readable tree {DELPHES_TREE!r} (the file holds: "
                               f"{', '.join(contents) or 'nothing'}; {type(error).__name__})"
                               ) from None
        if not isinstance(self._tree, uproot.TTree):
            raise DelphesError(f"{self.path}: {DELPHES_TREE!r} is a {self._tree.classname}, not "
                               "the TTree Delphes writes")
        self._keys = set(self._tree.keys())
        self._check_branches()
        self.has_vertex = _leaf(VERTEX_BRANCH, "Z") in self._keys
        self.has_gen = all(_leaf(GEN_BRANCH, leaf) in self._keys for leaf in _GEN_LEAVES)

    # --- description ---------------------------------------------------------------------------
    @property
    def jet_radius(self) -> float:
        return jet_radius(self.jet_branch)

    @property
    def num_events(self) -> int:
        return int(self._tree.num_entries)

    @property
    def num_rows(self) -> int:
        """Jets of the branch in the file: the sum of its per-event counts (read cheaply). The
        jets left without a constituent are among them, and :meth:`iter_tables` drops them, so
        it gives at most this many rows."""
        if not hasattr(self, "_num_rows"):
            counts = self._read([self.jet_branch], 0, self.num_events)[self.jet_branch]
            self._num_rows = int(np.asarray(counts, dtype=np.int64).sum())
        return self._num_rows

    @property
    def schema_arrow(self) -> pa.Schema:
        """The rows' schema: :data:`DELPHES_SCHEMA`, plus ``process`` when one was given."""
        if self.process is None:
            return DELPHES_SCHEMA
        return DELPHES_SCHEMA.append(pa.field("process", pa.string(), nullable=False))

    def jet_branches(self) -> list[str]:
        """The tree's branches of Delphes class ``Jet`` (any of them can be read)."""
        names = []
        for name in self._tree.keys(recursive=False):
            try:
                if self._tree[name].member("fClonesName") == "Jet":
                    names.append(name)
            except Exception:  # a plain branch has no fClonesName
                continue
        return names

    def _check_branches(self) -> None:
        jet_leaves = [self.jet_branch] + [_leaf(self.jet_branch, leaf) for leaf in _JET_LEAVES]
        missing = [name for name in jet_leaves if name not in self._keys]
        if missing:
            available = self.jet_branches()
            raise DelphesError(f"{self.path}: tree {DELPHES_TREE!r} has no branch {missing[0]!r} "
                               f"(jet branch {self.jet_branch!r}; Jet-class branches in the file: "
                               f"{', '.join(available) or 'none'})")
        for leaf in _PF_LEAVES:
            if _leaf(PF_BRANCH, leaf) not in self._keys:
                raise DelphesError(f"{self.path}: tree {DELPHES_TREE!r} has no branch "
                                   f"{_leaf(PF_BRANCH, leaf)!r} (the constituents of "
                                   f"{self.jet_branch!r} are read from {PF_BRANCH!r})")

    # --- reading -------------------------------------------------------------------------------
    def _read(self, names: Sequence[str], start: int, stop: int) -> dict[str, ak.Array]:
        """The branches ``names`` for entries [start, stop), as awkward arrays; a failure names
        the file, the entries and the first branch that cannot be read."""
        try:
            arrays = self._tree.arrays(list(names), entry_start=start, entry_stop=stop,
                                       library="ak", how=dict)
        except Exception as error:
            culprit = names[0]
            for name in names:  # find the branch that fails, to name it
                try:
                    self._tree[name].array(entry_start=start, entry_stop=stop, library="ak")
                except Exception:
                    culprit = name
                    break
            raise DelphesError(f"{self.path}: cannot read branch {culprit!r} in entries {start} to "
                               f"{stop - 1} (damaged file? {type(error).__name__}: "
                               f"{error})") from None
        return arrays

    def iter_tables(self, report: ConversionReport | None = None,
                    progress=None) -> Iterator[pa.Table]:
        """One table of :attr:`schema_arrow` per ``step_events`` events, in entry order, without
        the jets left with no constituent; ``progress(events)`` is called after each chunk, and
        ``report`` accumulates counts."""
        report = ConversionReport() if report is None else report
        jet_names = [_leaf(self.jet_branch, leaf) for leaf in _JET_LEAVES]
        pf_names = [_leaf(PF_BRANCH, leaf) for leaf in _PF_LEAVES]
        vertex_names = [_leaf(VERTEX_BRANCH, "Z")] if self.has_vertex else []
        for start in range(0, self.num_events, self.step_events):
            stop = min(start + self.step_events, self.num_events)
            arrays = self._read(jet_names + pf_names + vertex_names, start, stop)
            table = self._chunk_table(arrays, start, stop, report)
            report.events += stop - start
            if progress is not None:
                progress(stop - start)
            yield table

    def iter_batches(self, batch_size: int = 32_768,
                     columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_size`` jets (only ``columns`` if given), as
        ``pyarrow.parquet.ParquetFile.iter_batches`` gives them: what scoring reads."""
        for table in self.iter_tables():
            if columns is not None:
                table = table.select(list(columns))
            yield from table.to_batches(max_chunksize=batch_size)

    def read_table(self) -> pa.Table:
        """Every jet of the file as one table (small files; large ones: :meth:`iter_tables`)."""
        tables = list(self.iter_tables())
        return pa.concat_tables(tables) if tables else self.schema_arrow.empty_table()

    # --- one chunk -----------------------------------------------------------------------------
    def _chunk_table(self, arrays: dict[str, ak.Array], start: int, stop: int,
                     report: ConversionReport) -> pa.Table:
        jet = {leaf: arrays[_leaf(self.jet_branch, leaf)] for leaf in _JET_LEAVES}
        jets_per_event = ak.to_numpy(ak.num(jet["PT"], axis=1)).astype(np.int64)
        n_jets = int(jets_per_event.sum())
        if n_jets == 0:  # (uproot also lays out an empty range's four-vectors differently)
            return self.schema_arrow.empty_table()
        jet_event = np.repeat(np.arange(stop - start, dtype=np.int64), jets_per_event)

        def per_jet(values: ak.Array) -> np.ndarray:
            return np.asarray(ak.to_numpy(ak.flatten(values, axis=1)))

        jet_pt = per_jet(jet["PT"]).astype(np.float64)
        jet_eta = per_jet(jet["Eta"]).astype(np.float64)
        jet_phi = per_jet(jet["Phi"]).astype(np.float64)
        jet_mass = per_jet(jet["Mass"]).astype(np.float64)
        _, _, _, jet_energy = _four_momentum(jet_pt, jet_eta, jet_phi, jet_mass)
        soft_drop = ak.flatten(jet["SoftDroppedP4[5]"], axis=1)[:, 0]
        sd_energy = ak.to_numpy(soft_drop.fE)
        sd_p2 = (ak.to_numpy(soft_drop.fP.fX) ** 2 + ak.to_numpy(soft_drop.fP.fY) ** 2
                 + ak.to_numpy(soft_drop.fP.fZ) ** 2)
        sd_m2 = sd_energy ** 2 - sd_p2
        sd_mass = np.where(sd_m2 >= 0, np.sqrt(np.abs(sd_m2)), -np.sqrt(np.abs(sd_m2)))
        tau = per_jet(jet["Tau[5]"]).reshape(n_jets, 5)  # Tau[5]: five per jet
        # rank of each jet by decreasing pT inside its event (Delphes already orders them)
        order = ak.argsort(jet["PT"], axis=1, ascending=False, stable=True)
        rank = per_jet(ak.argsort(order, axis=1, stable=True))

        # constituent references, flat, with their jet (index in the chunk) and event
        refs_per_jet = ak.flatten(jet["Constituents"].refs, axis=1)
        refs_count = ak.to_numpy(ak.num(refs_per_jet, axis=1)).astype(np.int64)
        refs = np.asarray(ak.to_numpy(ak.flatten(refs_per_jet, axis=1)), dtype=np.int64)
        ref_jet = np.repeat(np.arange(n_jets, dtype=np.int64), refs_count)
        ref_event = jet_event[ref_jet]
        ref_keys = (ref_event << 32) | (refs & 0xFFFFFFFF)

        pf = {leaf: arrays[_leaf(PF_BRANCH, leaf)] for leaf in _PF_LEAVES}
        pf_row = _lookup(pf["fUniqueID"], ref_keys)
        found_pf = pf_row >= 0
        columns: dict[str, np.ndarray] = {}
        for leaf in ("PT", "Eta", "Phi", "Mass", "Charge", "PID", "D0", "ErrorD0", "DZ", "ErrorDZ"):
            flat = np.asarray(ak.to_numpy(ak.flatten(pf[leaf], axis=1)))
            values = np.zeros(len(refs), dtype=flat.dtype)
            values[found_pf] = flat[pf_row[found_pf]]
            columns[leaf] = values
        found = found_pf.copy()
        if not found.all() and self.has_gen:
            # references to GenParticles (jets clustered from generator particles)
            gen = self._read([_leaf(GEN_BRANCH, leaf) for leaf in _GEN_LEAVES], start, stop)
            gen = {leaf: gen[_leaf(GEN_BRANCH, leaf)] for leaf in _GEN_LEAVES}
            missing = np.flatnonzero(~found)
            gen_row = _lookup(gen["fUniqueID"], ref_keys[missing])
            hit = gen_row >= 0
            for leaf in ("PT", "Eta", "Phi", "Mass", "Charge", "PID"):
                flat = np.asarray(ak.to_numpy(ak.flatten(gen[leaf], axis=1)))
                columns[leaf][missing[hit]] = flat[gen_row[hit]]
            # D0, ErrorD0, DZ, ErrorDZ stay 0 for a GenParticle, as in the analyzer
            found[missing[hit]] = True
        report.unresolved_references += int((~found).sum())

        pt = columns["PT"].astype(np.float64)
        eta = columns["Eta"].astype(np.float64)
        phi = columns["Phi"].astype(np.float64)
        px, py, pz, energy = _four_momentum(pt, eta, phi, columns["Mass"].astype(np.float64))
        selected = found & ~(np.abs(pz) > MAX_ABS_PZ) & ~(np.abs(eta) > MAX_ABS_ETA) & (pt > 0)
        report.failed_selection += int((found & ~selected).sum())
        # kept constituents, grouped by jet, by decreasing pT inside each jet (stable on ties)
        kept = np.flatnonzero(selected)
        kept = kept[np.lexsort((-pt[kept], ref_jet[kept]))]
        kept_jet = ref_jet[kept]
        counts = np.bincount(kept_jet, minlength=n_jets).astype(np.int64)
        offsets = np.zeros(n_jets + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        report.jets += n_jets
        report.constituents += len(kept)
        report.jets_without_constituents += int((counts == 0).sum())

        charge = columns["Charge"][kept].astype(np.int32)
        pid = columns["PID"][kept].astype(np.int64)
        is_electron = np.abs(pid) == 11
        is_muon = np.abs(pid) == 13
        is_photon = pid == 22
        jet_sign = np.where(jet_eta > 0, 1.0, -1.0)
        dz = columns["DZ"][kept].astype(np.float32)
        if self.has_vertex:
            first_vertex_z = ak.firsts(arrays[_leaf(VERTEX_BRANCH, "Z")], axis=1)
            has_vertex = ~ak.to_numpy(ak.is_none(first_vertex_z))
            vertex_z = ak.to_numpy(ak.fill_none(first_vertex_z, 0.0)).astype(np.float32)
            event = jet_event[kept_jet]
            shift = has_vertex[event] & (dz != 0)
            dz = np.where(shift, dz - vertex_z[event], dz)

        def listed(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return offsets, values

        table_columns: dict = {
            "part_px": listed(px[kept]), "part_py": listed(py[kept]), "part_pz": listed(pz[kept]),
            "part_energy": listed(energy[kept]),
            "part_deta": listed(jet_sign[kept_jet] * (eta[kept] - jet_eta[kept_jet])),
            "part_dphi": listed(_wrap_phi(phi[kept] - jet_phi[kept_jet])),
            "part_d0val": listed(columns["D0"][kept]), "part_d0err": listed(columns["ErrorD0"][kept]),
            "part_dzval": listed(dz), "part_dzerr": listed(columns["ErrorDZ"][kept]),
            "part_charge": listed(charge),
            "part_isElectron": listed(is_electron), "part_isMuon": listed(is_muon),
            "part_isPhoton": listed(is_photon),
            "part_isChargedHadron": listed((charge != 0) & ~is_electron & ~is_muon),
            "part_isNeutralHadron": listed((charge == 0) & ~is_photon),
            "jet_pt": jet_pt, "jet_eta": jet_eta, "jet_phi": jet_phi, "jet_energy": jet_energy,
            "jet_sdmass": sd_mass, "jet_nparticles": counts,
            "jet_label": np.full(n_jets, -1),
            "genjet_nparticles": np.zeros(n_jets),
            "event_id": jet_event + start + self.event_id_offset,
            "jet_rank": np.minimum(rank, np.iinfo(np.int8).max),
        }
        for k in range(4):
            table_columns[f"jet_tau{k + 1}"] = tau[:, k]
        empty = (np.zeros(n_jets + 1, dtype=np.int64), np.zeros(0))
        for name in _TRUTH_LIST_COLUMNS:
            table_columns[name] = empty
        for name in _GENJET_FLOAT_COLUMNS:
            table_columns[name] = np.full(n_jets, np.nan)
        if self.process is not None:
            table_columns["process"] = [self.process] * n_jets
        table = build_table(table_columns, self.schema_arrow)
        # a jet without a constituent cannot be scored (the model needs one particle): dropped
        return table if counts.all() else table.filter(pa.array(counts > 0))


def _import_uproot():
    """``uproot``, or :class:`sophon.extras.MissingExtraError` saying how to install it."""
    try:
        import uproot
    except ModuleNotFoundError as error:
        if error.name != "uproot":
            raise
        from sophon.extras import MissingExtraError

        raise MissingExtraError("reading Delphes ROOT files (sophon.delphes)", "root",
                                ("uproot",)) from None
    return uproot


def _four_momentum(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(px, py, pz, E) in GeV from (pT, eta, phi, m), float64, as ROOT's SetPtEtaPhiM: E =
    sqrt(p^2 + m^2), or sqrt(max(p^2 - m^2, 0)) for a negative mass."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    p2 = px * px + py * py + pz * pz
    energy = np.where(mass >= 0, np.sqrt(p2 + mass * mass), np.sqrt(np.maximum(p2 - mass * mass, 0)))
    return px, py, pz, energy


def _wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """An angle difference wrapped into [-pi, pi), radians."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def _lookup(unique_ids: ak.Array, keys: np.ndarray) -> np.ndarray:
    """Row (flat index over the chunk) of the object whose ``(event << 32) | fUniqueID`` equals
    each key, or -1: a sorted search over the chunk's objects, no Python loop."""
    per_event = ak.to_numpy(ak.num(unique_ids, axis=1)).astype(np.int64)
    event = np.repeat(np.arange(len(per_event), dtype=np.int64), per_event)
    uid = np.asarray(ak.to_numpy(ak.flatten(unique_ids, axis=1)), dtype=np.int64)
    object_keys = (event << 32) | (uid & 0xFFFFFFFF)
    order = np.argsort(object_keys, kind="stable")
    sorted_keys = object_keys[order]
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[position] == keys, order[position], -1)


def convert_delphes(path: str | os.PathLike, output: str | os.PathLike, *,
                    jet_branch: str = DEFAULT_JET_BRANCH, step_events: int = DEFAULT_STEP_EVENTS,
                    event_id_offset: int = 0, process: str | None = None,
                    progress: bool = True) -> ConversionReport:
    """Convert the jets of ``jet_branch`` in the Delphes file ``path`` into the parquet file
    ``output`` (:data:`DELPHES_SCHEMA`), streaming ``step_events`` events at a time and writing
    atomically (row group by row group into a temporary file, renamed when complete)."""
    from tqdm.auto import tqdm

    source = DelphesFile(path, jet_branch=jet_branch, step_events=step_events,
                         event_id_offset=event_id_offset, process=process)
    report = ConversionReport(output=Path(output))
    with tqdm(total=source.num_events, unit="event", disable=not progress, file=sys.stderr,
              desc=Path(path).name, dynamic_ncols=True) as bar, \
            atomic.atomic_output(output) as temporary:
        with pq.ParquetWriter(temporary, source.schema_arrow, compression="zstd",
                              use_compliant_nested_type=False) as writer:
            for table in source.iter_tables(report, progress=bar.update):
                writer.write_table(table)
    return report


# ---------------------------------------------------------------------------------------------------
# Command line


def _convert(args: argparse.Namespace) -> int:
    report = convert_delphes(args.input, args.output, jet_branch=args.jet_branch,
                             step_events=args.step_events, event_id_offset=args.event_id_offset,
                             process=args.process, progress=not args.quiet)
    if not args.quiet:
        print(f"{args.input}: {report.events} events, {report.jets} jets of {args.jet_branch} "
              f"(R = {jet_radius(args.jet_branch)}), {report.constituents} constituents kept, "
              f"{report.failed_selection} dropped by the selection, "
              f"{report.unresolved_references} unresolved references; wrote "
              f"{report.jets_written} jets to {args.output}", file=sys.stderr)
        if report.jets_without_constituents:
            print(f"note: {report.jets_without_constituents} jet(s) of {args.jet_branch} not "
                  f"written: none of their constituents passes the selection "
                  f"({CONSTITUENT_SELECTION}), and the model needs at least one", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def register_cli(subparsers) -> None:
    """Add ``sophon convert delphes``."""
    parser = subparsers.add_parser("convert", help="convert other formats to JetClass-II parquet",
                                   description="Convert jets from other formats into "
                                               "JetClass-II-schema parquet files.")
    formats = parser.add_subparsers(dest="format", required=True)
    delphes = formats.add_parser(
        "delphes", help="jets of a Delphes ROOT file (read with uproot)",
        description="Read the jets of one Jet-class branch of a Delphes ROOT file, with their "
                    "particle-flow constituents, as the published Sophon analyzer does, and "
                    "write them as a JetClass-II-schema parquet file (plus event_id, jet_rank).")
    delphes.add_argument("input", metavar="FILE.root", help="Delphes ROOT file (tree 'Delphes')")
    delphes.add_argument("-o", "--output", required=True, metavar="OUT.parquet",
                         help="output parquet file (written atomically)")
    delphes.add_argument("--jet-branch", default=DEFAULT_JET_BRANCH, metavar="BRANCH",
                         help="Jet-class branch to read (default JetPUPPIAK8; R = 1.5 when the "
                              "name contains AK15, else 0.8)")
    delphes.add_argument("--step-events", type=_positive_int, default=DEFAULT_STEP_EVENTS,
                         help="events read at once (memory bound)")
    delphes.add_argument("--event-id-offset", type=int, default=0,
                         help="added to the tree entry to make event_id")
    delphes.add_argument("--process", default=None, help="add a 'process' column of this name")
    delphes.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(handler=_convert)
