import numpy as np
import pytest

from sophon.cli import main
from sophon.embedding import fit_umap
from sophon.store import DatasetMetadata, JetDataset, write_dataset


def _clustered_latents(rng, n_per_cluster=150):
    centres = rng.normal(0, 10, size=(3, 128))
    labels = np.repeat(np.arange(3), n_per_cluster)
    return (centres[labels] + rng.normal(0, 0.5, size=(len(labels), 128))).astype(np.float32), labels


def test_umap_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    latents, labels = _clustered_latents(rng)
    coordinates = fit_umap(latents, seed=1, prefer_gpu=False).coordinates
    centroids = np.array([coordinates[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(coordinates[labels == k] - centroids[k], axis=1).mean()
                 for k in range(3))
    distances = [np.linalg.norm(centroids[a] - centroids[b]) for a in range(3) for b in range(a)]
    assert min(distances) > 3 * spread


@pytest.mark.slow
def test_embed_command_adds_columns_to_each_file(tmp_path):
    rng = np.random.default_rng(1)
    latents, _ = _clustered_latents(rng, 40)
    n = len(latents)
    scores = np.full((n, 188), 1 / 188, dtype=np.float32)
    for part, rows in enumerate((slice(0, 60), slice(60, n))):
        count = len(range(n)[rows])
        write_dataset(tmp_path / f"part-{part}.parquet",
                      {"jet_pt": np.full(count, 300.0, np.float32),
                       "jet_sdmass": np.full(count, 50.0, np.float32)},
                      scores=scores[rows], latents=latents[rows],
                      metadata=DatasetMetadata(luminosity_fb=1.0))
    assert main(["embed", str(tmp_path), "--cpu", "--fit-sample", "100"]) == 0
    dataset = JetDataset(tmp_path)
    assert dataset.has("umap_x") and np.isfinite(dataset.column("umap_y")).all()
    assert dataset.n_jets == n
