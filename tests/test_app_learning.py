"""The Learning tab (app/views/learning.py) without a browser, on a small SYNTHETIC dataset whose
answers are known by construction: the Higgs jets' latents are shifted along one direction that
the (random) node scores do not see, so the trained head beats the best node discriminant on the
held-out half; the Higgs jets peak at 150 GeV with a lower tau2/tau1, so the sliding-window
search raises the non-QCD share in the 150 GeV window. Jobs run in the app's worker thread; the
tests wait for them."""

from __future__ import annotations

import html
import io
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import panel as pn
import polars as pl
import pytest
from conftest import shifted_latents
from bokeh.document import Document

from sophon.discriminant import PRESETS, Discriminant
from sophon.manifest import sha256_file
from sophon.spectrum import EfficiencyScan
from sophon.store import DatasetMetadata, write_dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

from app import limits  # noqa: E402
from app.explorer import EFFICIENCIES, Explorer  # noqa: E402
from app.page import TAB_NAMES, SophonApp  # noqa: E402
from app.views import learning  # noqa: E402
from app.views.composer import ComposerView  # noqa: E402
from app.views.learning import (HeadDiscriminant, LearningView, parse_jet_set,  # noqa: E402
                                start_job)
from app.views.spectrum import SpectrumView  # noqa: E402

N_QCD, N_HIGGS = 12_000, 1_500
SHIFT = 2.0  # the Higgs latents' shift along one unit direction
PEAK = 150.0  # GeV
WAIT_S = 600.0  # a job on a loaded two-core machine


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write_learning_dataset(path: Path, model_id: str, seed: int = 5, *, n_qcd: int = N_QCD,
                           n_higgs: int = N_HIGGS) -> Path:
    """QCD: mass flat in 40-320 GeV, weights log-uniform over 1.5 decades; Higgs: mass
    N(150, 4) GeV, weight 1, latents shifted by SHIFT along one direction, tau2/tau1 lower.
    Scores drawn alike for both (Dirichlet): no node discriminant sees the Higgs."""
    rng = np.random.default_rng(seed)
    n = n_qcd + n_higgs
    higgs = np.arange(n) >= n_qcd
    latents = shifted_latents(rng, higgs, SHIFT)
    mass = np.where(higgs, rng.normal(PEAK, 4.0, n), rng.uniform(40.0, 320.0, n))
    tau1 = rng.uniform(0.2, 0.4, n)
    tau21 = np.where(higgs, rng.uniform(0.1, 0.4, n), rng.uniform(0.3, 0.9, n))
    jets = {"jet_pt": rng.uniform(300, 900, n).astype(np.float32),
            "jet_sdmass": mass.astype(np.float32),
            "jet_tau1": tau1.astype(np.float32), "jet_tau2": (tau1 * tau21).astype(np.float32),
            "jet_tau3": (tau1 * tau21 * 0.7).astype(np.float32),
            "jet_tau4": (tau1 * tau21 * 0.5).astype(np.float32),
            "process": np.where(higgs, "Higgs", "QCD").astype(object),
            "weight": np.where(higgs, 1.0, 10.0 ** rng.uniform(0.0, 1.5, n))}
    return write_dataset(path, jets, scores=rng.dirichlet(np.ones(188), size=n),
                         latents=latents,
                         metadata=DatasetMetadata(luminosity_fb=100.0, model_id=model_id,
                                                  extra={"synthetic": True}))


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_file):
    """(dataset path, models folder): the dataset's model id names the hash of the model file
    in the models folder, whose head preloads the transfer head."""
    folder = tmp_path_factory.mktemp("learning")
    models = folder / "models"
    models.mkdir()
    model = shutil.copy(model_file[0], models / "small.pt")
    model_id = f"small.pt@sha256:{sha256_file(model)[:12]}"
    return write_learning_dataset(folder / "jets.parquet", model_id), models


@pytest.fixture()
def explorer(served, monkeypatch, tmp_path) -> Explorer:
    path, models = served
    monkeypatch.setenv("SOPHON_MODELS", str(models))
    monkeypatch.setenv("SOPHON_OUTPUT", str(tmp_path / "output"))
    return Explorer.from_path(path)


def render(viewable) -> None:
    pn.panel(viewable).get_root(Document())


def _quick(view: LearningView, epochs: int = 10) -> LearningView:
    view.epochs = epochs
    return view


# --- transfer learning ---------------------------------------------------------------------------
def test_training_beats_the_node_discriminant_and_states_the_rejections(explorer):
    view = _quick(LearningView(explorer))
    render(view)
    assert (view.signal, view.background) == ("process:Higgs", "process:QCD")
    assert "1,500 jets" in view._signal_status.object and "12,000 jets" in \
        view._background_status.object
    job = view.train(wait=True)
    assert job.state == "done", job.message
    result = view.transfer_result
    head, node = result.rejection(0.5), result.rejection(0.5, nodes=True)
    # a unit Gaussian shifted by 2: the best cut at 50 % keeps 2.3 % of the background
    # (rejection 44); the random node scores give about 1/0.5 = 2
    assert head.rejection > 8 and head.rejection > 3 * node.rejection
    assert 1.3 < node.rejection < 3.5
    text = view._transfer_text.object
    assert "30%" in text and "50%" in text
    assert f"<span class='learning-head-rejection'>{learning.format_number(head.rejection)}" \
        in text
    assert "750 signal and 6,000 background jets" in text  # the held-out halves
    assert view.status["training"].startswith("✓ done")
    assert view._roc.visible and view._roc.object is not None
    render(view)  # the ROC plot draws
    assert not view._use.disabled and not view._train.disabled
    name, data = view.score_file()
    assert name == "transfer_Higgs_vs_QCD.parquet"
    column = pl.read_parquet(io.BytesIO(data))
    np.testing.assert_array_equal(column["transfer_Higgs_vs_QCD"].to_numpy(), result.values)


def test_the_head_is_the_sessions_discriminant(explorer):
    composer = ComposerView(explorer)  # the form's round trip must not replace the head
    spectrum = SpectrumView(explorer)
    view = _quick(LearningView(explorer))
    view.train(wait=True)
    result = view.transfer_result
    head = view.use_as_discriminant()
    assert isinstance(head, HeadDiscriminant) and explorer.discriminant is head
    assert "(trained head" in head.name and head.numerator == result.node_discriminant.numerator
    # the spectrum view cuts on the head's score, as on any discriminant
    dataset = explorer.dataset
    expected = EfficiencyScan.build(result.values, explorer.analysis.mass_index, dataset.weights,
                                    dataset.process_codes, dataset.process_names,
                                    efficiencies=EFFICIENCIES, binning=explorer.analysis.binning)
    np.testing.assert_array_equal(explorer.scan.thresholds, expected.thresholds)
    np.testing.assert_allclose(explorer.scan.sum_of_weights, expected.sum_of_weights)
    explorer.efficiency = 1e-2
    assert "Selected jets" in spectrum._stats.object
    # the Higgs are 1.4 % of the weight; at 1 % of it the head keeps far more than that
    shares = explorer.scan.process_shares(explorer.level)
    assert shares["Higgs"] > 0.1
    # the composer shows the head's definition and keeps the head
    assert composer.discriminant_name == head.name
    assert "p_\\mathrm{s}" in composer._latex.object
    np.testing.assert_allclose(explorer.analysis.discriminant(head),
                               1 / (1 + np.exp(-result.values)), rtol=1e-5)
    # a preset leaves the head; the button brings it back
    composer.apply_preset("X->bb vs QCD")
    assert explorer.discriminant == PRESETS["X->bb vs QCD"]
    assert view.use_as_discriminant() is head and explorer.discriminant is head
    # a link holds its stand-in: a plain discriminant, equal to no head
    stand_in = head.stand_in()
    assert type(stand_in) is Discriminant and stand_in != head
    assert stand_in.to_dict() == head.to_dict()


def test_the_head_outlives_the_composers_round_trip_on_a_served_page(explorer, monkeypatch):
    """On a served page the composer applies its form at the server's next tick: the form,
    loaded with the head's definition, builds the plain stand-in then, which the composer knows
    for the head's: the session's discriminant is the head throughout, never the stand-in (whose
    scans would be computed for nothing)."""
    from app.views import composer as composer_module

    composer = ComposerView(explorer)
    view = _quick(LearningView(explorer), epochs=2)
    view.train(wait=True)
    next_tick = []
    monkeypatch.setattr(composer_module, "in_document_lock", next_tick.append)
    applied = []
    explorer.param.watch(lambda event: applied.append(event.new), "discriminant")
    head = view.use_as_discriminant()
    assert explorer.discriminant is head and next_tick  # the form's application waits
    while next_tick:
        next_tick.pop(0)()
    assert explorer.discriminant is head and applied == [head]
    assert "p_\\mathrm{s}" in composer._latex.object and not composer._alert.visible


def test_an_ensemble_of_heads_is_trained_and_said(explorer):
    view = _quick(LearningView(explorer), epochs=3)
    render(view)
    view._ensemble.value = 2  # typed into the page's input
    assert view.ensemble == 2 and view.transfer_options().ensemble == 2
    job = view.train(wait=True)
    assert job.state == "done", job.message
    assert job.total == 6 and job.done == 6  # three epochs of each of two heads
    result = view.transfer_result
    assert len(result.head.members) == 2
    assert "the average of 2 heads of 256 hidden units" in view._transfer_text.object
    with pytest.raises(ValueError):  # the bound: each head costs one training
        view.ensemble = limits.MAX_TRANSFER_ENSEMBLE + 1


def test_cancel_stops_the_training_and_frees_the_session(explorer):
    view = _quick(LearningView(explorer), epochs=limits.MAX_TRANSFER_EPOCHS)
    job = view.train()
    deadline = time.monotonic() + WAIT_S
    while job.done < 1 and not job.finished and time.monotonic() < deadline:
        time.sleep(0.005)
    view.cancel()
    assert job.wait(WAIT_S)
    view.poll()
    assert job.state == "cancelled" and job.done < limits.MAX_TRANSFER_EPOCHS
    assert "cancelled" in view.status["training"]
    assert view.transfer_result is None and view._use.disabled
    assert view.usage.running == 0 and not view._train.disabled  # the slot is free again


def test_bad_sets_are_named_in_the_page_and_start_nothing(explorer):
    view = LearningView(explorer)
    cases = {"process:Zprime": "unknown process 'Zprime'; the processes are Higgs, QCD",
             "rows:/etc/passwd": "reads a file, and the page reads no file of the server",
             "file:/etc/hostname": "reads a file",
             "classes:X_bb": "the dataset has no true classes",
             "selection": "none are selected",
             "  ": "a jet set is empty"}
    for text, reason in cases.items():
        view.signal = text
        assert view.train() is None
        assert view.status["training"].startswith("Not started: the signal set: ")
        assert reason in view.status["training"], (text, view.status["training"])
        assert html.escape(reason) in view._signal_status.object or text == "selection"
    assert view.usage.running == 0
    # typed HTML is shown as text
    view.signal = "<img src=x onerror=alert(1)>"
    view.train()
    box = view._train_status.objects[0].object
    assert "<img" not in box and "&lt;img src=x onerror=alert(1)&gt;" in box
    # too few jets: a job that fails with the library's message
    explorer.select_indices(np.arange(N_QCD, N_QCD + 5))
    view.signal = "selection"
    job = view.train(wait=True)
    assert job.state == "failed"
    assert "holds 5 jets; at least 20 are needed" in view.status["training"]
    with pytest.raises(ValueError, match="reads a file"):
        parse_jet_set("rows:selection.csv")


def test_a_dataset_without_the_model_says_so(explorer, monkeypatch, tmp_path):
    monkeypatch.setenv("SOPHON_MODELS", str(tmp_path / "no-models"))
    view = LearningView(explorer)
    assert view.train() is None
    assert "names none that this server has" in view.status["training"]


# --- the sliding-window search -------------------------------------------------------------------
@pytest.fixture()
def quick_search(monkeypatch):
    monkeypatch.setattr(learning, "SCAN_BOOSTING_ITERATIONS", 20)
    monkeypatch.setattr(learning, "MAX_SCAN_JETS_PER_WINDOW", 3000)


def _search_view(explorer) -> LearningView:
    view = LearningView(explorer)
    view.param.update(start=140.0, stop=160.0, step=10.0, working_point=0.1,
                      features="highlevel", jets="all")
    return view


def test_search_raises_the_share_in_the_resonance_window(explorer, quick_search):
    view = _search_view(explorer)
    assert "3 windows: m0 = 140 … 160 GeV" in view._windows_status.object
    job = view.search(wait=True)
    assert job.state == "done", job.message
    scan = view.scan_result
    assert [w.window.centre for w in scan.windows] == [140.0, 150.0, 160.0]
    assert PEAK in scan.share_enhanced_windows
    peak = scan.windows[1]
    assert peak.non_qcd_share[0] > 3 * peak.baseline_share[0]
    assert f"{PEAK:g} GeV" in view._search_text.object
    # the stack: one layer per process, the bars are the windows' selected events
    stack = view._stack.object
    assert [layer.label for layer in stack] == ["QCD", "Higgs"]
    tops = stack.get(1).dframe()[["x0", "x1", "y1"]].to_numpy()
    edges, stacked = scan.stack()
    np.testing.assert_allclose(tops[:, :2], edges)
    np.testing.assert_allclose(tops[:, 2], stacked["QCD"] + stacked["Higgs"])
    assert view._excess.object is not None and view._shares.object is not None
    render(view)


def test_search_is_cancelled_after_the_current_window(explorer, quick_search):
    view = _search_view(explorer)
    job = view.search()
    deadline = time.monotonic() + WAIT_S
    while job.done < 1 and not job.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    view.cancel()
    assert job.wait(WAIT_S)
    view.poll()
    assert job.state == "cancelled" and job.done < 3
    assert view.scan_result is None and "cancelled" in view.status["search"]


def test_windows_are_bounded_and_named(explorer):
    view = LearningView(explorer)
    assert (view.start, view.stop, view.step, view.working_point) == (65.0, 295.0, 10.0, 1e-3)
    assert "24 windows" in view._windows_status.object
    view.step = 5.0
    assert view.search() is None
    assert f"47 windows; this server scans at most {limits.MAX_SCAN_WINDOWS}" in \
        view.status["search"]
    view.param.update(step=10.0, stop=40.0)
    assert view.search() is None and "lies below start" in view.status["search"]


def test_one_learning_job_per_session(explorer):
    view = LearningView(explorer)
    release = threading.Event()
    blocking = start_job("training", lambda job: release.wait(WAIT_S), view.usage)
    try:
        assert view.search() is None
        assert "This session already has 1 learning job unfinished" in view.status["search"]
    finally:
        release.set()
    assert blocking.wait(WAIT_S) and blocking.state == "done"
    assert view.usage.running == 0


def test_the_page_has_the_learning_tab(explorer):
    app = SophonApp(explorer)
    assert TAB_NAMES[-1] == "Learning"
    app.tabs.active = TAB_NAMES.index("Learning")
    assert isinstance(app._views["learning"], LearningView)
    assert app.tabs[TAB_NAMES.index("Learning")] is not None
    render(app)


def test_the_view_is_exported_with_the_others():
    import app.views

    assert "LearningView" in app.views.__all__
    assert app.views.LearningView is learning.LearningView
