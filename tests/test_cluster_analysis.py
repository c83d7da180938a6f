"""sophon.cluster_analysis on a LocalCluster of two one-thread worker processes: the scans are
the in-memory scans of the whole dataset, exactly; the sample is whole events, reproducible,
and its weighted totals agree with the whole dataset's within their statistical error.

The SYNTHETIC dataset (test data only) holds 20,000 jets in two files of odd-sized row groups
(partitions split events, one event spans the two files), with dyadic weights (multiples of
2^-10) so that sums of weights are exact in float64 whatever their order (tests/test_dask.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_split_parts

pytest.importorskip("dask")
pytest.importorskip("distributed")

from sophon.analysis import DatasetAnalysis  # noqa: E402
from sophon.cluster_analysis import SAMPLE_METADATA_KEY, ClusterAnalysis  # noqa: E402
from sophon.dask_scan import DaskScanner, event_draws, sample_events  # noqa: E402
from sophon.discriminant import PRESETS  # noqa: E402
from sophon.store import DatasetMetadata, JetDataset  # noqa: E402
from sophon.synthetic import make_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

N_JETS = 20_000
SPLIT = 9_999  # the first file ends inside an event
ROW_GROUP = 1_777
SAMPLE_JETS = 6_000  # p = 0.3
#: bytes per worker: a worker process alone holds about 300 MB (it pauses at 80 %)
WORKER_MEMORY = 1_000_000_000


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=WORKER_MEMORY, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def write_parts(folder: Path, n_jets: int = N_JETS, split: int = SPLIT) -> Path:
    """A synthetic dataset of ``n_jets`` in two parts of odd row groups, dyadic weights."""
    sample = make_synthetic(n_jets, seed=7, with_latents=False)
    weights = np.round(sample.columns["weight"] * 1024) / 1024
    return write_split_parts(folder, sample, weights, split=split, row_group=ROW_GROUP,
                             metadata=DatasetMetadata(luminosity_fb=100.0, model_id="synthetic",
                                                      extra={"synthetic": True}))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_parts(tmp_path_factory.mktemp("cluster") / "jets")


@pytest.fixture(scope="module")
def scanner(client, dataset_dir):
    return DaskScanner(dataset_dir, client=client, rows_per_partition=4_000)


@pytest.fixture(scope="module")
def whole(dataset_dir):
    return DatasetAnalysis(JetDataset(dataset_dir))


@pytest.fixture(scope="module")
def cluster(scanner, tmp_path_factory):
    return ClusterAnalysis(scanner, tmp_path_factory.mktemp("samples"),
                           max_sample_jets=SAMPLE_JETS)


def _assert_same_scan(got, want) -> None:
    for name in ("thresholds", "efficiencies", "jet_counts", "max_weight", "sum_of_weights",
                 "sum_of_weights_squared", "achieved_efficiencies"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.process_names == want.process_names and got.binning == want.binning


def test_the_scans_are_the_whole_datasets_exactly(cluster, whole):
    discriminant = PRESETS["A1: X->cs"]
    _assert_same_scan(cluster.jet_scan(discriminant, reference="QCD"),
                      whole.jet_scan(discriminant, reference="QCD"))
    _assert_same_scan(cluster.jet_scan(discriminant, jets="leading"),
                      whole.jet_scan(discriminant, jets="leading"))
    triboson = PRESETS["W'->WWW triboson"]
    _assert_same_scan(cluster.event_scan(triboson), whole.event_scan(triboson))


def test_the_sample_is_whole_events_with_weights_divided_by_p(cluster, whole):
    assert cluster.n_jets == N_JETS and cluster.sample_fraction == pytest.approx(0.3)
    sample = cluster.dataset
    assert 0.8 * SAMPLE_JETS < cluster.sample_jets < 1.2 * SAMPLE_JETS
    assert f"of {N_JETS:,} jets" in cluster.sample_description()
    assert sample.path.name == "jets"  # named after the dataset: what exports say
    assert sample.metadata.extra[SAMPLE_METADATA_KEY]["jets"] == N_JETS
    assert sample.metadata.luminosity_fb == 100.0
    full_ids = whole.dataset.column("event_id")
    drawn = np.isin(full_ids, sample.column("event_id"))
    # every jet of a drawn event, in dataset order, each with its weight / p
    np.testing.assert_array_equal(sample.column("event_id"), full_ids[drawn])
    np.testing.assert_array_equal(sample.column("jet_rank"),
                                  whole.dataset.column("jet_rank")[drawn])
    np.testing.assert_array_equal(sample.weights, whole.dataset.weights[drawn] / 0.3)
    np.testing.assert_array_equal(sample.scores, whole.dataset.scores[drawn])
    # the draw is the hash of the event id: the same events whatever the partitioning
    np.testing.assert_array_equal(drawn, event_draws(full_ids, 0) < 0.3)


def test_the_sample_is_reproducible_and_the_seed_changes_it(scanner):
    first, again = (sample_events(scanner, 0.3, seed=0) for _ in range(2))
    assert first.equals(again)
    other = sample_events(scanner, 0.3, seed=1)
    assert set(first["event_id"].to_pylist()) != set(other["event_id"].to_pylist())


def test_weighted_totals_agree_within_their_statistical_error(cluster, whole):
    p = cluster.sample_fraction
    full, sample = whole.dataset, cluster.dataset
    events = whole.events
    for code, name in enumerate(full.process_names):
        estimate = sample.weights[sample.process_codes == sample.process_names.index(name)].sum()
        truth = full.weights[full.process_codes == code].sum()
        # Var = sum over events of W_e^2 (1 - p) / p, W_e the event's weight of the process
        in_process = full.process_codes == code
        per_event = np.bincount(events.event_of_jet[in_process], full.weights[in_process],
                                minlength=events.n_events)
        sigma = np.sqrt((per_event ** 2).sum() * (1 - p) / p)
        assert abs(estimate - truth) < 5 * sigma, name
        assert sigma < 0.25 * truth  # the check means something


def test_p_one_is_the_whole_dataset(scanner, whole, tmp_path):
    everything = ClusterAnalysis(scanner, tmp_path, max_sample_jets=10 * N_JETS)
    assert everything.sample_fraction == 1.0 and everything.sample_jets == N_JETS
    np.testing.assert_array_equal(everything.dataset.weights, whole.dataset.weights)
    np.testing.assert_array_equal(everything.dataset.scores, whole.dataset.scores)
    assert not any(tmp_path.iterdir())  # nothing copied
    table = sample_events(scanner, 1.0)
    assert table.num_rows == N_JETS
    np.testing.assert_array_equal(table["weight"].to_numpy(), whole.dataset.weights)


def test_the_sample_is_written_once(scanner, tmp_path, monkeypatch):
    first = ClusterAnalysis(scanner, tmp_path, max_sample_jets=SAMPLE_JETS)
    import sophon.cluster_analysis as module

    monkeypatch.setattr(module, "sample_events", lambda *a, **k: pytest.fail("drawn again"))
    again = ClusterAnalysis(scanner, tmp_path, max_sample_jets=SAMPLE_JETS)
    assert again.dataset.files == first.dataset.files
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically


def test_the_selection_is_cut_with_the_clusters_thresholds(cluster):
    discriminant = PRESETS["A1: X->cs"]
    scan = cluster.jet_scan(discriminant)
    rows = np.arange(0, cluster.sample_jets, 3)
    selected = cluster.subset_scan(discriminant, scan, rows)
    np.testing.assert_array_equal(selected.thresholds, scan.thresholds)
    values = cluster.log_odds(discriminant)[rows]
    for level in range(scan.n_levels):
        assert selected.selected_jets(level) == int(np.count_nonzero(
            values >= scan.thresholds[level]))


def test_a_bad_address_is_a_message(tmp_path, monkeypatch, dataset_dir):
    from app import state

    monkeypatch.setattr(state, "DASK_CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("SOPHON_DASK", "tcp://127.0.0.1:9")  # the discard port: nobody listens
    monkeypatch.setattr(sys, "argv", ["app"])
    state.clear_cache()
    problem = state.load_analysis(dataset_dir)
    assert isinstance(problem, state.DatasetProblem)
    assert "cannot reach the Dask cluster at tcp://127.0.0.1:9" in problem.message
    assert "Traceback" not in problem.message


def test_dask_address_from_arguments_and_environment():
    from app.state import dask_address

    assert dask_address(["app"], {}) is None
    assert dask_address(["app", "--dask"], {}) == "local"
    assert dask_address(["app", "--dask", "--data", "x"], {}) == "local"
    assert dask_address(["app", "--dask", "local"], {}) == "local"
    assert dask_address(["app", "--dask", "tcp://s:8786"], {}) == "tcp://s:8786"
    assert dask_address(["app", "--dask=tcp://s:8786"], {}) == "tcp://s:8786"
    assert dask_address(["app"], {"SOPHON_DASK": "tcp://e:1"}) == "tcp://e:1"
    assert dask_address(["app", "--dask", "tcp://a:1"], {"SOPHON_DASK": "tcp://e:1"}) == \
        "tcp://a:1"
