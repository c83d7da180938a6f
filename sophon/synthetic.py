"""A SYNTHETIC jet dataset for tests, benchmarks and development: not physics, never the app's
default.

Jets are drawn per process with a simple soft-drop-mass shape (falling QCD; W, Z, H and top peaks)
and a true JetClass-II class; the 188 scores are a softmax of noisy logits favouring the true class,
so discriminants behave qualitatively like a trained tagger. Everything is vectorised and chunked,
so 10M jets fit in memory (scores alone are 7.5 GB as float32).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sophon.labels import LABELS, N_CLASSES, index_of, select
from sophon.store import LATENT_DIM, DatasetMetadata, write_dataset

__all__ = ["SYNTHETIC_PROCESSES", "SyntheticSample", "make_synthetic", "write_synthetic_dataset",
           "register_cli"]


@dataclass(frozen=True)
class _Process:
    fraction: float  # of the generated jets
    cross_section_weight: float  # relative expected events per generated jet
    mass_peak: float | None  # GeV; None: falling QCD spectrum
    mass_width: float
    classes: tuple[str, ...]  # true classes drawn uniformly


SYNTHETIC_PROCESSES: dict[str, _Process] = {
    "QCD": _Process(0.80, 10.0, None, 0.0, tuple(select("QCD"))),
    "W+jets": _Process(0.06, 2.0, 80.4, 7.0, ("X_cs", "X_qq", "X_cq", "X_sq")),
    "Z+jets": _Process(0.05, 1.0, 91.2, 8.0, ("X_bb", "X_cc", "X_qq", "X_ss")),
    "ttbar": _Process(0.07, 0.5, 173.0, 14.0, ("X_YY_qqb", "X_YY_bcs", "X_YY_bcq", "X_YY_bsq")),
    "Higgs": _Process(0.02, 0.05, 125.0, 10.0, ("X_bb", "X_cc", "X_gg")),
}


@dataclass
class SyntheticSample:
    """Columns (jet kinematics, process, weight, ...), scores (N, 188), latents (N, 128)|None."""

    columns: dict[str, np.ndarray]
    scores: np.ndarray
    latents: np.ndarray | None
    luminosity_fb: float


def _masses(rng: np.random.Generator, process: _Process, n: int) -> np.ndarray:
    if process.mass_peak is None:
        return (10.0 + rng.exponential(45.0, n)).astype(np.float32)
    return np.abs(rng.normal(process.mass_peak, process.mass_width, n)).astype(np.float32)


def make_synthetic(n_jets: int, seed: int = 0, *, with_latents: bool = True,
                   signal_strength: float = 4.0, chunk: int = 500_000,
                   luminosity_fb: float = 100.0) -> SyntheticSample:
    """Build ``n_jets`` synthetic jets (an even number: two jets per event)."""
    rng = np.random.default_rng(seed)
    n_jets += n_jets % 2
    names = list(SYNTHETIC_PROCESSES)
    fractions = np.array([p.fraction for p in SYNTHETIC_PROCESSES.values()])
    event_process = rng.choice(len(names), size=n_jets // 2, p=fractions / fractions.sum())
    process_code = np.repeat(event_process, 2)
    mass = np.empty(n_jets, dtype=np.float32)
    true_class = np.empty(n_jets, dtype=np.int32)
    weight = np.empty(n_jets, dtype=np.float64)
    for code, process in enumerate(SYNTHETIC_PROCESSES.values()):
        members = np.flatnonzero(process_code == code)
        mass[members] = _masses(rng, process, members.size)
        class_indices = np.array([index_of(c) for c in process.classes])
        true_class[members] = rng.choice(class_indices, size=members.size)
        weight[members] = process.cross_section_weight * np.repeat(
            rng.uniform(0.5, 1.5, members.size // 2), 2)
    # the second jet of a signal event is often a QCD-like jet: keeps the stack realistic
    recoil = (process_code != 0) & (np.arange(n_jets) % 2 == 1) & (rng.random(n_jets) < 0.5)
    mass[recoil] = _masses(rng, SYNTHETIC_PROCESSES["QCD"], int(recoil.sum()))
    true_class[recoil] = index_of("QCD_light")
    pt = (200.0 + rng.exponential(150.0, n_jets)).astype(np.float32)
    eta = rng.uniform(-2.4, 2.4, n_jets).astype(np.float32)
    phi = rng.uniform(-np.pi, np.pi, n_jets).astype(np.float32)
    energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2).astype(np.float32)

    scores = np.empty((n_jets, N_CLASSES), dtype=np.float32, order="F")
    for start in range(0, n_jets, chunk):
        stop = min(start + chunk, n_jets)
        logits = rng.standard_normal((stop - start, N_CLASSES), dtype=np.float32)
        rows = np.arange(stop - start)
        logits[rows, true_class[start:stop]] += np.float32(signal_strength) + \
            rng.standard_normal(stop - start, dtype=np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        scores[start:stop] = logits
    latents = None
    if with_latents:
        latent_rng = np.random.default_rng(seed + 1)
        projection = latent_rng.standard_normal((N_CLASSES, LATENT_DIM), dtype=np.float32)
        # one centre per true class, so that jets of a class are neighbours in the latent space
        centres = latent_rng.standard_normal((N_CLASSES, LATENT_DIM), dtype=np.float32)
        latents = np.empty((n_jets, LATENT_DIM), dtype=np.float32)
        for start in range(0, n_jets, chunk):
            stop = min(start + chunk, n_jets)
            latents[start:stop] = (centres[true_class[start:stop]]
                                   + np.log(scores[start:stop] + 1e-6) @ projection * 0.05)
    group_of_class = np.array([0 if l.startswith("QCD") else 1 if not l.startswith("X_YY")
                               else 2 for l in LABELS])
    centre = np.array([[0.0, 0.0], [6.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    umap = centre[group_of_class[true_class]] + rng.normal(0, 1.0, (n_jets, 2)).astype(np.float32)
    columns = {
        "jet_pt": pt, "jet_eta": eta, "jet_phi": phi, "jet_energy": energy, "jet_sdmass": mass,
        "jet_nparticles": rng.integers(10, 120, n_jets).astype(np.int32),
        **{f"jet_tau{i}": rng.uniform(0, 0.5 / i, n_jets).astype(np.float32) for i in range(1, 5)},
        "jet_label": true_class,
        "event_id": np.repeat(np.arange(n_jets // 2, dtype=np.int64), 2),
        "jet_rank": np.tile(np.array([0, 1], dtype=np.int8), n_jets // 2),
        "process": np.array(names, dtype=object)[process_code],
        "weight": weight,
        "umap_x": umap[:, 0], "umap_y": umap[:, 1],
    }
    return SyntheticSample(columns, scores, latents, luminosity_fb)


def write_synthetic_dataset(path: str | Path, n_jets: int, seed: int = 0, **kwargs) -> Path:
    """Write a synthetic dataset file in the store layout (model id ``synthetic``)."""
    sample = make_synthetic(n_jets, seed, **kwargs)
    metadata = DatasetMetadata(luminosity_fb=sample.luminosity_fb, model_id="synthetic",
                               extra={"synthetic": True, "seed": seed})
    return write_dataset(path, sample.columns, scores=sample.scores, latents=sample.latents,
                         metadata=metadata)


def _main(args: argparse.Namespace) -> int:
    path = write_synthetic_dataset(args.output, args.jets, args.seed)
    print(f"wrote {args.jets} synthetic jets to {path}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("synthetic", help="write a SYNTHETIC test dataset (not physics)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output parquet file")
    parser.add_argument("--jets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_main)
