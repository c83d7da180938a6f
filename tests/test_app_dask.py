"""The app's explorer and views on a :class:`~sophon.cluster_analysis.ClusterAnalysis` (no
browser): a discriminant change computes on the cluster in the background with a progress
indicator, the spectra are the in-memory ones of the whole dataset, the efficiency slider never
computes, a stale result is dropped, a cluster error reaches the page as text.

A LocalCluster of two one-thread worker processes; the SYNTHETIC dataset of
tests/test_cluster_analysis.py (test data only). The scanner's scans are wrapped to count them
and, for a chosen discriminant, to wait until the test lets them go.
"""

from __future__ import annotations

import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document

pytest.importorskip("dask")
pytest.importorskip("distributed")

import panel as pn  # noqa: E402

from sophon.analysis import DatasetAnalysis  # noqa: E402
from sophon.cluster_analysis import ClusterAnalysis  # noqa: E402
from sophon.dask_scan import DaskScanner  # noqa: E402
from sophon.discriminant import PRESETS  # noqa: E402
from sophon.store import DatasetError, JetDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

from app import state  # noqa: E402
from app.explorer import DEFAULT_DISCRIMINANT, EFFICIENCIES, Explorer  # noqa: E402
from app.page import SophonApp  # noqa: E402
from app.views import SpectrumView  # noqa: E402
from app.views.spectrum import curve_values  # noqa: E402
from test_cluster_analysis import client, write_parts  # noqa: E402,F401  (a fixture)

WAIT_S = 120  # the longest a test waits for a scan on two busy cores
A1, A2 = PRESETS["A1: X->cs"], PRESETS["A2: X->bb"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_parts(tmp_path_factory.mktemp("app-dask") / "jets")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("samples")  # drawn by the first test, read by the others


@pytest.fixture(scope="module")
def whole(dataset_dir) -> DatasetAnalysis:
    return DatasetAnalysis(JetDataset(dataset_dir))


class Gate:
    """Wraps a scanner's scans: records each call, and holds those of the discriminants in
    :attr:`held` until their event is set."""

    def __init__(self, scanner: DaskScanner):
        self.calls: list[tuple[str, str]] = []
        self.held: dict[str, threading.Event] = {}
        self.fail: Exception | None = None
        for name in ("jet_scan", "event_scan"):
            setattr(scanner, name, self._wrapped(name, getattr(scanner, name)))

    def _wrapped(self, name, scan):
        def wrapped(discriminant, **options):
            self.calls.append((name, discriminant.name))
            held = self.held.get(discriminant.name)
            if held is not None:
                assert held.wait(WAIT_S)
            if self.fail is not None:
                raise self.fail
            return scan(discriminant, **options)

        return wrapped

    def hold(self, discriminant) -> threading.Event:
        self.held[discriminant.name] = threading.Event()
        return self.held[discriminant.name]


@pytest.fixture()
def cluster(client, dataset_dir, samples):  # noqa: F811  (the fixture imported above)
    state.clear_cache()  # results are cached per analysis: none of an earlier test's
    scanner = DaskScanner(dataset_dir, client=client, rows_per_partition=4_000)
    analysis = ClusterAnalysis(scanner, samples, max_sample_jets=6_000)
    analysis.gate = Gate(scanner)
    return analysis


def settled(explorer: Explorer) -> Explorer:
    """``explorer`` once its last cluster scan was delivered."""
    if explorer.pending_scans is not None:
        explorer.pending_scans.result(timeout=WAIT_S)
    return explorer


def assert_same_scan(got, want) -> None:
    for name in ("thresholds", "jet_counts", "sum_of_weights", "sum_of_weights_squared"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_discriminant_change_computes_on_the_cluster_with_a_progress_indicator(cluster,
                                                                                 whole):
    explorer = settled(Explorer(analysis=cluster))
    assert_same_scan(explorer.scan, whole.jet_scan(DEFAULT_DISCRIMINANT,
                                                   efficiencies=EFFICIENCIES))
    view = SpectrumView(explorer)
    pn.panel(view).get_root(Document())
    released = cluster.gate.hold(A1)
    explorer.discriminant = A1
    # the watcher returned at once: the scan runs in a thread, the page says so meanwhile
    assert explorer.computing.startswith("Computing the spectra on the cluster (6 partitions")
    assert view._computing.visible and view._computing_text.object == explorer.computing
    assert_same_scan(explorer.scan, whole.jet_scan(DEFAULT_DISCRIMINANT,
                                                   efficiencies=EFFICIENCIES))
    released.set()
    settled(explorer)
    assert explorer.computing == "" and not view._computing.visible and explorer.error == ""
    want = whole.jet_scan(A1, efficiencies=EFFICIENCIES)
    assert_same_scan(explorer.scan, want)
    assert_same_scan(explorer.event_scan, whole.event_scan(A1, efficiencies=EFFICIENCIES))
    np.testing.assert_array_equal(view.curves()[explorer.level],
                                  curve_values(want, explorer.level))
    # the slider picks levels of the scan: nothing more is computed
    calls, pending = len(cluster.gate.calls), explorer.pending_scans
    for efficiency in EFFICIENCIES:
        explorer.efficiency = efficiency
        np.testing.assert_array_equal(view.curves()[explorer.level],
                                      curve_values(want, explorer.level))
    assert len(cluster.gate.calls) == calls and explorer.pending_scans is pending
    # back to a discriminant the process has scanned: at once, from the shared cache
    explorer.discriminant = DEFAULT_DISCRIMINANT
    assert explorer.computing == "" and explorer.pending_scans is pending
    assert len(cluster.gate.calls) == calls


def test_a_stale_result_is_dropped(cluster, whole):
    explorer = settled(Explorer(analysis=cluster))
    released = cluster.gate.hold(A1)
    explorer.discriminant = A1
    overtaken = explorer.pending_scans
    explorer.discriminant = A2  # while A1's scan waits
    settled(explorer)
    assert_same_scan(explorer.scan, whole.jet_scan(A2, efficiencies=EFFICIENCIES))
    assert explorer.computing == ""
    released.set()
    overtaken.result(timeout=WAIT_S)  # A1's scan is done, and not shown
    assert_same_scan(explorer.scan, whole.jet_scan(A2, efficiencies=EFFICIENCIES))
    assert explorer.discriminant == A2 and explorer.computing == ""


def test_a_cluster_error_reaches_the_page_as_text(cluster):
    explorer = settled(Explorer(analysis=cluster))
    before = explorer.scan
    cluster.gate.fail = DatasetError("part-1.parquet: column 'score_X_cs' holds nan at row 7")
    explorer.discriminant = A1
    settled(explorer)
    assert explorer.computing == "" and explorer.scan is before
    assert explorer.error == ("Could not compute the spectra on the cluster: part-1.parquet: "
                              "column 'score_X_cs' holds nan at row 7")


def test_a_scan_past_its_time_limit_reaches_the_page_as_text(cluster, caplog):
    from sophon.dask_scan import ClusterTimeout

    explorer = settled(Explorer(analysis=cluster))
    reason = (f"{cluster.path}: the Dask cluster did not finish a pass over 6 partitions within "
              "600 s (a worker paused for memory runs no task: see the cluster's dashboard)")
    cluster.gate.fail = ClusterTimeout(reason)
    explorer.discriminant = A1
    settled(explorer)
    assert explorer.computing == ""  # the spinner stops
    assert explorer.error == f"Could not compute the spectra on the cluster: {reason}"
    assert "Traceback" not in caplog.text  # an expected failure, not a crash in the log


def test_the_latent_selection_is_cut_with_the_clusters_thresholds(cluster):
    app = SophonApp(settled(Explorer(analysis=cluster)))
    explorer = app.explorer
    assert "scanned on the Dask cluster" in app.header.object
    assert f"{cluster.sample_jets:,} of 20,000 jets" in app.header.object
    rows = explorer.select_box((-1.0, -1.0, 1.0, 1.0))
    assert len(rows) and rows.max() < cluster.sample_jets  # jets of the sample
    selected = explorer.selection_scan
    np.testing.assert_array_equal(selected.thresholds, explorer.scan.thresholds)
    values = cluster.log_odds(explorer.discriminant)[rows]
    assert selected.selected_jets(explorer.level) == int(np.count_nonzero(
        values >= explorer.scan.thresholds[explorer.level]))
    latent = app.latent
    assert "A sample of" in latent._note.object and "of 20,000 jets" in latent._note.object


class SessionContext:  # what a served document has (Bokeh keeps a weak reference to it)
    pass


def _served_document(monkeypatch) -> tuple[Document, SessionContext, list]:
    """A document that looks served, whose next-tick callbacks are collected, not run."""
    document, context, ticks = Document(), SessionContext(), []
    document._session_context = weakref.ref(context)
    monkeypatch.setattr(document, "add_next_tick_callback", ticks.append)
    return document, context, ticks


def test_on_a_served_page_the_result_comes_as_a_next_tick_callback(cluster, whole, monkeypatch):
    """Served, the scan's thread never touches the session: it hands the result to the page's
    document as a next-tick callback, which Bokeh runs on the event loop with the lock held."""
    from panel.io.state import set_curdoc

    explorer = settled(Explorer(analysis=cluster))
    document, context, ticks = _served_document(monkeypatch)
    with set_curdoc(document):
        explorer.discriminant = A1
    settled(explorer)
    assert len(ticks) == 1 and explorer.computing  # computed, not yet applied
    assert_same_scan(explorer.scan, whole.jet_scan(DEFAULT_DISCRIMINANT,
                                                   efficiencies=EFFICIENCIES))
    ticks[0]()  # the event loop's next tick
    assert explorer.computing == ""
    assert_same_scan(explorer.scan, whole.jet_scan(A1, efficiencies=EFFICIENCIES))


def test_on_a_served_page_a_cluster_error_comes_at_the_next_tick_as_text(cluster, monkeypatch):
    """The error is shown after the computing thread has left its handler (a callback that
    looked the error up by name then would fail)."""
    from panel.io.state import set_curdoc

    explorer = settled(Explorer(analysis=cluster))
    document, context, ticks = _served_document(monkeypatch)
    cluster.gate.fail = DatasetError("part-0.parquet: column 'weight' holds -1.0 at row 3")
    with set_curdoc(document):
        explorer.discriminant = A2
    settled(explorer)
    assert len(ticks) == 1 and explorer.computing
    ticks[0]()
    assert explorer.computing == "" and explorer.error == (
        "Could not compute the spectra on the cluster: part-0.parquet: column 'weight' holds "
        "-1.0 at row 3")
