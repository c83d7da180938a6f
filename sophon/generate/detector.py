"""A simple detector emulation in the spirit of the Delphes CMS card.

All steps act on flat NumPy arrays of every visible final-state particle of a batch of events; no
Python loop runs per particle. The emulation, step by step (numbers are documented again in
``docs/generation.md``):

1. **Visible final state.** Pythia's final-state particles (status > 0) except neutrinos. These
   are also the generator-level particles (``genpart_*``) clustered into ``genjet_*``.
2. **Tracking.** Charged particles with ``|eta| < 2.5`` and ``pT > 0.3 GeV`` are reconstructed as
   tracks with efficiency 0.90 (``pT < 1 GeV``) or 0.97 (barrel, ``|eta| < 1.5``) / 0.92 (endcap).
   Track ``pT`` is smeared with ``sigma(pT)/pT = (0.006 (+) 1.5e-4 pT/GeV) x (1 | 1.5 endcap)``,
   direction kept.
3. **Impact parameters.** From the particle's production vertex (B and D hadron decays are kept
   displaced by Pythia, ``tau0Max = 10 mm``) a straight line along the momentum gives the signed
   transverse impact parameter ``d0 = (x p_y - y p_x) / pT`` and the longitudinal one
   ``dz = z - (x p_x + y p_y) p_z / pT^2`` with respect to the nominal interaction point (no beam
   spot, no magnetic-field curvature). Both are smeared with
   ``sigma(d0) = 0.010 mm (+) 0.100 mm GeV / (pT sqrt(sin theta))`` and
   ``sigma(dz) = 0.030 mm (+) 0.150 mm GeV / (pT sin(theta)^1.5)``, stored as ``d0val``/``dzval``
   with ``d0err``/``dzerr = sigma``. Neutral candidates carry zeros, as in JetClass-II.
4. **Calorimeters.** Photons (and electrons without a track) are ECAL deposits with
   ``sigma(E)/E = 0.007 (+) 0.07/sqrt(E) (+) 0.35/E`` (``|eta| < 1.5``) and
   ``0.020 (+) 0.11/sqrt(E) (+) 0.40/E`` beyond; neutral hadrons (and charged hadrons without a
   track) are HCAL deposits with ``sigma(E)/E = 0.05 (+) 1.0/sqrt(E)`` (``|eta| < 3``) and
   ``0.10 (+) 1.8/sqrt(E)`` (forward). The four-momentum is scaled, direction kept. Thresholds
   ``E > 0.4 GeV`` (photons) and ``E > 0.6 GeV`` (neutral hadrons); acceptance ``|eta| < 5``.
   Muons without a track are lost.
5. **Particle identification** as JetClass-II: ``isElectron``/``isMuon`` for tracked electrons and
   muons, ``isChargedHadron`` for other tracks, ``isPhoton`` for ECAL and ``isNeutralHadron`` for
   HCAL candidates. Exactly one flag is set per candidate.

No pileup is overlaid and no particle-flow merging of nearby neutrals is attempted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sophon.generate.events import EventBatch

__all__ = ["ParticleSet", "visible_particles", "emulate", "DetectorConfig"]

_NEUTRINOS = (12, 14, 16)
_MM_PER_S = 2.99792458e11  # speed of light in mm/s: Pythia's mm/c times -> seconds


@dataclass
class ParticleSet:
    """Flat per-particle columns of a batch of events (``offsets`` delimit the events)."""

    offsets: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    def select(self, keep: np.ndarray) -> "ParticleSet":
        """The particles where ``keep`` is true, event grouping preserved."""
        kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        offsets = kept_before[self.offsets]
        return ParticleSet(offsets, {k: v[keep] for k, v in self.columns.items()})


def visible_particles(batch: EventBatch) -> ParticleSet:
    """Generator-level visible final state: status > 0, neutrinos removed."""
    keep = (batch.status > 0) & ~np.isin(np.abs(batch.pid), _NEUTRINOS)
    full = ParticleSet(batch.offsets, {
        "px": batch.px, "py": batch.py, "pz": batch.pz, "e": batch.e,
        "pid": batch.pid, "charge": batch.charge,
        "x": batch.x, "y": batch.y, "z": batch.z, "t": batch.t / _MM_PER_S,
        "index": np.arange(batch.n_particles, dtype=np.int64),  # flat index into the batch
    })
    return full.select(keep)


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of :func:`emulate` (defaults as in the module docstring)."""

    tracker_eta: float = 2.5
    track_pt_min: float = 0.3
    track_efficiency_low_pt: float = 0.90
    track_efficiency_barrel: float = 0.97
    track_efficiency_endcap: float = 0.92
    calo_eta: float = 5.0
    photon_e_min: float = 0.4
    neutral_hadron_e_min: float = 0.6
    d0_resolution: tuple[float, float] = (0.010, 0.100)  # mm, mm GeV
    dz_resolution: tuple[float, float] = (0.030, 0.150)


def _quadrature(*terms: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(np.square(t) for t in terms))


def emulate(gen: ParticleSet, rng: np.random.Generator,
            config: DetectorConfig = DetectorConfig()) -> ParticleSet:
    """Reconstructed candidates from generator-level visible particles (see the module docs).

    The result has the JetClass-II particle columns (``px, py, pz, e, charge, d0val, d0err,
    dzval, dzerr, isElectron, isMuon, isPhoton, isChargedHadron, isNeutralHadron``) plus ``gen``,
    the index of the generator particle in ``gen``.
    """
    n = len(gen)
    px, py, pz, e = gen["px"], gen["py"], gen["pz"], gen["e"]
    pid = np.abs(gen["pid"])
    charge = gen["charge"]
    pt = np.hypot(px, py)
    p = np.sqrt(pt * pt + pz * pz)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / np.where(pt > 0, pt, 1.0), np.sign(pz) * 1e3))
    abs_eta = np.abs(eta)
    sin_theta = np.where(p > 0, pt / np.where(p > 0, p, 1.0), 0.0)
    # One uniform and three normal numbers per particle, drawn in a fixed order: reproducible.
    u_efficiency = rng.random(n)
    n_energy, n_d0, n_dz = rng.standard_normal((3, n))

    # --- tracking
    charged = charge != 0
    in_tracker = charged & (abs_eta < config.tracker_eta) & (pt > config.track_pt_min)
    efficiency = np.where(pt < 1.0, config.track_efficiency_low_pt,
                          np.where(abs_eta < 1.5, config.track_efficiency_barrel,
                                   config.track_efficiency_endcap))
    tracked = in_tracker & (u_efficiency < efficiency)
    pt_resolution = _quadrature(0.006, 1.5e-4 * pt) * np.where(abs_eta < 1.5, 1.0, 1.5)

    # --- calorimeter deposits for everything else
    is_muon_pid = pid == 13
    ecal = ~tracked & ((pid == 22) | (pid == 11))
    hcal = ~tracked & ~ecal & ~is_muon_pid
    safe_e = np.maximum(e, 1e-6)
    ecal_resolution = np.where(abs_eta < 1.5,
                               _quadrature(0.007, 0.07 / np.sqrt(safe_e), 0.35 / safe_e),
                               _quadrature(0.020, 0.11 / np.sqrt(safe_e), 0.40 / safe_e))
    hcal_resolution = np.where(abs_eta < 3.0, _quadrature(0.05, 1.0 / np.sqrt(safe_e)),
                               _quadrature(0.10, 1.8 / np.sqrt(safe_e)))
    relative = np.where(tracked, pt_resolution, np.where(ecal, ecal_resolution, hcal_resolution))
    scale = np.maximum(1.0 + relative * n_energy, 0.0)
    new_e = np.where(tracked, np.sqrt((scale * p) ** 2 + np.maximum(e * e - p * p, 0.0)), scale * e)
    # A calorimeter deposit is massless: the momentum follows the smeared energy.
    p_scale = np.where(tracked, scale, np.where(p > 0, new_e / np.where(p > 0, p, 1.0), 0.0))
    calo_ok = (abs_eta < config.calo_eta) & np.where(
        ecal, new_e > config.photon_e_min, new_e > config.neutral_hadron_e_min)
    keep = tracked | ((ecal | hcal) & calo_ok)

    # --- impact parameters of tracks
    x, y, z = gen["x"], gen["y"], gen["z"]
    safe_pt = np.where(pt > 0, pt, 1.0)
    d0 = (x * py - y * px) / safe_pt
    dz = z - (x * px + y * py) * pz / (safe_pt * safe_pt)
    sin_safe = np.maximum(sin_theta, 1e-3)
    d0_err = _quadrature(config.d0_resolution[0],
                         config.d0_resolution[1] / (safe_pt * np.sqrt(sin_safe)))
    dz_err = _quadrature(config.dz_resolution[0],
                         config.dz_resolution[1] / (safe_pt * sin_safe ** 1.5))
    zero = np.zeros(n)

    columns = {
        "px": px * p_scale, "py": py * p_scale, "pz": pz * p_scale, "e": new_e,
        "charge": np.where(tracked, np.sign(charge), 0).astype(np.int32),
        "d0val": np.where(tracked, d0 + d0_err * n_d0, zero),
        "d0err": np.where(tracked, d0_err, zero),
        "dzval": np.where(tracked, dz + dz_err * n_dz, zero),
        "dzerr": np.where(tracked, dz_err, zero),
        "isElectron": tracked & (pid == 11),
        "isMuon": tracked & is_muon_pid,
        "isChargedHadron": tracked & (pid != 11) & ~is_muon_pid,
        "isPhoton": ~tracked & ecal,
        "isNeutralHadron": ~tracked & hcal,
        "gen": np.arange(n, dtype=np.int64),
    }
    return ParticleSet(gen.offsets, columns).select(keep)
