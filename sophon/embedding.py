"""2-d embeddings of the 128-d latent space (UMAP), fitted once and stored with the dataset.

``sophon embed DATASET`` fits UMAP on the dataset's ``latent`` column (umap-learn on CPU; cuML's
GPU UMAP when it is installed) and writes ``umap_x``/``umap_y`` into every file of the dataset,
atomically. Large datasets are fitted on a random subsample and the rest is placed with the fitted
model's ``transform``, which keeps the fit time bounded.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon.extras import require
from sophon.store import JetDataset, dataset_files, restamp_metadata, write_table_atomic

__all__ = ["EmbeddingResult", "fit_umap", "embed_dataset", "register_cli"]


@dataclass(frozen=True)
class EmbeddingResult:
    """``coordinates`` (N, 2) float32; ``backend`` "umap-learn" or "cuml"; ``seconds`` wall time."""

    coordinates: np.ndarray
    backend: str
    fitted_on: int
    seconds: float


def _reducer(n_neighbors: int, min_dist: float, seed: int, prefer_gpu: bool):
    if prefer_gpu:
        try:
            from cuml.manifold import UMAP as CumlUMAP  # type: ignore[import-not-found]

            return CumlUMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed), "cuml"
        except ImportError:
            pass
    umap = require("umap", "embed", "the UMAP of the latent space")
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                     n_components=2), "umap-learn"


def fit_umap(latents: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
             fit_sample: int = 200_000, prefer_gpu: bool = True) -> EmbeddingResult:
    """Embed ``latents`` (N, 128) into 2-d. Fits on at most ``fit_sample`` random jets."""
    latents = np.asarray(latents, dtype=np.float32)
    if latents.ndim != 2 or len(latents) < 3:
        raise ValueError(f"UMAP needs an (N >= 3, D) latent array, got shape {latents.shape}")
    start = time.perf_counter()
    reducer, backend = _reducer(min(n_neighbors, len(latents) - 1), min_dist, seed, prefer_gpu)
    rng = np.random.default_rng(seed)
    if len(latents) <= fit_sample:
        coordinates = reducer.fit_transform(latents)
        fitted_on = len(latents)
    else:
        chosen = np.sort(rng.choice(len(latents), fit_sample, replace=False))
        reducer.fit(latents[chosen])
        coordinates = reducer.transform(latents)
        fitted_on = fit_sample
    return EmbeddingResult(np.asarray(coordinates, dtype=np.float32), backend, fitted_on,
                           time.perf_counter() - start)


def embed_dataset(path: str | Path, **options) -> EmbeddingResult:
    """Fit UMAP on the dataset's latents and write ``umap_x``/``umap_y`` into its files."""
    dataset = JetDataset(path, validate=False)
    result = fit_umap(dataset.latents, **options)
    offset = 0
    for file in dataset_files(path):
        table = pq.read_table(file)
        rows = table.num_rows
        table = table.drop_columns([c for c in ("umap_x", "umap_y") if c in table.column_names])
        table = table.append_column("umap_x", pa.array(result.coordinates[offset:offset + rows, 0]))
        table = table.append_column("umap_y", pa.array(result.coordinates[offset:offset + rows, 1]))
        write_table_atomic(restamp_metadata(table, source=str(file)), file)
        offset += rows
    return result


def _main(args: argparse.Namespace) -> int:
    result = embed_dataset(args.dataset, n_neighbors=args.neighbors, min_dist=args.min_dist,
                           seed=args.seed, fit_sample=args.fit_sample,
                           prefer_gpu=not args.cpu)
    print(f"embedded {len(result.coordinates)} jets with {result.backend} (fitted on "
          f"{result.fitted_on}) in {result.seconds:.1f} s")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="fit UMAP on a dataset's latents and store it")
    parser.add_argument("dataset", type=Path, help="dataset file or directory (sophon.store)")
    parser.add_argument("--neighbors", type=int, default=15)
    parser.add_argument("--min-dist", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-sample", type=int, default=200_000,
                        help="fit on at most this many jets, place the rest with transform")
    parser.add_argument("--cpu", action="store_true", help="use umap-learn even if cuML exists")
    parser.set_defaults(handler=_main)
