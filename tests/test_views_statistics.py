"""The statistics behind issue 14, items 7, 12 and 13, against answers known by construction:
the process a discriminant targets (DatasetAnalysis.target_process), the constituents each jet
stores (sophon.scoring.constituent_counts), the bin width in a per-bin label, the stored
model's hash, and a released dataset leaving the shared cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sophon.analysis import BuildOnceCache, DatasetAnalysis
from sophon.discriminant import Discriminant, Term
from sophon.features import PARTICLE_COLUMNS
from sophon.labels import N_CLASSES, index_of
from sophon.store import DatasetMetadata, JetDataset, write_dataset

N_QCD, N_W, N_TOP = 3000, 400, 400


def _dataset(path: Path, lengths: np.ndarray | None = None) -> Path:
    """QCD flat in mass; "W" jets at 80 GeV tagged X_cs; "top" jets at 173 GeV tagged
    X_YY_qqb: every score is 1e-3 except the tagged class (0.8 on its jets), the rest uniform."""
    rng = np.random.default_rng(5)
    n = N_QCD + N_W + N_TOP
    process = np.array(["QCD"] * N_QCD + ["W"] * N_W + ["top"] * N_TOP, dtype=object)
    mass = np.concatenate([rng.uniform(20, 400, N_QCD), rng.normal(80, 2, N_W),
                           rng.normal(173, 3, N_TOP)]).astype(np.float32)
    scores = np.full((n, N_CLASSES), 1.0, dtype=np.float32)
    scores[N_QCD:N_QCD + N_W, index_of("X_cs")] = 4000.0
    scores[N_QCD + N_W:, index_of("X_YY_qqb")] = 4000.0
    scores += rng.uniform(0, 0.01, scores.shape).astype(np.float32)  # no ties
    scores /= scores.sum(axis=1, keepdims=True)
    columns = {"jet_pt": np.full(n, 500, np.float32), "jet_eta": np.zeros(n, np.float32),
               "jet_phi": np.zeros(n, np.float32), "jet_energy": np.full(n, 600, np.float32),
               "jet_sdmass": mass, "process": process, "weight": np.ones(n),
               "jet_label": np.full(n, -1, np.int32)}
    if lengths is not None:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        columns[PARTICLE_COLUMNS[0]] = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(np.zeros(int(lengths.sum()), np.float32)))
    return write_dataset(path, columns, scores=scores,
                         metadata=DatasetMetadata(luminosity_fb=1.0, model_id="m.pt@sha256:"
                                                  "0123456789ab"))


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> DatasetAnalysis:
    return DatasetAnalysis(JetDataset(_dataset(tmp_path_factory.mktemp("target") / "j.parquet")))


def test_target_process_is_the_tagged_peak(analysis):
    cs = Discriminant(name="cs", numerator=(Term("X_cs"),), denominator="QCD")
    bqq = Discriminant(name="bqq", numerator=(Term("X_YY_qqb"),), denominator="QCD")
    # 5 % of the weight: 210 jets, all of the tagged process, in its peak
    assert analysis.target_process(cs, efficiency=0.05) == "W"
    assert analysis.target_process(bqq, efficiency=0.05) == "top"
    # only the candidates given count; none of them passes the X_cs cut in its window
    assert analysis.target_process(cs, efficiency=0.05, candidates=["top"]) is None
    # a looser cut passes QCD too, in the W window: W stays the most significant
    assert analysis.target_process(cs, efficiency=0.5) == "W"
    with pytest.raises(ValueError, match="unknown"):
        analysis.target_process(cs, candidates=["Higgs"])


def test_constituent_counts_are_the_stored_list_lengths(tmp_path):
    from sophon.scoring import constituent_counts

    n = N_QCD + N_W + N_TOP
    lengths = np.zeros(n, dtype=np.int64)
    lengths[::7] = np.arange(len(lengths[::7])) % 40
    dataset = JetDataset(_dataset(tmp_path / "with.parquet", lengths))
    counts = constituent_counts(dataset, chunk_jets=1000)  # several chunks
    np.testing.assert_array_equal(counts, lengths)
    assert constituent_counts(JetDataset(_dataset(tmp_path / "without.parquet"))) is None


def test_bin_width_label():
    from app.plots import bin_width_label

    edges = np.linspace(0, 500, 101)
    assert bin_width_label("events / bin (138 fb⁻¹)", edges) == "events / 5 GeV (138 fb⁻¹)"
    assert bin_width_label("fraction / bin", np.linspace(0, 5000, 101)) == "fraction / 50 GeV"
    assert bin_width_label("events / bin", np.array([0, 1, 3.0])) == "events / bin"  # unequal
    assert bin_width_label("events", edges) == "events"


def test_stored_model_hash_and_offered_models(tmp_path, monkeypatch):
    from sophon.manifest import sha256_file

    from app.views.rescoring import offered_models, stored_model_hash

    models = tmp_path / "models"
    models.mkdir()
    (models / "a.pt").write_bytes(b"model a")
    (models / "b.pt").write_bytes(b"model b")
    monkeypatch.setenv("SOPHON_MODELS", str(models))

    class Dataset:  # what offered_models reads of a dataset
        def __init__(self, model_id):
            self.metadata = DatasetMetadata(model_id=model_id)

    stored = Dataset(f"a.pt@sha256:{sha256_file(models / 'a.pt')[:12]}")
    assert stored_model_hash(stored) == sha256_file(models / "a.pt")[:12]
    assert offered_models(stored) == (["b.pt"], ["a.pt"])
    assert offered_models(Dataset("synthetic")) == (["a.pt", "b.pt"], [])
    assert stored_model_hash(Dataset("x@sha256:zz")) is None


def test_release_analysis_forgets_the_dataset_and_what_was_derived(tmp_path):
    from app import state

    path = _dataset(tmp_path / "r.parquet")
    loaded = state.load_analysis(path)
    derived = state.shared(loaded, "thing", lambda: object())
    assert state.cached_analysis(path) is loaded
    assert state.release_analysis(path) is True
    assert state.cached_analysis(path) is None
    assert state.shared(state.load_analysis(path), "thing", lambda: object()) is not derived
    assert state.release_analysis(tmp_path / "never.parquet") is False
    cache = BuildOnceCache()
    cache["k"] = 1
    assert cache.pop("k") == 1 and cache.pop("k", 2) == 2 and "k" not in cache
