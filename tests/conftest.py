"""Shared fixtures: the reference folder beside the checkout, and a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` beside the checkout; tests that need it skip when it is absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip("reference data ../shared/reference is not present")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_parquet(reference_dir) -> Path:
    """100 real JetClass-II jets in the published parquet schema."""
    return reference_dir / "JetClassII_example.parquet"


@pytest.fixture(scope="session")
def reference_table(reference_parquet):
    import pyarrow.parquet as pq

    return pq.read_table(reference_parquet)


@pytest.fixture(scope="session")
def synthetic_path(tmp_path_factory) -> Path:
    """A 20k-jet SYNTHETIC dataset file (test data only, not physics)."""
    from sophon.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "jets.parquet",
                                   20_000, seed=7)


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_path):
    from sophon.store import JetDataset

    return JetDataset(synthetic_path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """``(path, model)``: a `small` model with random (seeded) weights, in eval mode, saved as a
    checkpoint: the score head of the test datasets built from latents."""
    from sophon.model import SophonModel, randomize_weights_, save_checkpoint
    from sophon.training import TRAINING_CONFIGS

    model = randomize_weights_(SophonModel(TRAINING_CONFIGS["small"]), seed=3).eval()
    path = tmp_path_factory.mktemp("models") / "small.pt"
    save_checkpoint(model, path)
    return path, model


@pytest.fixture()
def torch_one_thread():
    """torch on one thread for the test (the other core runs the rest of the machine's work),
    the previous count restored after it."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shifted_latents(rng: np.random.Generator, members: np.ndarray, shift: float) -> np.ndarray:
    """(len(members), 128) float32 unit-Gaussian latents, those of the ``members`` (bool) moved
    by ``shift`` along one random unit direction: a signal that only the latent space sees."""
    direction = rng.normal(size=128)
    direction /= np.linalg.norm(direction)
    latents = rng.normal(size=(len(members), 128))
    latents[members] += shift * direction
    return latents.astype(np.float32)


def write_split_parts(folder: Path, sample, weights: np.ndarray, *, split: int, row_group: int,
                      metadata) -> Path:
    """The jets of ``sample`` (:func:`sophon.synthetic.make_synthetic`) with ``weights`` as two
    parquet parts split at row ``split``, in row groups of ``row_group`` rows (odd sizes split
    events between partitions and files): a folder dataset for the Dask tests."""
    from sophon.store import write_dataset

    folder.mkdir(parents=True)
    n_jets = len(weights)
    for number, (start, stop) in enumerate(((0, split), (split, n_jets))):
        columns = {name: values[start:stop] for name, values in sample.columns.items()}
        columns["weight"] = weights[start:stop]
        path = folder / f"part-{number}.parquet"
        write_dataset(path, columns, scores=sample.scores[start:stop], metadata=metadata)
        pq.write_table(pq.read_table(path), path, row_group_size=row_group)
    return folder
