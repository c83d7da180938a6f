"""Unit tests of the Panel app's view logic (no browser), on SYNTHETIC datasets."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import panel as pn
import polars as pl
import pyarrow as pa
import pytest
from bokeh.document import Document

from sophon.discriminant import PRESETS, Discriminant, DiscriminantError, Term
from sophon.labels import LABELS, select
from sophon.spectrum import EfficiencyScan
from sophon.store import DatasetMetadata, JetDataset, write_dataset
from sophon.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

from app import state  # noqa: E402
from app.explorer import EFFICIENCIES, Explorer  # noqa: E402
from app.page import SophonApp  # noqa: E402
from app.selection import box_indices, in_box, polygon_indices  # noqa: E402
from app.urlstate import decode_discriminant, encode_discriminant  # noqa: E402
from app.views import (ComposerView, EventView, JetDetailView, LatentView,  # noqa: E402
                       RescoringView, SignificanceView, SpectrumView)
from app.views.composer import picker_query  # noqa: E402
from app.views.jet_detail import particle_types, read_constituents  # noqa: E402
from app.views.latent import jet_table, latent_data  # noqa: E402
from sophon.analysis import most_probable_class, selection_frame  # noqa: E402
from app.views.spectrum import curve_values  # noqa: E402

def render(viewable) -> None:
    """Build the bokeh models, as a served page would."""
    pn.panel(viewable).get_root(Document())


@pytest.fixture()
def explorer(synthetic_path) -> Explorer:
    return Explorer.from_path(synthetic_path)


# --- configuration and the shared cache ---------------------------------------------------------
def test_data_path_from_arguments_environment_and_default(tmp_path):
    assert state.data_path(["main.py", "--data", "x.parquet"], {}) == Path.cwd() / "x.parquet"
    assert state.data_path(["main.py", f"--data={tmp_path}"], {}) == tmp_path
    assert state.data_path([], {"SOPHON_DATA": str(tmp_path)}) == tmp_path
    assert state.data_path(["--data", str(tmp_path / "a")], {"SOPHON_DATA": "b"}) == tmp_path / "a"
    assert state.data_path([], {}) == state.DEFAULT_DATA
    assert state.DEFAULT_DATA == Path(state.ROOT) / "data" / "default"


def test_dataset_is_loaded_once_and_shared(synthetic_path):
    first = state.load_analysis(synthetic_path)
    second = state.load_analysis(str(synthetic_path))
    assert first is second
    assert Explorer.from_path(synthetic_path).analysis is first


def test_missing_and_bad_datasets_give_messages(tmp_path):
    missing = state.load_analysis(tmp_path / "nowhere.parquet")
    assert isinstance(missing, state.DatasetProblem)
    assert "nowhere.parquet" in missing.message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    problem = state.load_analysis(broken)
    assert isinstance(problem, state.DatasetProblem) and "broken.parquet" in problem.message
    explorer = Explorer.from_path(broken)
    assert not explorer.ready and "broken.parquet" in explorer.problem


def test_app_on_a_missing_dataset_shows_the_message(tmp_path):
    app = SophonApp(data=tmp_path / "missing")
    render(app)
    text = app.tabs.objects[0].object
    assert "could not be opened" in text and "missing" in text
    # the composer still works without data
    app.composer.apply_preset("A1: X->cs")
    assert app.explorer.discriminant == PRESETS["A1: X->cs"]


def test_models_are_read_only_from_the_models_folder(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(b"x")
    (tmp_path / "outside.onnx").write_bytes(b"x")
    (models / "notes.txt").write_text("x")
    assert state.resolve_model("tiny.onnx", models) == (models / "tiny.onnx").resolve()
    for bad in ("../outside.onnx", str(tmp_path / "outside.onnx"), "notes.txt", "absent.pt"):
        with pytest.raises(ValueError):
            state.resolve_model(bad, models)
    assert state.list_models(models) == ["tiny.onnx"]


# --- the composer ------------------------------------------------------------------------------
def test_composer_builds_the_discriminant_from_terms_and_weights(explorer):
    composer = ComposerView(explorer)
    render(composer)
    composer._editors[0].set(query="X_bb | X_cc", weight=0.7, label="bb+cc")
    second = composer.add_term("X_YY_qqb", 0.3, "top")
    assert second in composer._editors
    expected = Discriminant(name="X->bb vs QCD", numerator=(Term("X_bb | X_cc", 0.7, "bb+cc"),
                                                            Term("X_YY_qqb", 0.3, "top")),
                            denominator="QCD")
    assert explorer.discriminant.numerator == expected.numerator
    np.testing.assert_allclose(explorer.discriminant.numerator_weights,
                               expected.numerator_weights)
    composer._denominator.value = "QCD | X_gg"
    assert explorer.discriminant.denominator == "QCD | X_gg"
    composer.remove_term(second)
    assert len(explorer.discriminant.numerator) == 1


def test_presets_with_fewer_terms_hide_editors_and_reuse_them(explorer):
    """A preset with fewer terms hides the extra editors (the layout keeps its children: no
    page-wide re-render); one with more shows them again with its terms."""
    composer = ComposerView(explorer)
    render(composer)
    triboson = PRESETS["W'->WWW triboson"]
    composer.apply_preset("W'->WWW triboson")
    layout_children = list(composer._terms.objects)
    assert len(layout_children) == len(triboson.numerator) == 3
    composer.apply_preset("A1: X->cs")
    assert list(composer._terms.objects) == layout_children
    assert [child.visible for child in layout_children] == [True, False, False]
    assert explorer.discriminant.numerator == PRESETS["A1: X->cs"].numerator
    composer.apply_preset("W'->WWW triboson")
    assert list(composer._terms.objects) == layout_children
    assert all(child.visible for child in layout_children)
    assert [e.term() for e in composer._editors] == list(triboson.numerator)
    # removing the middle row moves the last one up and hides the last editor
    composer.remove_term(composer._editors[1])
    assert [e.term() for e in composer._editors] == [triboson.numerator[0], triboson.numerator[2]]
    assert [child.visible for child in layout_children] == [True, True, False]
    assert explorer.discriminant.numerator == (triboson.numerator[0], triboson.numerator[2])


def test_picker_queries_from_groups_content_and_picks(explorer):
    assert picker_query("two_prong", {"b": "2", "c": "any"}, []) == "two_prong & b == 2"
    assert select("two_prong & b == 2") == ["X_bb"]
    assert picker_query("all", {"b": "any"}, []) == "all"
    assert picker_query("QCD", {}, ["X_bb", "X_cc"]) == "X_bb | X_cc"
    composer = ComposerView(explorer)
    composer._group.value = "three_four_prong"
    composer._filters["b"].value = "1"
    composer._filters["prongs"].value = "3"
    expected = select("three_four_prong & prongs == 3 & b == 1")
    assert list(composer._picks.options) == expected
    editor = composer.add_term(composer.picker_query(), 1.0, "")
    assert explorer.discriminant.numerator[-1].classes == "three_four_prong & prongs == 3 & b == 1"
    composer._picks.value = expected[:2]
    composer._replace_last(composer.picker_query())
    assert editor.term().classes == " | ".join(expected[:2])


def test_invalid_query_shows_an_error_and_keeps_the_discriminant(explorer):
    composer = ComposerView(explorer)
    before = explorer.discriminant
    editor = composer._editors[0]
    editor._query.value_input = "X_bbb"
    assert "✗" in editor._status.object and "X_bb" in editor._status.object  # suggestion
    editor.set(query="X_bbb")
    assert explorer.discriminant == before
    assert composer._alert.visible and "X_bbb" in composer.status
    editor.set(query="b == 5")  # valid syntax, empty class set
    assert explorer.discriminant == before and "empty" in composer.status
    editor.set(query="X_cc")
    assert not composer._alert.visible and composer.status == ""
    assert explorer.discriminant.numerator[0].classes == "X_cc"


def test_presets_apply_and_show_latex(explorer):
    composer = ComposerView(explorer)
    for name, preset in PRESETS.items():
        composer._preset.value = name
        assert explorer.discriminant == preset
        assert composer.build() == preset
        assert composer._latex.object == f"${preset.latex()}$"
    triboson = PRESETS["W'->WWW triboson"]
    assert [e.term().weight for e in composer._editors] == [t.weight for t in triboson.numerator]


def test_yaml_export_import_round_trip(explorer):
    composer = ComposerView(explorer)
    composer.apply_preset("W'->WWW triboson")
    text = composer.export_yaml()
    assert Discriminant.from_yaml(text) == PRESETS["W'->WWW triboson"]
    assert composer._yaml_file().read() == text
    composer.apply_preset("A2: X->bb")
    assert composer.import_yaml(text) == PRESETS["W'->WWW triboson"]
    assert explorer.discriminant == PRESETS["W'->WWW triboson"]
    assert composer.build() == PRESETS["W'->WWW triboson"]
    composer._upload.value = PRESETS["A1: X->cs"].to_yaml().encode()
    assert explorer.discriminant == PRESETS["A1: X->cs"]
    assert composer.import_yaml("numerator: [") is None
    assert composer._alert.visible and "YAML" in composer.status


# --- spectra --------------------------------------------------------------------------------------
def test_spectrum_curves_equal_the_library_scan(explorer):
    view = SpectrumView(explorer)
    render(view)
    library = explorer.analysis.jet_scan(explorer.discriminant, efficiencies=EFFICIENCIES)
    np.testing.assert_allclose(view.curves(), library.spectra())
    np.testing.assert_array_equal(explorer.scan.thresholds, library.thresholds)
    # what the figure draws: steps over the bin edges
    ys = view.curves_plot.source.data["ys"]
    assert len(ys) == len(EFFICIENCIES)
    for level, y in enumerate(ys):
        expected = np.repeat(library.spectrum(level), 2)
        np.testing.assert_allclose(np.nan_to_num(y), expected)  # log axis: zeros drawn as gaps
    explorer.luminosity = 2 * explorer.dataset_luminosity
    np.testing.assert_allclose(view.curves(), 2 * library.spectra())
    explorer.normalise = True
    sums = view.curves().sum(axis=1)
    np.testing.assert_allclose(sums[library.spectra().sum(axis=1) > 0], 1.0)


def test_yield_text_matches_the_scan(explorer):
    view = SpectrumView(explorer)
    explorer.efficiency = 1e-3
    level = explorer.level
    assert EFFICIENCIES[level] == pytest.approx(1e-3)
    text = view._stats.object
    assert f"<span class='selected-count'>{explorer.scan.selected_jets(level):,}</span>" in text
    assert explorer.selected_yield() == pytest.approx(explorer.scan.selected_yield(level))


def test_summary_states_the_effective_jets_and_warns_at_low_statistics(explorer):
    view = SpectrumView(explorer)
    scan = explorer.scan
    levels = [level for level in range(scan.n_levels) if scan.selected_jets(level)]
    low = [level for level in levels if scan.effective_jets(level) < 25]
    high = [level for level in levels if scan.effective_jets(level) >= 25]
    assert low and high  # the synthetic sample's tightest cuts rest on a few jets
    for level in (low[0], high[0]):
        explorer.efficiency = EFFICIENCIES[level]
        text = view._stats.object
        weights = explorer.dataset.weights[explorer.analysis.log_odds(explorer.discriminant)
                                           >= scan.thresholds[level]]
        effective = weights.sum() ** 2 / (weights ** 2).sum()
        assert f"<span class='effective-count'>{effective:,.1f}</span>" in text
        assert ("low-statistics-warning" in text) == (effective < 25)


def test_leading_jet_spectrum_and_error_band(explorer):
    view = SpectrumView(explorer)
    render(view)
    all_jets = explorer.scan
    view._jets.value = "leading"
    assert explorer.jets == "leading"
    leading = explorer.analysis.jet_scan(explorer.discriminant, efficiencies=EFFICIENCIES,
                                         jets="leading")
    np.testing.assert_array_equal(explorer.scan.thresholds, leading.thresholds)
    assert explorer.scan.selected_jets(0) < all_jets.selected_jets(0)
    assert not view.stack_plot.error_band.visible
    view._errors.value = True
    level = explorer.level
    band = view.stack_plot.error_source.data
    total = leading.spectrum(level)
    sigma = np.sqrt(leading.spectrum_variance(level))
    filled = total > 0
    np.testing.assert_allclose(np.asarray(band["upper"])[1::2][filled],
                               (total + sigma)[filled] * explorer.scale, rtol=1e-9)
    assert view.stack_plot.error_band.visible


def test_efficiency_slider_does_not_rebuild_the_scan(explorer):
    view = SpectrumView(explorer)
    render(view)
    scan, built = explorer.scan, explorer.scans_built
    for label, value in view._slider.options.items():
        view._slider.value = value
        assert explorer.efficiency == value
        assert view.curves_plot.source.data["width"][explorer.level] == max(
            view.curves_plot.source.data["width"])
    view._player.value = EFFICIENCIES[2]
    assert explorer.efficiency == EFFICIENCIES[2] and view._slider.value == EFFICIENCIES[2]
    explorer.normalise = True
    explorer.luminosity = 300.0
    assert explorer.scan is scan and explorer.scans_built == built
    explorer.discriminant = PRESETS["A1: X->cs"]
    assert explorer.scans_built == built + 1 and explorer.scan is not scan


def test_efficiency_is_snapped_to_the_scan_levels(explorer):
    explorer.efficiency = 0.0021
    assert explorer.efficiency == pytest.approx(10 ** -2.5)
    explorer.efficiency = 0.9
    assert explorer.efficiency == 1.0


def test_reference_qcd_counts_efficiency_over_qcd_jets(explorer):
    explorer.reference = "QCD"
    library = explorer.analysis.jet_scan(explorer.discriminant, efficiencies=EFFICIENCIES,
                                         reference="QCD")
    np.testing.assert_array_equal(explorer.scan.thresholds, library.thresholds)


def test_significance_view_matches_the_library(explorer):
    view = SignificanceView(explorer)
    render(view)
    explorer.signal = "Z+jets"
    curve = explorer.analysis.significance(explorer.discriminant, "Z+jets", explorer.window)
    np.testing.assert_allclose(view.source.data["z"][np.isfinite(curve.significance)],
                               curve.significance[np.isfinite(curve.significance)])
    assert "Best Z" in view._summary.object
    explorer.window = (70.0, 110.0)
    assert view._window.value == (70.0, 110.0)
    assert explorer.significance.window == (70.0, 110.0)
    z = view.values()["z"]
    explorer.luminosity = 4 * explorer.dataset_luminosity
    z4 = view.values()["z"]
    positive = np.isfinite(z) & (z > 0)
    assert np.all(z4[positive] > z[positive])  # more data, more significance


def test_event_view_shows_the_event_scan(explorer):
    view = EventView(explorer)
    render(view)
    explorer.discriminant = PRESETS["W'->WWW triboson"]
    library = explorer.analysis.event_scan(PRESETS["W'->WWW triboson"],
                                           efficiencies=EFFICIENCIES)
    np.testing.assert_allclose(view.curves(), library.spectra())
    assert "Selected events" in view._stats.object
    assert "event-level discriminant" in view._note.object


# --- latent space and selections ---------------------------------------------------------------
def _inside_by_winding(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Independent reference: the winding number (sum of signed angles), point by point."""
    inside = np.zeros(len(px), dtype=bool)
    for i, (x, y) in enumerate(zip(px, py)):
        dx, dy = vertices[:, 0] - x, vertices[:, 1] - y
        angles = np.arctan2(dy, dx)
        turns = np.diff(np.append(angles, angles[0]))
        turns = (turns + np.pi) % (2 * np.pi) - np.pi
        inside[i] = abs(turns.sum()) > np.pi
    return inside


def test_box_selection_selects_exactly_the_jets_inside():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50_000).astype(np.float32), rng.normal(size=50_000).astype(np.float32)
    bounds = (0.5, -0.3, -0.7, 1.1)  # corners in any order
    expected = np.flatnonzero((x >= -0.7) & (x <= 0.5) & (y >= -0.3) & (y <= 1.1))
    np.testing.assert_array_equal(box_indices(x, y, bounds), expected)
    assert in_box(x, y, bounds).sum() == len(expected)


@pytest.mark.parametrize("shape", ["triangle", "concave", "lasso"])
def test_lasso_selection_selects_exactly_the_jets_inside(shape):
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-3, 3, 4000), rng.uniform(-3, 3, 4000)
    if shape == "triangle":
        vertices = np.array([[-2.0, -2.0], [2.5, -1.0], [0.0, 2.2]])
    elif shape == "concave":  # a 'C' shape
        vertices = np.array([[-2, -2], [2, -2], [2, -1], [-1, -1], [-1, 1], [2, 1], [2, 2],
                             [-2, 2]], dtype=float)
    else:  # a freehand-like lasso: a wobbly star with many vertices
        angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        radius = 1.8 + 0.7 * np.sin(5 * angles) + 0.1 * rng.normal(size=200)
        vertices = np.column_stack([radius * np.cos(angles), radius * np.sin(angles)])
    got = polygon_indices(x, y, vertices)
    np.testing.assert_array_equal(got, np.flatnonzero(_inside_by_winding(x, y, vertices)))
    assert len(polygon_indices(x, y, vertices[:2])) == 0


def _assert_selection_spectra(explorer, indices):
    """The selection's spectra are the plain histograms of the selected jets passing the
    thresholds set on the whole dataset."""
    analysis, scan = explorer.analysis, explorer.scan
    values = analysis.log_odds(explorer.discriminant)[indices]
    mass = analysis.dataset.column("jet_sdmass")[indices]
    weights = analysis.dataset.weights[indices]
    for level, threshold in enumerate(scan.thresholds):
        passing = values >= threshold
        expected, _ = np.histogram(mass[passing], scan.binning.edges, weights=weights[passing])
        np.testing.assert_allclose(explorer.selection_scan.spectrum(level), expected, atol=1e-9)


def test_explorer_selection_gives_the_selection_spectrum(explorer):
    x, y = explorer.latent_coordinates()
    indices = explorer.select_box((-1.0, -1.0, 1.0, 1.0))
    np.testing.assert_array_equal(indices, box_indices(x, y, (-1, -1, 1, 1)))
    _assert_selection_spectra(explorer, indices)
    polygon = np.array([[5.0, 1.0], [7.0, 0.0], [7.5, 3.0], [5.5, 4.0]])
    explorer.select_polygon(polygon)
    np.testing.assert_array_equal(explorer.selection, polygon_indices(x, y, polygon))
    spectrum = SpectrumView(explorer)
    assert "selection-count" in spectrum._stats.object
    np.testing.assert_allclose(
        np.nan_to_num(spectrum.curves_plot.overlay.data["y"][::2]),
        curve_values(explorer.selection_scan, explorer.level), atol=0)
    explorer.discriminant = PRESETS["A3: X->b q q"]  # the selection follows the discriminant
    _assert_selection_spectra(explorer, explorer.selection)
    explorer.clear_selection()
    assert explorer.selection is None and explorer.selection_scan is None


def test_latent_view_streams_select_jets(explorer):
    view = LatentView(explorer)
    render(view)
    # in memory the plot shows every jet (on a cluster, a sample: test_app_dask)
    assert f"All {explorer.dataset.n_jets:,} jets, datashaded" in view._note.object
    box, lasso = view.streams
    box.event(bounds=(-1.0, -1.0, 1.0, 1.0))
    x, y = explorer.latent_coordinates()
    np.testing.assert_array_equal(explorer.selection, box_indices(x, y, (-1, -1, 1, 1)))
    assert f"{len(explorer.selection):,}" in view._info.object
    triangle = np.array([[4.0, 0.0], [8.0, 0.0], [6.0, 4.0]])
    lasso.event(geometry=triangle)
    np.testing.assert_array_equal(explorer.selection, polygon_indices(x, y, triangle))
    for kind in ("D", "process"):  # rendering compiles datashader's kernels: two suffice
        view.color_by = kind
        render(view)
    for kind in ("truth", "top"):
        view.color_by = kind
        frame, names = view.data.categorical(kind)
        assert len(frame) == explorer.dataset.n_jets
        assert len(names) == len(frame[kind].cat.categories)
    view.color_by = "process"
    assert len(view.streams) == 2  # rebuilt with the plot
    view.streams[0].event(bounds=(0.0, 0.0, 2.0, 2.0))
    np.testing.assert_array_equal(explorer.selection, box_indices(x, y, (0, 0, 2, 2)))


def test_latent_data_is_shared_and_copy_free(explorer, synthetic_path):
    data = latent_data(explorer.analysis)
    assert latent_data(Explorer.from_path(synthetic_path).analysis) is data
    frame, names = data.categorical("process")
    assert np.shares_memory(frame["x"].to_numpy(), data.x)
    assert names == list(explorer.dataset.process_names)
    assert np.array_equal(most_probable_class(explorer.dataset.scores),
                          np.argmax(explorer.dataset.scores, axis=1))
    # true class groups, computed independently from the class names
    truth, groups = data.categorical("truth")
    labels = np.array(LABELS)[explorer.dataset.column("jet_label")]
    expected = np.where(np.char.startswith(labels.astype(str), "QCD"), "QCD", "resonant")
    got = np.where(truth["truth"].astype(str).to_numpy() == "QCD", "QCD", "resonant")
    np.testing.assert_array_equal(got, expected)
    two_prong = np.isin(labels, select("two_prong"))
    assert all(str(g).startswith("X→2 prongs") for g in truth["truth"][two_prong].unique())
    # the most probable class: the most frequent ones by name, the rest 'other'
    top, names = data.categorical("top")
    best = np.array(LABELS)[np.argmax(explorer.dataset.scores, axis=1)]
    shown = np.isin(best, names)
    np.testing.assert_array_equal(top["top"].astype(str).to_numpy()[shown], best[shown])
    assert set(top["top"].astype(str).to_numpy()[~shown]) <= {"other"}


def test_selection_table_pages_and_top_classes(explorer):
    explorer.select_box((-1.0, -1.0, 1.0, 1.0))
    view = LatentView(explorer)
    table = view.table
    render(table)
    order = explorer.selection_order()
    log_odds = explorer.analysis.log_odds(explorer.discriminant)  # D's order, without rounding
    assert np.all(np.diff(log_odds[order]) <= 0)
    assert set(order.tolist()) == set(explorer.selection.tolist())
    frame = table._table.value
    np.testing.assert_array_equal(frame["jet"].to_numpy(), order[:table.page_size])
    top, probabilities = explorer.analysis.top_classes(order[:1], k=5)
    assert frame["top 1"].iloc[0] == f"{LABELS[top[0, 0]]} {probabilities[0, 0]:.3f}"
    table._next.clicks += 1
    assert table.page == 2
    np.testing.assert_array_equal(table._table.value["jet"].to_numpy(),
                                  order[table.page_size:2 * table.page_size])
    table._table.selection = [3]
    assert explorer.jet == int(order[table.page_size + 3])
    assert f"{len(order):,}" in table._page_info.object


def test_selection_download_as_csv_and_parquet(explorer):
    explorer.select_box((5.0, 1.0, 7.0, 3.0))
    view = LatentView(explorer)
    csv = pl.read_csv(view.table._download_file())
    assert csv.height == len(explorer.selection)
    assert set(csv["jet"].to_list()) == set(explorer.selection.tolist())
    assert {"D", "log_odds", "top1_class", "top5_prob", "process", "jet_sdmass"} <= set(csv.columns)
    view.table._format.value = "Parquet"
    assert view.table._download.filename == "selection.parquet"
    parquet = pl.read_parquet(view.table._download_file())
    assert parquet.height == csv.height
    frame = selection_frame(explorer.analysis, explorer.selection_order()[:3],
                            explorer.discriminant)
    top, _ = explorer.analysis.top_classes(explorer.selection_order()[:3], k=5)
    assert frame["top1_class"].to_list() == [LABELS[i] for i in top[:, 0]]


def test_jet_table_columns(explorer):
    rows = np.array([0, 5, 7])
    frame = jet_table(explorer.analysis, rows, explorer.discriminant)
    assert list(frame.columns) == ["jet", "process", "mSD", "pT", "η", "D", "top 1", "top 2",
                                   "top 3", "top 4", "top 5"]
    assert frame["top 1"].dtype == object  # serialisable by the table widget
    assert frame["mSD"].tolist() == pytest.approx(
        np.round(explorer.dataset.column("jet_sdmass")[rows].astype(float), 2).tolist())


# --- constituents, jet detail and rescoring ------------------------------------------------------
def _list_array(lengths: np.ndarray, values: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.float32)))


def random_constituent_columns(rng: np.random.Generator, lengths: np.ndarray) -> dict:
    """``part_*`` list columns of random SYNTHETIC particles, ``lengths[i]`` of them in jet i."""
    total = int(lengths.sum())
    kind = rng.integers(0, 5, total)
    pt = rng.exponential(10.0, total) + 0.5
    phi = rng.uniform(-np.pi, np.pi, total)
    particle = {
        "part_px": pt * np.cos(phi), "part_py": pt * np.sin(phi),
        "part_pz": rng.normal(0, 20, total),
        "part_deta": rng.normal(0, 0.3, total), "part_dphi": rng.normal(0, 0.3, total),
        "part_d0val": rng.normal(0, 0.05, total), "part_d0err": rng.uniform(0, 0.1, total),
        "part_dzval": rng.normal(0, 0.05, total), "part_dzerr": rng.uniform(0, 0.1, total),
        "part_charge": rng.integers(-1, 2, total).astype(float),
        "part_isChargedHadron": (kind == 0).astype(float),
        "part_isNeutralHadron": (kind == 1).astype(float),
        "part_isPhoton": (kind == 2).astype(float), "part_isElectron": (kind == 3).astype(float),
        "part_isMuon": (kind == 4).astype(float),
    }
    particle["part_energy"] = np.sqrt(pt**2 + particle["part_pz"] ** 2) + 0.1
    return {name: _list_array(lengths, np.asarray(values)) for name, values in particle.items()}


def write_constituent_dataset(path: Path, n_jets: int = 120, seed: int = 3) -> Path:
    """A small SYNTHETIC dataset whose jets carry constituents (some carry none)."""
    sample = make_synthetic(n_jets, seed)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 25, sample.scores.shape[0])
    lengths[::10] = 0  # jets without constituents keep their scores when rescored
    columns = dict(sample.columns)
    columns.update(random_constituent_columns(rng, lengths))
    return write_dataset(path, columns, scores=sample.scores, latents=sample.latents,
                         metadata=DatasetMetadata(luminosity_fb=100.0, model_id="synthetic",
                                                  extra={"synthetic": True}))


@pytest.fixture(scope="module")
def constituent_path(tmp_path_factory) -> Path:
    return write_constituent_dataset(tmp_path_factory.mktemp("constituents") / "jets.parquet")


def test_jet_detail_shows_constituents(constituent_path):
    explorer = Explorer.from_path(constituent_path)
    view = JetDetailView(explorer)
    render(view)
    assert "Choose a jet" in view._summary.object
    dataset = explorer.dataset
    row = 4
    particles = read_constituents(dataset, row)
    expected = pl.read_parquet(constituent_path, columns=["part_deta"])["part_deta"][row]
    np.testing.assert_allclose(particles["part_deta"].to_numpy(), expected.to_numpy())
    types = particle_types(particles)
    flags = particles["part_isPhoton"].to_numpy() > 0.5
    assert set(types[flags]) == {"photon"}
    explorer.jet = row
    assert f"Jet {row}" in view._summary.object and "top-5" in view._summary.object
    overlay = view._particles.object
    assert overlay is not None
    assert sum(len(layer) for layer in overlay if hasattr(layer, "dframe") and
               "pT" in layer.vdims) == particles.height
    view._index.value = 10  # typed index; jet 10 has no constituents
    assert explorer.jet == 10
    assert read_constituents(dataset, 10).height == 0
    assert view._particles.object is None and "no constituents" in view._note.object


def test_jet_detail_without_constituents(explorer):
    view = JetDetailView(explorer)
    explorer.jet = 3
    assert "stores no constituents" in view._note.object
    assert "top-5" in view._summary.object


def test_rescoring_with_a_small_model(constituent_path, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from sophon.model import SophonModel, randomize_weights_, sophon_config

    models = tmp_path / "models"
    models.mkdir()
    model = SophonModel(sophon_config(embed_dims=(32, 128), pair_embed_dims=(8,), num_heads=4,
                                      num_layers=1, num_cls_layers=1, fc_params=((32, 0.0),)))
    randomize_weights_(model, seed=1)
    torch.save(model.state_dict(), models / "tiny.pt")
    monkeypatch.setenv("SOPHON_MODELS", str(models))
    monkeypatch.setenv("SOPHON_OUTPUT", str(tmp_path / "out"))
    explorer = Explorer.from_path(constituent_path)
    original = explorer.analysis
    view = RescoringView(explorer)
    render(view)
    assert view._model.options == ["tiny.pt"] and not view._start.disabled
    view._model.value = "tiny.pt"
    view._device.value = "cpu"
    job = view.start()
    job_done = job.cancel.wait  # the job runs in the worker thread
    for _ in range(600):
        if job.finished:
            break
        job_done(0.1)
    assert job.state == "done", job.message
    view.poll()
    assert explorer.analysis is job.result and explorer.analysis is not original
    assert explorer.scan is not None and "now show" in view._status.object
    old, new = original.dataset.scores, explorer.dataset.scores
    lengths = pl.read_parquet(constituent_path, columns=["part_deta"])["part_deta"].list.len()
    carrying = lengths.to_numpy() > 0
    np.testing.assert_array_equal(new[~carrying], old[~carrying])
    assert not np.allclose(new[carrying], old[carrying])
    np.testing.assert_allclose(new.sum(axis=1), 1.0, atol=1e-4)
    assert explorer.dataset.metadata.model_id.startswith("tiny.pt@sha256:")
    # asking again (another session on the original dataset) reuses the written dataset
    view = RescoringView(Explorer.from_path(constituent_path))
    view._model.value = "tiny.pt"
    again = view.start()
    for _ in range(300):
        if again.finished:
            break
        again.cancel.wait(0.1)
    assert again.state == "done" and again.result is job.result


def test_rescoring_view_explains_what_is_missing(explorer, tmp_path, monkeypatch):
    monkeypatch.setenv("SOPHON_MODELS", str(tmp_path / "no-models"))
    view = RescoringView(explorer)
    render(view)
    assert view._start.disabled
    assert "no constituents" in view._status.object and "no model files" in view._status.object


# --- URL state ---------------------------------------------------------------------------------
def test_discriminant_url_encoding_round_trip():
    for preset in PRESETS.values():
        assert encode_discriminant(preset) == preset.name
        assert decode_discriminant(encode_discriminant(preset)) == preset
    custom = Discriminant(name="mine", numerator=(Term("X_bb | X_cc", 0.5, "heavy"),
                                                  Term("X_YY_qqb", 2.0)),
                          denominator="QCD | X_gg", level="event", description="test")
    encoded = encode_discriminant(custom)
    assert decode_discriminant(encoded) == custom
    assert decode_discriminant(json.loads(encoded)) == custom  # the URL parser's dict
    with pytest.raises(DiscriminantError):
        decode_discriminant("no such preset")
    with pytest.raises(DiscriminantError):
        decode_discriminant('{"numerator": [{"classes": "X_bbb"}]}')


def test_url_state_round_trip(explorer, synthetic_path):
    from panel.io.location import Location

    app = SophonApp(explorer)
    location = Location()
    app.url.sync(location)
    app.composer.apply_preset("W'->WWW triboson")
    explorer.efficiency = 1e-3
    app.tabs.active = 3
    explorer.reference = "QCD"
    query = location.search
    assert "eff=0.001" in query and "view=latent-space" in query and "ref=QCD" in query
    custom = Discriminant(name="custom", numerator=(Term("X_cs", 1.0), Term("X_YY_qqb", 0.5)))
    explorer.discriminant = custom
    query = location.search
    # a new session opened on that link reproduces the view
    other = SophonApp(Explorer.from_path(synthetic_path))
    linked = Location(search=query)
    other.url.sync(linked)
    assert other.explorer.discriminant == custom
    assert other.explorer.efficiency == pytest.approx(1e-3)
    assert other.explorer.reference == "QCD"
    assert other.tabs.active == 3
    assert other.composer.build() == custom  # the form shows it too
    broken = SophonApp(Explorer.from_path(synthetic_path))
    broken.url.sync(Location(search="?d=nonsense"))
    assert "link" in broken.explorer.error
    assert broken.explorer.discriminant == PRESETS["X->bb vs QCD"]


# --- the whole page ----------------------------------------------------------------------------
def test_the_page_builds_and_reacts(explorer):
    app = SophonApp(explorer)
    render(app)
    app.page().server_doc(Document())
    app.composer.apply_preset("A2: X->bb")
    assert "X_bb" in app.composer._summary.object
    assert explorer.scan is not None and explorer.event_scan is not None
    assert "SYNTHETIC" in app.header.object


def test_views_are_independent_viewers(synthetic_path):
    view = SpectrumView(data=synthetic_path)
    assert isinstance(view, pn.viewable.Viewer)
    assert view.explorer.analysis is state.load_analysis(synthetic_path)
    render(view)


def test_per_session_state_stays_small(explorer):
    """A session holds histogram cubes, not per-jet arrays."""
    n_jets = explorer.dataset.n_jets
    for value in explorer.param.values().values():
        if isinstance(value, np.ndarray):
            assert value.size < n_jets
        if isinstance(value, EfficiencyScan):
            assert value.sum_of_weights.size < n_jets


def test_dataset_reads_as_the_library_does(synthetic_path):
    dataset = JetDataset(synthetic_path)
    assert Explorer.from_path(synthetic_path).dataset.n_jets == dataset.n_jets


def test_event_view_without_events(tmp_path):
    sample = make_synthetic(400, 5)
    columns = {k: v for k, v in sample.columns.items()
               if k not in ("event_id", "jet_rank", "umap_x", "umap_y")}
    path = write_dataset(tmp_path / "flat.parquet", columns, scores=sample.scores)
    explorer = Explorer.from_path(path)
    assert explorer.event_scan is None
    events = EventView(explorer).__panel__()
    assert "no event structure" in events.object
    latent = LatentView(explorer).__panel__()
    assert "umap_x" in latent.object
    render(SophonApp(explorer))


def test_download_buffer_is_bytes(explorer):
    explorer.select_box((-0.2, -0.2, 0.2, 0.2))
    buffer = LatentView(explorer).table._download_file()
    assert isinstance(buffer, io.BytesIO) and buffer.getvalue().startswith(b"jet,")


def test_latent_hover_sample_depends_on_size(explorer, monkeypatch):
    from app.views import latent

    assert LatentView(explorer).hover is True  # 20k jets: hover names the category
    monkeypatch.setattr(latent, "HOVER_SAMPLE_MAX_JETS", 1000)
    view = LatentView(explorer)
    assert view.hover is False
    view._hover.value = True
    assert view.hover is True and len(view.streams) == 2


def test_truth_colouring_needs_at_least_one_labelled_jet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from app.views.latent import LatentData
    from sophon.analysis import DatasetAnalysis
    from sophon.store import JetDataset
    from sophon.synthetic import write_synthetic_dataset

    labelled = write_synthetic_dataset(tmp_path / "labelled.parquet", 200, seed=1)
    assert LatentData(DatasetAnalysis(JetDataset(labelled))).available("truth")
    table = pq.read_table(labelled)
    index = table.schema.get_field_index("jet_label")
    unlabelled = tmp_path / "sm.parquet"  # as in generated SM samples: jet_label = -1
    pq.write_table(table.set_column(index, "jet_label",
                                    pa.array(np.full(table.num_rows, -1, np.int32))), unlabelled)
    latent = LatentData(DatasetAnalysis(JetDataset(unlabelled)))
    assert not latent.available("truth") and latent.available("process")


def test_select_indices_selects_exactly_those_jets(explorer):
    explorer.select_indices(np.array([5, 3, 3, 9]), "three jets")
    np.testing.assert_array_equal(explorer.selection, [3, 5, 9])
    assert explorer.selection_label == "three jets"
    with pytest.raises(IndexError, match="jet indices"):
        explorer.select_indices(np.array([explorer.dataset.n_jets]))
    explorer.clear_selection()


# --- links: every control, bounded values, bad values named (issue 14, items 5 and 8) ----------
def test_a_link_holds_every_control_and_reproduces_the_view(synthetic_path):
    from panel.io.location import Location

    app = SophonApp(Explorer.from_path(synthetic_path))
    location = Location()
    app.url.sync(location)
    explorer = app.explorer
    explorer.param.update(reference="QCD", jets="leading", show_errors=True, log_y=False)
    explorer.efficiency = EFFICIENCIES[5]
    explorer.luminosity = 250.0
    explorer.signal = explorer.param.signal.objects[-1]
    explorer.window = (60.0, 95.0)
    explorer.select_box((-1.234567891, -1.0, 2.0, 2.5))
    explorer.jet = 42
    app.tabs.active = 3
    app.latent._color.value = "D"
    query = dict(pn.io.location.urlparse.parse_qsl(location.search[1:]))
    assert query["lumi"] == "250" and query["jets"] == "leading" and query["errors"] == "true"
    assert query["window"] == "60,95" and query["color"] == "D" and query["jet"] == "42"
    assert query["box"] == "-1.23457,-1,2,2.5"  # rounded before the jets were selected
    other = SophonApp(Explorer.from_path(synthetic_path))
    other.url.sync(Location(search=location.search))
    for name in ("reference", "jets", "show_errors", "log_y", "efficiency", "luminosity",
                 "signal", "window", "jet", "selection_shape", "discriminant"):
        assert getattr(other.explorer, name) == getattr(explorer, name), name
    np.testing.assert_array_equal(other.explorer.selection, explorer.selection)
    assert other.tabs.active == 3 and other.latent.color_by == "D"
    assert other.spectrum.summary() == app.spectrum.summary()
    assert other.url.notice == ""


def test_a_lasso_is_thinned_and_rounded_before_it_selects():
    from app.explorer import MAX_LASSO_VERTICES, lasso_vertices

    angles = np.linspace(0, 2 * np.pi, 350, endpoint=False)
    drawn = np.c_[3 + 2 * np.cos(angles), 2 + 2 * np.sin(angles)]
    kept = lasso_vertices(np.vstack([drawn, [[np.nan, 1.0]]]))
    assert len(kept) == MAX_LASSO_VERTICES
    assert kept[0] == (5.0, 2.0) and all(np.isfinite(kept).ravel())
    assert all(float(f"{v:.6g}") == v for point in kept for v in point)


def test_explorer_refuses_bad_luminosities(explorer):
    for value in (0, -1.0, float("nan"), float("inf"), 2e5):
        with pytest.raises(ValueError):
            explorer.luminosity = value
        assert explorer.luminosity_problem(value)
    assert explorer.luminosity_problem(None) == "it is empty"
    assert explorer.luminosity_problem("") == "it is empty"
    assert explorer.luminosity_problem(300) == ""
    assert explorer.luminosity == explorer.dataset_luminosity


def test_the_luminosity_field_keeps_the_last_valid_value(explorer):
    view = SpectrumView(explorer)
    render(view)
    assert not view.apply_luminosity(0)
    assert explorer.luminosity == 100.0 and view._luminosity.value == 100.0
    assert view._luminosity_error.visible
    assert "0 fb⁻¹ is not positive" in view._luminosity_error.object
    assert not view.apply_luminosity(None) and explorer.luminosity == 100.0
    assert view.apply_luminosity(300.0) and explorer.luminosity == 300.0
    assert not view._luminosity_error.visible
    assert "at 300 fb⁻¹" in view._stats.object


@pytest.mark.parametrize("search, notice", [
    ("?lumi=0", "lumi='0' (expected a positive number of fb⁻¹ up to 100,000)"),
    ("?lumi=nan", "lumi='nan' (expected a positive number of fb⁻¹ up to 100,000)"),
    ("?window=80", "window='80' (expected low,high in GeV with 0 ≤ low < high ≤ 500)"),
    ("?signal=QCD", "signal='QCD' (expected one of Higgs, W+jets, Z+jets, ttbar)"),
    ("?box=1,2,3,inf", "box='1,2,3,inf' (expected four numbers x0,y0,x1,y1)"),
    ("?jet=1e3", "jet='1e3' (expected a jet index from 0 to 19,999)"),
    ("?errors=yes", "errors='yes' (expected true or false)"),
    ("?jets=first", "jets='first' (expected one of all, leading)"),
    ("?color=__import__('os')", "color=\"__import__('os')\" (expected one of process, truth, "
                                "top, D)"),
    ("?eff=", "eff='' (expected a number from 0.0001 to 1)"),
    ("?lasso=" + ";".join(["1,1"] * 101), "lasso='" + ";".join(["1,1"] * 15) + "…' (expected "
                                          "3 to 100 points x,y separated by ';')"),
])
def test_bad_link_values_are_named_and_dropped(synthetic_path, search, notice):
    from panel.io.location import Location

    app = SophonApp(Explorer.from_path(synthetic_path))
    location = Location(search=search + "&norm=true")
    app.url.sync(location)
    assert app.url.notice == "Not applied from the link: " + notice
    assert app.explorer.normalise  # the rest of the link applies
    key, _, bad = search[1:].partition("=")
    query = dict(pn.io.location.urlparse.parse_qsl(location.search[1:]))
    assert query.get(key) != bad and query["norm"] == "true"  # the address shows the session
