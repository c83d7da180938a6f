import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sophon.labels import LABELS
from sophon.store import (SCORE_COLUMNS, DatasetError, DatasetMetadata, JetDataset,
                          write_dataset)


def _columns(n, rng):
    return {"jet_pt": rng.uniform(200, 800, n).astype(np.float32),
            "jet_eta": rng.uniform(-2, 2, n).astype(np.float32),
            "jet_phi": rng.uniform(-3, 3, n).astype(np.float32),
            "jet_energy": rng.uniform(300, 900, n).astype(np.float32),
            "jet_sdmass": rng.uniform(0, 300, n).astype(np.float32),
            "process": np.array(["QCD", "ttbar"] * (n // 2), dtype=object),
            "weight": rng.uniform(0.1, 2, n)}


def _scores(n, rng):
    raw = rng.random((n, 188)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


@pytest.fixture
def valid(tmp_path):
    rng = np.random.default_rng(0)
    columns, scores = _columns(100, rng), _scores(100, rng)
    latents = rng.normal(size=(100, 128)).astype(np.float32)
    path = write_dataset(tmp_path / "ok.parquet", columns, scores=scores, latents=latents,
                         metadata=DatasetMetadata(luminosity_fb=140.0, model_id="test"))
    return path, columns, scores, latents


def test_round_trip(valid):
    path, columns, scores, latents = valid
    dataset = JetDataset(path)
    assert dataset.n_jets == 100 and dataset.metadata.luminosity_fb == 140.0
    assert dataset.metadata.labels == LABELS and dataset.metadata.model_id == "test"
    np.testing.assert_array_equal(dataset.scores, scores)
    assert dataset.scores.flags.f_contiguous
    np.testing.assert_array_equal(dataset.latents, latents)
    np.testing.assert_array_equal(dataset.column("jet_sdmass"), columns["jet_sdmass"])
    assert dataset.process_names == ("QCD", "ttbar")
    np.testing.assert_array_equal(dataset.process_codes, [0, 1] * 50)
    assert pq.read_schema(path).field("latent").type == pa.list_(pa.float32(), 128)


def test_directory_of_files(tmp_path):
    rng = np.random.default_rng(1)
    for part in range(3):
        write_dataset(tmp_path / f"part-{part}.parquet", _columns(10, rng),
                      scores=_scores(10, rng), metadata=DatasetMetadata(luminosity_fb=1.0))
    dataset = JetDataset(tmp_path)
    assert dataset.n_jets == 30 and len(dataset.files) == 3


def test_unweighted_dataset_counts_each_jet_once(tmp_path):
    rng = np.random.default_rng(2)
    columns = _columns(10, rng)
    del columns["weight"]
    dataset = JetDataset(write_dataset(tmp_path / "u.parquet", columns, scores=_scores(10, rng)))
    np.testing.assert_array_equal(dataset.weights, np.ones(10))


def _rewrite(path, out, transform):
    table = pq.read_table(path)
    pq.write_table(transform(table), out)
    return out


def _set_column(table, name, values):
    return table.set_column(table.schema.get_field_index(name), name, values)


@pytest.mark.parametrize("case, fragment", [
    ("missing score", "missing score column(s) ['score_QCD_light']"),
    ("extra score", "unknown score column(s) ['score_X_zz']"),
    ("order", "out of JetClass-II order"),
    ("nan score", "'score_X_bb' holds nan"),
    ("sum", "sum to"),
    ("negative weight", "'weight' holds -1.0 at row 3"),
    ("null weight", "'weight' is missing (null) at row 5"),
    ("nan mass", "'jet_sdmass' holds nan at row 2"),
    ("empty", "holds no jets"),
    ("label count", "lists 187 classes"),
    ("label order", "label order differs"),
])
def test_bad_datasets_name_the_problem(valid, tmp_path, case, fragment):
    path = valid[0]
    out = tmp_path / "bad.parquet"

    def transform(table):
        if case == "missing score":
            return table.drop(["score_QCD_light"])
        if case == "extra score":
            return table.append_column("score_X_zz", table["score_X_bb"])
        if case == "order":
            names = list(table.column_names)
            a, b = names.index("score_X_bb"), names.index("score_X_cc")
            names[a], names[b] = names[b], names[a]
            return table.select(names)
        if case == "nan score":
            values = table["score_X_bb"].to_numpy().copy()
            values[4] = np.nan
            return _set_column(table, "score_X_bb", pa.array(values))
        if case == "sum":
            return _set_column(table, "score_X_bb", pa.compute.add(table["score_X_bb"], 0.5))
        if case == "negative weight":
            values = table["weight"].to_numpy().copy()
            values[3] = -1.0
            return _set_column(table, "weight", pa.array(values))
        if case == "null weight":
            values = table["weight"].to_pylist()
            values[5] = None
            return _set_column(table, "weight", pa.array(values, pa.float64()))
        if case == "nan mass":
            values = table["jet_sdmass"].to_numpy().copy()
            values[2] = np.nan
            return _set_column(table, "jet_sdmass", pa.array(values))
        if case == "empty":
            return table.slice(0, 0)
        metadata = DatasetMetadata(labels=LABELS[:-1] if case == "label count"
                                   else (LABELS[1], LABELS[0], *LABELS[2:]))
        return table.replace_schema_metadata({b"sophon": metadata.to_json()})

    _rewrite(path, out, transform)
    with pytest.raises(DatasetError) as info:
        JetDataset(out)
    assert fragment in str(info.value)
    assert "bad.parquet" in str(info.value)


def test_truncated_and_missing_files(valid, tmp_path):
    data = valid[0].read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated.parquet.*unreadable or truncated"):
        JetDataset(truncated)
    with pytest.raises(DatasetError, match="no such dataset"):
        JetDataset(tmp_path / "nowhere.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DatasetError, match="no .parquet files"):
        JetDataset(tmp_path / "empty_dir")


def test_wrong_score_shape_is_refused_on_write(tmp_path):
    with pytest.raises(DatasetError, match="188"):
        write_dataset(tmp_path / "x.parquet", {}, scores=np.zeros((3, 187)))


def test_write_is_atomic_and_leaves_no_temporary(tmp_path, valid):
    _, columns, scores, _ = valid
    target = tmp_path / "atomic.parquet"
    with pytest.raises(DatasetError):
        write_dataset(target, {**columns, "jet_pt": columns["jet_pt"][:5]}, scores=scores)
    assert not target.exists()
    write_dataset(target, columns, scores=scores)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert len(SCORE_COLUMNS) == 188


def test_one_row_is_read_by_index(valid):
    path, columns, _, _ = valid
    dataset = JetDataset(path)
    row = dataset.row(["jet_pt", "process"], 7)
    assert row.height == 1 and row["jet_pt"][0] == columns["jet_pt"][7]
    with pytest.raises(DatasetError, match="no jet 100"):
        dataset.row(["jet_pt"], 100)
    with pytest.raises(DatasetError, match="missing column"):
        dataset.row(["part_deta"], 0)
