"""One generation chunk, end to end: Pythia -> detector -> jets -> truth -> an arrow table.

A chunk is fully described by a :class:`ChunkSpec` (settings, seeds, sizes), so it can run in any
worker process and always gives the same table. :func:`process_batch` is the vectorised per-batch
pipeline; :func:`run_chunk` loops over batches and collects Pythia's cross-section estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sophon.generate.detector import DetectorConfig, ParticleSet, emulate, visible_particles
from sophon.generate.events import EventBatch, Generator
from sophon.generate.jets import Jets, _ranges, cluster, delta_phi, kinematics, substructure
from sophon.generate.truth import (CAT_PARTON, CAT_PRODUCT, CAT_TAU, CAT_X, CAT_Y, Truth,
                                   aux_for_sm_jets, decay_jets, label_qcd_jets,
                                   label_resonant_jets, qcd_partons, resonance_truth)
from sophon.generate.settings import TwoBodyDecay
from sophon.generate.writer import JETCLASS_SCHEMA, SM_SCHEMA, build_table

__all__ = ["JetSelection", "ChunkSpec", "ChunkResult", "run_chunk", "process_batch",
           "TRAINING_X_IDS", "TRAINING_Y_IDS", "SM_X_IDS", "SM_Y_IDS"]

TRAINING_X_IDS = (24, 25)
TRAINING_Y_IDS = (35, 37)
SM_X_IDS = (6, 23, 24, 25)  # top, Z, W, H
SM_Y_IDS = (23, 24)  # W from top, W/Z from H


@dataclass(frozen=True)
class JetSelection:
    """Jet definition and selection (defaults: the JetClass-II ones) and the SM trigger."""

    radius: float = 0.8
    pt_min: float = 200.0
    pt_max: float = 2500.0
    abs_eta_max: float = 2.5
    trigger_pt_sum: float = 800.0  # SM trigger: scalar pT sum of the leading central jets ...
    jets_per_event: int = 2  # ... (R = 0.8, |eta| < 2.5): these two are the jets kept
    clustering_pt_min: float = 30.0  # SM: jets are ranked among those above this pT
    genjet_match_radius: float = 0.8


@dataclass(frozen=True)
class ChunkSpec:
    """Everything that determines one chunk's output."""

    index: int
    kind: str  # "training" or "sm"
    sample: str  # "res2p" | "res34p" | "qcd" | a decay's name (e.g. "X->bs") | an SM process
    n_events: int
    pythia_seed: int
    numpy_seed: int
    settings: tuple[str, ...]
    first_event_id: int = 0
    batch_size: int = 100
    selection: JetSelection = field(default_factory=JetSelection)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    description: str = ""
    decay: TwoBodyDecay | None = None  # a training chunk that keeps this decay's jets only

    def name(self) -> str:
        extra = f", {self.description}" if self.description else ""
        return (f"chunk {self.index} ({self.kind} {self.sample}, {self.n_events} events, "
                f"seed {self.pythia_seed}{extra})")


@dataclass
class ChunkResult:
    """A chunk's jets and bookkeeping. ``cpu_seconds`` (the worker's CPU time) is the per-core
    cost, insensitive to other load on the machine; ``timings`` splits it by stage."""

    spec: ChunkSpec
    table: pa.Table
    n_events: int
    weight_sum: float
    sigma_mb: float
    sigma_error_mb: float
    seconds: float
    cpu_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_jets(self) -> int:
        return self.table.num_rows


def run_chunk(spec: ChunkSpec) -> ChunkResult:
    """Generate, reconstruct and label one chunk. Deterministic in ``spec``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    generator = Generator(spec.settings)
    rng = np.random.default_rng(spec.numpy_seed)
    tables = []
    timings: dict[str, float] = {"init": time.process_time() - cpu_start, "pythia": 0.0}
    done = 0
    while done < spec.n_events:
        n = min(spec.batch_size, spec.n_events - done)
        tick = time.process_time()
        batch = generator.next_batch(n)
        timings["pythia"] += time.process_time() - tick
        tables.append(process_batch(batch, spec, rng, first_event_id=spec.first_event_id + done,
                                    timings=timings))
        done += n
    tick = time.process_time()
    schema = SM_SCHEMA if spec.kind == "sm" else JETCLASS_SCHEMA
    table = pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()
    timings["columns"] = timings.get("columns", 0.0) + time.process_time() - tick
    return ChunkResult(spec, table, generator.n_generated, generator.weight_sum,
                       generator.sigma_mb, generator.sigma_error_mb,
                       time.perf_counter() - start, time.process_time() - cpu_start, timings)


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


class _Clock:
    """Accumulates CPU time per stage."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.last = time.process_time()

    def __call__(self, name: str):
        now = time.process_time()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def process_batch(batch: EventBatch, spec: ChunkSpec, rng: np.random.Generator, *,
                  first_event_id: int = 0, timings: dict | None = None) -> pa.Table:
    """The vectorised pipeline for one batch of events; returns its rows (one per jet)."""
    clock = _Clock(timings)
    sel = spec.selection
    gen = visible_particles(batch)
    reco = emulate(gen, rng, spec.detector)
    clock("detector")

    is_sm = spec.kind == "sm"
    jets = cluster(reco.offsets, reco["px"], reco["py"], reco["pz"], reco["e"],
                   radius=sel.radius,
                   pt_min=sel.clustering_pt_min if is_sm else 0.75 * sel.pt_min)
    pt, eta, phi, _ = kinematics(jets.px, jets.py, jets.pz, jets.e)
    accepted = (pt > sel.pt_min) & (pt < sel.pt_max) & (np.abs(eta) < sel.abs_eta_max)
    if is_sm:
        # Rank among central jets (jets are sorted by event, then decreasing pT).
        central = np.abs(eta) < sel.abs_eta_max
        before = np.concatenate([[0], np.cumsum(central)])
        first = np.searchsorted(jets.event, np.arange(batch.n_events))
        rank = (before[:-1] - before[first[jets.event]]).astype(np.int32)
        leading = central & (rank < sel.jets_per_event)
        pt_sum = np.bincount(jets.event[leading], weights=pt[leading], minlength=batch.n_events)
        accepted &= leading & (pt_sum[jets.event] > sel.trigger_pt_sum)
        jets.rank = rank
    jets = jets.select(accepted)
    pt, eta, phi = pt[accepted], eta[accepted], phi[accepted]
    clock("cluster")

    # Truth matching and labels.
    keep = None  # the training jets kept: those of a class, or of the named decay
    if not is_sm and spec.sample == "qcd":
        truth = qcd_partons(batch)
        labels, aux_jet, aux_row = label_qcd_jets(jets, eta, phi, truth, batch.n_events)
    elif is_sm:
        resonances = resonance_truth(batch, SM_X_IDS, SM_Y_IDS)
        aux_jet, aux_row, truth = aux_for_sm_jets(jets, eta, phi, resonances,
                                                  qcd_partons(batch), batch.n_events)
        labels = np.full(len(jets), -1, dtype=np.int32)
    elif spec.decay is not None:  # no class: kept with label -1
        truth = resonance_truth(batch, TRAINING_X_IDS, TRAINING_Y_IDS)
        keep, aux_jet, aux_row = decay_jets(jets, eta, phi, truth, batch.n_events,
                                            (spec.decay.first, spec.decay.second))
        labels = np.full(len(jets), -1, dtype=np.int32)
    else:
        truth = resonance_truth(batch, TRAINING_X_IDS, TRAINING_Y_IDS)
        labels, aux_jet, aux_row = label_resonant_jets(jets, eta, phi, truth, batch.n_events)
    if not is_sm:  # the other jets are dropped
        keep = labels >= 0 if keep is None else keep
        new_index = np.cumsum(keep) - 1
        pair_keep = keep[aux_jet]
        aux_jet, aux_row = new_index[aux_jet[pair_keep]], aux_row[pair_keep]
        jets, labels = jets.select(keep), labels[keep]
        pt, eta, phi = pt[keep], eta[keep], phi[keep]
    clock("truth")

    shape = substructure(jets, reco["px"], reco["py"], reco["pz"], reco["e"])
    clock("substructure")

    genjet = _match_gen_jets(jets, eta, phi, gen, sel)
    clock("genjets")

    columns = _reco_columns(jets, pt, eta, phi, reco, shape, labels)
    columns.update(_gen_columns(genjet, eta, phi, gen))
    columns.update(_aux_columns(len(jets), aux_jet, aux_row, truth))
    if is_sm:
        columns["event_id"] = first_event_id + jets.event
        columns["jet_rank"] = jets.rank.astype(np.int8)
        columns["process"] = [spec.sample] * len(jets)
        columns["weight"] = batch.weight[jets.event]  # event weight; normalised by the driver
    table = build_table(columns, SM_SCHEMA if is_sm else JETCLASS_SCHEMA)
    clock("columns")
    return table


def _constituents_around_axis(jets: Jets, particles: ParticleSet, eta, phi):
    """Flat constituent indices and offsets of ``jets``, and each constituent's (delta eta,
    delta phi) to its jet's axis ``eta``, ``phi``; delta eta is signed by the jet's eta, as in
    JetClass-II."""
    index = jets.constituents
    owner = np.repeat(np.arange(len(jets)), jets.n_constituents)
    _, peta, pphi, _ = kinematics(particles["px"][index], particles["py"][index],
                                  particles["pz"][index], particles["e"][index])
    sign = np.where(eta >= 0, 1.0, -1.0)
    return (index, jets.constituent_offsets, sign[owner] * (peta - eta[owner]),
            delta_phi(pphi, phi[owner]))


def _reco_columns(jets: Jets, pt, eta, phi, reco: ParticleSet, shape: dict, labels) -> dict:
    index, offsets, deta, dphi = _constituents_around_axis(jets, reco, eta, phi)
    columns = {
        "part_px": (offsets, reco["px"][index]), "part_py": (offsets, reco["py"][index]),
        "part_pz": (offsets, reco["pz"][index]), "part_energy": (offsets, reco["e"][index]),
        "part_deta": (offsets, deta),
        "part_dphi": (offsets, dphi),
    }
    for name in ("d0val", "d0err", "dzval", "dzerr", "charge", "isElectron", "isMuon",
                 "isPhoton", "isChargedHadron", "isNeutralHadron"):
        columns[f"part_{name}"] = (offsets, reco[name][index])
    columns.update({
        "jet_pt": pt, "jet_eta": eta, "jet_phi": phi, "jet_energy": jets.e,
        "jet_sdmass": shape["sdmass"], "jet_nparticles": jets.n_constituents,
        "jet_tau1": shape["tau1"], "jet_tau2": shape["tau2"], "jet_tau3": shape["tau3"],
        "jet_tau4": shape["tau4"], "jet_label": labels,
    })
    return columns


@dataclass
class _GenJets:
    matched: np.ndarray  # per reco jet: has a generator-level jet
    jets: Jets  # one per reco jet (empty constituents where unmatched)
    sdmass: np.ndarray


def _match_gen_jets(jets: Jets, eta, phi, gen: ParticleSet, sel: JetSelection) -> _GenJets:
    """The generator-level anti-kT jet nearest to each reco jet (within the match radius)."""
    n_events = gen.n_events
    if len(jets) == 0:
        return _GenJets(np.zeros(0, dtype=bool), jets, np.zeros(0))
    wanted = np.zeros(n_events, dtype=bool)
    wanted[jets.event] = True
    event_of = np.repeat(np.arange(n_events), np.diff(gen.offsets))
    subset = gen.select(wanted[event_of])
    all_gen = cluster(subset.offsets, subset["px"], subset["py"], subset["pz"], subset["e"],
                      radius=sel.radius, pt_min=0.25 * sel.pt_min)
    # Map constituents back to indices of ``gen``.
    original = np.nonzero(wanted[event_of])[0]
    all_gen.constituents = original[all_gen.constituents]
    _, geta, gphi, _ = kinematics(all_gen.px, all_gen.py, all_gen.pz, all_gen.e)
    starts = np.searchsorted(all_gen.event, np.arange(n_events + 1))
    counts = (starts[1:] - starts[:-1])[jets.event]
    reco_of_pair = np.repeat(np.arange(len(jets)), counts)
    gen_of_pair = _ranges(starts[:-1][jets.event], counts)
    deta = geta[gen_of_pair] - eta[reco_of_pair]
    dphi = delta_phi(gphi[gen_of_pair], phi[reco_of_pair])
    dr2 = deta * deta + dphi * dphi
    best = np.full(len(jets), np.inf)
    np.minimum.at(best, reco_of_pair, dr2)
    is_best = (dr2 == best[reco_of_pair]) & (dr2 < sel.genjet_match_radius ** 2)
    choice = np.full(len(jets), -1, dtype=np.int64)
    choice[reco_of_pair[is_best]] = gen_of_pair[is_best]
    matched = choice >= 0
    picked = all_gen.take(choice, valid=matched)
    sdmass = np.zeros(len(jets))
    if matched.any():
        shape = substructure(picked.select(matched), gen["px"], gen["py"], gen["pz"], gen["e"],
                             taus=False)
        sdmass[matched] = shape["sdmass"]
    return _GenJets(matched, picked, sdmass)


def _gen_columns(genjet: _GenJets, eta, phi, gen: ParticleSet) -> dict:
    jets = genjet.jets
    # relative to the reconstructed jet axis, as in JetClass-II
    index, offsets, deta, dphi = _constituents_around_axis(jets, gen, eta, phi)
    gpt, geta, gphi, _ = kinematics(jets.px, jets.py, jets.pz, jets.e)
    columns = {f"genpart_{name}": (offsets, gen[key][index]) for name, key in (
        ("px", "px"), ("py", "py"), ("pz", "pz"), ("energy", "e"), ("x", "x"), ("y", "y"),
        ("z", "z"), ("t", "t"), ("pid", "pid"))}
    columns["genpart_jet_deta"] = (offsets, deta)
    columns["genpart_jet_dphi"] = (offsets, dphi)
    m = genjet.matched
    columns.update({
        "genjet_pt": np.where(m, gpt, 0.0), "genjet_eta": np.where(m, geta, 0.0),
        "genjet_phi": np.where(m, gphi, 0.0), "genjet_energy": jets.e,
        "genjet_sdmass": genjet.sdmass, "genjet_nparticles": jets.n_constituents,
    })
    return columns


def _aux_columns(n_jets: int, aux_jet: np.ndarray, aux_row: np.ndarray, truth: Truth) -> dict:
    offsets = _offsets_from_counts(np.bincount(aux_jet, minlength=n_jets))
    category = truth.category[aux_row]
    return {
        "aux_genpart_pt": (offsets, truth.pt[aux_row]),
        "aux_genpart_eta": (offsets, truth.eta[aux_row]),
        "aux_genpart_phi": (offsets, truth.phi[aux_row]),
        "aux_genpart_mass": (offsets, truth.mass[aux_row]),
        "aux_genpart_pid": (offsets, truth.pid[aux_row]),
        "aux_genpart_isResX": (offsets, category == CAT_X),
        "aux_genpart_isResY": (offsets, category == CAT_Y),
        "aux_genpart_isResDecayProd": (offsets, category == CAT_PRODUCT),
        "aux_genpart_isTauDecayProd": (offsets, category == CAT_TAU),
        "aux_genpart_isQcdParton": (offsets, category == CAT_PARTON),
    }
