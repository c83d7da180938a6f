"""sophon.dask_scan against the in-memory scan, on a LocalCluster of two one-thread worker
processes: the same thresholds and histograms, jet and event level; one test on fresh workers
whose memory limit is below the dataset's size.

Two SYNTHETIC datasets (test data only) hold the same 20,000 jets in two files of odd-sized row
groups, so that partitions split events and one event spans the two files:

- with *dyadic* weights (multiples of 2^-10 below 16): every float64 sum of weights or of
  squared weights over at most 20,000 jets is exact (at most 29 and 43 significant bits), so
  the order of summation cannot matter and the distributed answer must be bit-identical;
- with the synthetic sample's own (continuous) weights: thresholds, jet counts and largest
  weights are still identical; sums of weights, summed per partition and then in a tree
  instead of jet by jet, may differ by rounding: a relative 1e-12 bounds it (n eps with
  n = 20,000 jets is 4.4e-12 in the worst case; the typical error, sqrt(n) eps, is 3e-14).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_split_parts

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from sophon.analysis import DatasetAnalysis  # noqa: E402
from sophon.dask_scan import DaskScanner, dataset_partitions  # noqa: E402
from sophon.discriminant import PRESETS, Discriminant, Term  # noqa: E402
from sophon.spectrum import key_values, order_keys  # noqa: E402
from sophon.store import DatasetError, DatasetMetadata, JetDataset, write_dataset  # noqa: E402
from sophon.synthetic import make_synthetic  # noqa: E402

N_JETS = 20_000
SPLIT = 9_999  # the first file ends inside event 4,999 (rows 9,998 and 9,999)
ROW_GROUP = 1_777  # odd: row groups and partitions split events too
# Bytes per worker of the shared cluster. A worker's resident set settles near 290 MB after its
# first scans (the libraries, arrow's and polars' pools), so a limit whose 80 % pause threshold
# sits near that stalls a later scan for good; these tests are about exactness, not memory.
WORKER_MEMORY = 1_500_000_000
LARGE_WORKER_MEMORY = 500_000_000  # bytes per fresh worker of the larger-than-memory test


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=WORKER_MEMORY, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def sample():
    return make_synthetic(N_JETS, seed=7, with_latents=False)


def _write_parts(folder: Path, sample, weights: np.ndarray) -> Path:
    return write_split_parts(folder, sample, weights, split=SPLIT, row_group=ROW_GROUP,
                             metadata=DatasetMetadata(luminosity_fb=100.0, model_id="synthetic"))


@pytest.fixture(scope="module")
def dyadic(sample, tmp_path_factory) -> Path:
    weights = np.round(sample.columns["weight"] * 1024) / 1024
    return _write_parts(tmp_path_factory.mktemp("dyadic") / "dataset", sample, weights)


@pytest.fixture(scope="module")
def continuous(sample, tmp_path_factory) -> Path:
    return _write_parts(tmp_path_factory.mktemp("continuous") / "dataset", sample,
                        sample.columns["weight"])


@pytest.fixture(scope="module")
def in_memory(dyadic):
    return DatasetAnalysis(JetDataset(dyadic))


def _assert_same_scan(got, want, *, exact: bool) -> None:
    np.testing.assert_array_equal(got.thresholds, want.thresholds)
    assert got.thresholds.dtype == want.thresholds.dtype
    np.testing.assert_array_equal(got.efficiencies, want.efficiencies)
    assert got.process_names == want.process_names and got.binning == want.binning
    assert got.mass_label == want.mass_label
    np.testing.assert_array_equal(got.jet_counts, want.jet_counts)
    np.testing.assert_array_equal(got.max_weight, want.max_weight)
    for name in ("sum_of_weights", "sum_of_weights_squared", "achieved_efficiencies"):
        if exact:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        else:
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12,
                                       atol=0, err_msg=name)


def test_order_keys_follow_the_float_order():
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], dtype=np.float32)
    keys = order_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0) and keys[3] == keys[4]  # -0.0 is +0.0
    np.testing.assert_array_equal(key_values(keys), values + np.float32(0))


def test_without_the_extra_the_message_names_it(monkeypatch):
    import sophon.extras
    from sophon.dask_scan import require_dask
    from sophon.extras import MissingExtraError

    monkeypatch.setattr(sophon.extras, "_installed", lambda module: module != "distributed")
    with pytest.raises(MissingExtraError, match=r"sophon score --dask needs distributed, which "
                                                r"is not installed: pip install "
                                                r"'sophon-explorer\[dask\]'"):
        require_dask("sophon score --dask", distributed=True)


def test_partitions_join_row_groups_of_one_file(dyadic):
    files = sorted(dyadic.glob("*.parquet"))
    partitions = dataset_partitions(files, rows_per_partition=4_000)
    assert sum(p.rows for p in partitions) == N_JETS
    assert [p.first_row for p in partitions] == list(np.cumsum([0] + [p.rows for p in
                                                                      partitions])[:-1])
    assert all(p.rows <= 4_000 for p in partitions) and len({p.file for p in partitions}) == 2
    assert dataset_partitions(files, 1)[0].row_groups == (0,)  # a row group is never split


@pytest.mark.parametrize("reference", ["all", "QCD"])
@pytest.mark.parametrize("jets", ["all", "leading"])
def test_jet_scan_is_the_in_memory_scan(client, dyadic, in_memory, reference, jets):
    scanner = DaskScanner(dyadic, client=client, rows_per_partition=4_000)
    discriminant = PRESETS["A1: X->cs"]
    got = scanner.jet_scan(discriminant, reference=reference, jets=jets)
    _assert_same_scan(got, in_memory.jet_scan(discriminant, reference=reference, jets=jets),
                      exact=True)
    report = scanner.last_report
    assert report.passes == 2 and report.partitions == len(scanner.partitions) == 6
    assert 0 < report.candidates < N_JETS / 20  # only the cut buckets' jets reach the driver
    assert np.all(report.decision_margins > 1e-13)  # far from any rounding of the sums


def test_continuous_weights_differ_by_rounding_only(client, continuous):
    scanner = DaskScanner(continuous, client=client, rows_per_partition=4_000)
    discriminant = PRESETS["A3: X->b q q"]
    want = DatasetAnalysis(JetDataset(continuous)).jet_scan(discriminant, reference="QCD")
    _assert_same_scan(scanner.jet_scan(discriminant, reference="QCD"), want, exact=False)


def test_event_scan_joins_events_split_between_partitions(client, dyadic, in_memory):
    scanner = DaskScanner(dyadic, client=client, rows_per_partition=4_000)
    discriminant = PRESETS["W'->WWW triboson"]
    got = scanner.event_scan(discriminant)
    _assert_same_scan(got, in_memory.event_scan(discriminant), exact=True)
    # the events cut by a partition boundary (two jets per event: a boundary at an odd row),
    # the one across the two files among them
    split = [p.first_row for p in scanner.partitions[1:] if p.first_row % 2]
    assert SPLIT in split and scanner.last_report.shared_events == len(split) >= 3
    np.testing.assert_array_equal(scanner.shared_event_ids(), [[row // 2] * 2 for row in split])


def test_crowded_cut_buckets_are_refined_to_the_exact_key(client, dyadic, in_memory):
    scanner = DaskScanner(dyadic, client=client, rows_per_partition=4_000, max_candidates=40)
    discriminant = PRESETS["A2: X->bb"]
    got = scanner.jet_scan(discriminant, reference="QCD")
    _assert_same_scan(got, in_memory.jet_scan(discriminant, reference="QCD"), exact=True)
    report = scanner.last_report
    assert report.passes == 3 and report.refined_levels and report.candidates <= 40
    got = scanner.event_scan(PRESETS["W'->WWW triboson"])
    _assert_same_scan(got, in_memory.event_scan(PRESETS["W'->WWW triboson"]), exact=True)
    assert scanner.last_report.passes == 3


def test_bad_values_name_the_file_column_and_row(client, dyadic, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for file in sorted(dyadic.glob("*.parquet")):
        table = pq.read_table(file)
        if file.name == "part-1.parquet":
            weights = table["weight"].to_numpy().copy()
            weights[1234] = -1.0
            table = table.set_column(table.schema.get_field_index("weight"), "weight",
                                     pa.array(weights))
        pq.write_table(table, bad / file.name, row_group_size=ROW_GROUP)
    scanner = DaskScanner(bad, client=client, rows_per_partition=4_000)
    with pytest.raises(DatasetError, match=r"part-1\.parquet: column 'weight' holds -1\.0 at "
                                           r"row 1234; weights must be"):
        scanner.jet_scan(PRESETS["A1: X->cs"])
    with pytest.raises(ValueError, match="decreasing"):
        scanner.jet_scan(PRESETS["A1: X->cs"], efficiencies=[1e-3, 1e-2])


def test_interleaved_events_are_refused_with_the_parts_named(client, dyadic, tmp_path):
    folder = tmp_path / "interleaved"
    folder.mkdir()
    for file in sorted(dyadic.glob("*.parquet")):  # both files hold event ids from 0
        table = pq.read_table(file)
        ids = table["event_id"].to_numpy()
        table = table.set_column(table.schema.get_field_index("event_id"), "event_id",
                                 pa.array(ids - ids.min()))
        pq.write_table(table, folder / file.name, row_group_size=ROW_GROUP)
    scanner = DaskScanner(folder, client=client, max_shared_events=100)
    with pytest.raises(DatasetError, match=r"part-0\.parquet .*part-1\.parquet.* overlap"):
        scanner.event_scan(PRESETS["W'->WWW triboson"])


def test_a_pass_that_a_paused_worker_holds_up_times_out_with_a_clear_error(dyadic, in_memory):
    """A worker paused for memory runs no task; a scan then ends at the scanner's time limit,
    saying why, and the same scanner scans again once the worker runs."""
    from distributed import Client, LocalCluster
    from distributed.core import Status

    from sophon.dask_scan import ClusterTimeout

    def set_status(status):
        def set_it(dask_worker):
            dask_worker.status = status
        return set_it

    # no memory limit: no monitor that resumes the worker it finds below its pause threshold
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        scanner = DaskScanner(dyadic, client=client, rows_per_partition=ROW_GROUP, timeout=3.0)
        client.run(set_status(Status.paused))
        with pytest.raises(ClusterTimeout, match=r"within 3 s .*paused for memory"):
            scanner.jet_scan(PRESETS["A2: X->bb"])
        client.run(set_status(Status.running))
        _assert_same_scan(scanner.jet_scan(PRESETS["A2: X->bb"]),
                          in_memory.jet_scan(PRESETS["A2: X->bb"]), exact=True)


@pytest.fixture
def fresh_client():
    """Two new one-thread worker processes: what the earlier tests left in a worker's memory
    (arrow's pools, imported modules) must not count against this test's limit, or a worker
    sits near dask's pause threshold and the scan crawls."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=LARGE_WORKER_MEMORY, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_a_dataset_larger_than_the_workers_memory(fresh_client, sample, tmp_path):
    """1.5M jets, every score column read (a denominator of all classes): 1.1 GB of scores
    against 2 x 500 MB of worker memory. The same 20,000 jets repeated 75 times (one row group
    each), so the answer is 75 times the in-memory scan of those jets, at the same
    thresholds."""
    client = fresh_client
    repeats, rows = 75, N_JETS
    path = tmp_path / "large" / "part-0.parquet"
    small = tmp_path / "small.parquet"
    write_dataset(small, sample.columns, scores=sample.scores,
                  metadata=DatasetMetadata(luminosity_fb=100.0, model_id="synthetic"))
    table = pq.read_table(small)
    path.parent.mkdir()
    with pq.ParquetWriter(path, table.schema, compression="none") as writer:
        for _ in range(repeats):
            writer.write_table(table)
    assert path.stat().st_size > 2 * LARGE_WORKER_MEMORY and rows * repeats * 188 * 4 > 1.1e9
    workers = set(client.scheduler_info()["workers"])
    discriminant = Discriminant("X_cs vs all", (Term("X_cs"),), denominator="all")
    scanner = DaskScanner(path.parent, client=client, rows_per_partition=rows)
    got = scanner.jet_scan(discriminant)
    assert set(client.scheduler_info()["workers"]) == workers  # no worker was lost
    resident = client.run(lambda: __import__("psutil").Process().memory_info().rss)
    assert max(resident.values()) < 0.8 * LARGE_WORKER_MEMORY  # below where dask pauses one
    want = DatasetAnalysis(JetDataset(small)).jet_scan(discriminant)
    np.testing.assert_array_equal(got.thresholds, want.thresholds)
    np.testing.assert_array_equal(got.jet_counts, repeats * want.jet_counts)
    np.testing.assert_allclose(got.sum_of_weights, repeats * want.sum_of_weights, rtol=1e-12)
    assert scanner.last_report.jets_read == repeats * rows


# --- sophon score --dask ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_cluster():
    """Two one-thread workers in this process (the model loads fast, torch is imported): the
    scheduler address ``sophon score --dask ADDRESS`` connects to."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def score_inputs(reference_table, tmp_path_factory) -> list[Path]:
    """The 100 reference JetClass-II jets in three input files."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for number, (start, stop) in enumerate(((0, 33), (33, 66), (66, 100))):
        path = folder / f"jets{number}.parquet"
        pq.write_table(reference_table.slice(start, stop - start), path)
        paths.append(path)
    return paths


def _score(*argv: str) -> int:
    """``sophon score`` on one torch thread: the in-process run and the workers' then sum in
    the same order (a float32 matmul's bits depend on how many threads split it, and a worker
    thread need not start with the main thread's count)."""
    import torch

    from sophon.cli import main

    threads = torch.get_num_threads()
    try:
        return main(["score", *argv, "--device", "cpu", "--threads", "1", "-q"])
    finally:
        torch.set_num_threads(threads)


def test_score_on_dask_writes_the_in_process_parts_and_resumes(threaded_cluster, score_inputs,
                                                               model_file, tmp_path):
    model = str(model_file[0])
    inputs = [str(p) for p in score_inputs]
    assert _score(*inputs, "--model", model, "-o", str(tmp_path / "here")) == 0
    assert _score(*inputs, "--model", model, "-o", str(tmp_path / "dask"),
                  "--dask", threaded_cluster.scheduler_address) == 0
    for source in score_inputs:
        here = pq.read_table(tmp_path / "here" / f"part-{source.stem}.parquet")
        there = pq.read_table(tmp_path / "dask" / f"part-{source.stem}.parquet")
        assert there.equals(here) and there.schema.metadata == here.schema.metadata
    assert len(JetDataset(tmp_path / "dask")) == 100  # validates
    parts = sorted((tmp_path / "dask").glob("part-*.parquet"))
    assert not [p for p in (tmp_path / "dask").iterdir() if p.name.startswith(".")]
    # resumable: complete parts are skipped, a missing one is scored again
    written = {p: p.stat().st_mtime_ns for p in parts}
    parts[1].unlink()
    assert _score(*inputs, "--model", model, "-o", str(tmp_path / "dask"),
                  "--dask", threaded_cluster.scheduler_address) == 0
    assert parts[0].stat().st_mtime_ns == written[parts[0]]
    assert parts[2].stat().st_mtime_ns == written[parts[2]]
    assert pq.read_table(parts[1]).equals(
        pq.read_table(tmp_path / "here" / parts[1].name))
    # nothing left to score: no cluster is reached (this address has none)
    assert _score(*inputs, "--model", model, "-o", str(tmp_path / "dask"),
                  "--dask", "tcp://127.0.0.1:1") == 0


def test_score_on_dask_names_the_bad_input(threaded_cluster, score_inputs, model_file,
                                           tmp_path, capsys):
    table = pq.read_table(score_inputs[1])
    pt = table["jet_pt"].to_numpy().copy()
    pt[5] = np.nan
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("jet_pt"), "jet_pt",
                                    pa.array(pt)), bad)
    output = tmp_path / "out"
    assert _score(str(score_inputs[0]), str(bad), "--model", str(model_file[0]), "-o",
                  str(output), "--dask", threaded_cluster.scheduler_address) == 2
    error = capsys.readouterr().err
    assert f"{bad}: jet at row 5 has a non-finite value (nan) in column 'jet_pt'" in error
    assert not (output / "part-bad.parquet").exists()
    assert not [p for p in output.iterdir() if p.name.startswith(".")]
