"""The spectrum view's exports (issue 18): the histogram files (ROOT read back with uproot, npz,
JSON) hold what the page shows, checked against a plain numpy recomputation from the dataset's
columns; the publication figure is a valid PDF, PNG or SVG with its labels; the files and the
plots' save tools are named after the discriminant, the efficiency and the dataset. No browser
(tests/test_spectrum_exports_browser.py clicks the buttons)."""

from __future__ import annotations

import html
import io
import json
import re
import struct
import sys
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyarrow.parquet as pq
import pytest
from bokeh.document import Document
from bokeh.models import SaveTool

from sophon.discriminant import PRESETS, Discriminant, Term
from sophon.histograms import METADATA_KEY, TOTAL_KEY, level_key, read_histograms
from sophon.labels import select
from sophon.spectrum import DEFAULT_EFFICIENCIES, DEFAULT_MASS_BINNING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

import panel as pn  # noqa: E402

from app.explorer import Explorer  # noqa: E402
from app.views import EventView, SpectrumView  # noqa: E402
from app.views.base import file_name_part  # noqa: E402

PRESET = PRESETS["A1: X->cs"]
LUMINOSITY = 250.0  # fb^-1; the synthetic dataset is made at 100
EFFICIENCY = 1e-3
STEM = "A1_X_cs_eff1e-3_jets"  # the synthetic dataset is jets.parquet


@pytest.fixture()
def view(synthetic_path) -> SpectrumView:
    explorer = Explorer.from_path(synthetic_path)
    explorer.param.update(discriminant=PRESET, efficiency=EFFICIENCY, luminosity=LUMINOSITY)
    return SpectrumView(explorer)


@pytest.fixture(scope="module")
def columns(synthetic_path) -> dict[str, np.ndarray]:
    """The dataset's columns this test needs, read with pyarrow, and ln(g_A/g_B) of the preset
    recomputed from the score columns in float64."""
    table = pq.read_table(synthetic_path)
    numerator = sum(table[f"score_{label}"].to_numpy().astype(np.float64)
                    for label in select("X_cs"))
    denominator = sum(table[f"score_{label}"].to_numpy().astype(np.float64)
                      for label in select("QCD"))
    return {"log_odds": np.log(numerator) - np.log(denominator),
            "mass": table["jet_sdmass"].to_numpy().astype(np.float64),
            "weight": table["weight"].to_numpy().astype(np.float64),
            "process": np.asarray(table["process"].to_pylist())}


def _with_flow(mass: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A plain weighted histogram over the scan's binning, under- and overflow at the ends."""
    edges = DEFAULT_MASS_BINNING.edges
    inside, _ = np.histogram(mass, bins=edges, weights=weights)
    return np.concatenate([[weights[mass < edges[0]].sum()], inside,
                           [weights[mass >= edges[-1]].sum()]])


def _passing(columns, threshold: float) -> np.ndarray:
    """Jets at or above ``threshold`` (a float32 value of the library, ln(g_A/g_B)). The float64
    recomputation differs from the library's float32 by about 1e-6: jets within 2e-6 of the cut
    are the ones at it (which pass), and no other may lie within 1e-5, where the two could
    disagree on its side."""
    distance = columns["log_odds"] - threshold
    at, near = np.abs(distance) <= 2e-6, np.abs(distance) < 1e-5
    assert at.any() and not (near & ~at).any(), "a jet lies too close to the cut for this check"
    return distance >= -2e-6


def _expected(columns, threshold: float, process: str | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(values, variances) in events at LUMINOSITY of the jets passing ``threshold``."""
    scale = LUMINOSITY / 100.0
    passing = _passing(columns, threshold)
    if process is not None:
        passing &= columns["process"] == process
    weights = columns["weight"][passing] * scale
    return _with_flow(columns["mass"][passing], weights), \
        _with_flow(columns["mass"][passing], weights ** 2)


def test_export_names_carry_discriminant_efficiency_and_dataset(view):
    pn.panel(view).get_root(Document())
    assert view.export_stem() == STEM
    assert view.histogram_file("ROOT")[0] == f"{STEM}.root"
    assert view.histogram_file("npz")[0] == f"{STEM}.npz"
    assert view.histogram_file("JSON")[0] == f"{STEM}.json"
    # the plots' save tools write under the same names, and follow the efficiency
    names = [tool.filename for plot in (view.curves_plot, view.stack_plot)
             for tool in plot.figure.select(type=SaveTool)]
    assert names == [f"{STEM}_spectra", f"{STEM}_stack"]
    view.explorer.efficiency = 10 ** -2.5
    assert [tool.filename for tool in view.stack_plot.figure.select(type=SaveTool)] == \
        ["A1_X_cs_eff3.2e-3_jets_stack"]
    # a name typed with odd characters is made safe; the event view names its dijet plots
    view.explorer.discriminant = Discriminant("../my tagger: <b>$x$</b>", (Term("X_cs"),))
    assert view.export_stem() == "my_tagger_b_x_b_eff3.2e-3_jets"
    events = EventView(view.explorer)
    assert [tool.filename for tool in events.stack_plot.figure.select(type=SaveTool)] == \
        ["my_tagger_b_x_b_eff3.2e-3_jets_dijet_stack"]
    assert file_name_part("***", "discriminant") == "discriminant"
    assert len(file_name_part("x" * 500, "d")) == 60


def test_root_export_read_back_with_uproot_is_what_numpy_gives(view, columns, tmp_path):
    uproot = pytest.importorskip("uproot")
    name, data = view.histogram_file("ROOT")
    path = tmp_path / name
    path.write_bytes(data)
    scan = view.explorer.scan
    level = view.explorer.level
    with uproot.open(path) as file:
        info = json.loads(str(file[METADATA_KEY]))
        assert info["efficiency"] == pytest.approx(EFFICIENCY)
        assert info["luminosity_fb"] == LUMINOSITY and info["discriminant"] == PRESET.name
        assert Discriminant.from_dict(info["discriminant_definition"]) == PRESET
        assert info["dataset"] == "jets.parquet" and info["jets"] == "all"
        assert info["efficiency_reference"] == "all jets"
        threshold = info["threshold"]
        assert threshold == float(scan.thresholds[level])
        # the cut keeps the requested fraction of the weight (up to the jets at the cut)
        achieved = columns["weight"][_passing(columns, threshold)].sum() / columns["weight"].sum()
        assert achieved == pytest.approx(info["achieved_efficiency"], rel=1e-9)
        assert EFFICIENCY <= achieved < EFFICIENCY * 1.2
        processes = sorted(set(columns["process"]))
        assert sorted(info["processes"].values()) == processes
        for key, process in info["processes"].items():
            stored = file[key]
            assert stored.classname == "TH1D" and stored.title == process
            values, variances = _expected(columns, threshold, process)
            np.testing.assert_allclose(stored.values(flow=True), values, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(stored.variances(flow=True), variances, rtol=1e-9,
                                       atol=1e-9)
            np.testing.assert_allclose(stored.axis().edges(), DEFAULT_MASS_BINNING.edges)
        values, variances = _expected(columns, threshold)
        np.testing.assert_allclose(file[TOTAL_KEY].values(flow=True), values, rtol=1e-9)
        np.testing.assert_allclose(file[TOTAL_KEY].variances(flow=True), variances, rtol=1e-9)
        # the spectrum at every efficiency, each under its own cut
        assert len(info["levels"]) == len(DEFAULT_EFFICIENCIES)
        for index, efficiency in enumerate(DEFAULT_EFFICIENCIES):
            entry = info["levels"][level_key(index)]
            assert entry["efficiency"] == pytest.approx(efficiency)
            values, _ = _expected(columns, entry["threshold"])
            np.testing.assert_allclose(file[level_key(index)].values(flow=True), values,
                                       rtol=1e-9, atol=1e-9)
    # the library reads it back as the same hist objects
    histograms, _ = read_histograms(path)
    assert set(histograms) == {*info["processes"], TOTAL_KEY,
                               *(level_key(i) for i in range(len(DEFAULT_EFFICIENCIES)))}


@pytest.mark.parametrize("histogram_format", ["npz", "JSON"])
def test_npz_and_json_exports_are_what_numpy_gives(view, columns, histogram_format):
    name, data = view.histogram_file(histogram_format)
    if histogram_format == "npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            info = json.loads(str(stored["metadata"]))
            edges = stored["edges"]
            arrays = {str(key): (str(process), values, variances)
                      for key, process, values, variances in zip(
                          stored["keys"], stored["processes"], stored["values"],
                          stored["variances"])}
    else:
        document = json.loads(data)
        info = document["metadata"]
        edges = np.asarray(document["histograms"][TOTAL_KEY]["edges"])
        arrays = {key: (h["process"], np.asarray(h["values"]), np.asarray(h["variances"]))
                  for key, h in document["histograms"].items()}
    np.testing.assert_allclose(edges, DEFAULT_MASS_BINNING.edges)
    assert info["luminosity_fb"] == LUMINOSITY
    for key, process in info["processes"].items():
        stored_process, values, variances = arrays[key]
        assert stored_process == process
        expected_values, expected_variances = _expected(columns, info["threshold"], process)
        np.testing.assert_allclose(values, expected_values, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(variances, expected_variances, rtol=1e-9, atol=1e-9)
    for key, entry in info["levels"].items():
        np.testing.assert_allclose(arrays[key][1], _expected(columns, entry["threshold"])[0],
                                   rtol=1e-9, atol=1e-9)


def test_exports_follow_the_jets_choice_and_an_unscaled_luminosity(view, columns):
    view.explorer.luminosity = 100.0  # the dataset's own
    view.explorer.jets = "leading"
    _, data = view.histogram_file("JSON")
    info = json.loads(data)["metadata"]
    assert info["jets"] == "leading" and info["efficiency_reference"] == "all leading jets"
    scan = view.explorer.scan
    total = json.loads(data)["histograms"][TOTAL_KEY]["values"]
    np.testing.assert_array_equal(total, scan.sum_of_weights[view.explorer.level].sum(axis=0))


def _pdf_strings(data: bytes) -> list[str]:
    """The text strings a PDF's (zlib-compressed) content streams show, TJ arrays joined."""
    streams = b"\n".join(zlib.decompress(m.group(1)) for m in re.finditer(
        rb"stream\r?\n(.*?)\r?\nendstream", data, re.S) if m.group(1)[:1] == b"x")
    strings = [b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", array))
               for array in re.findall(rb"\[(.*?)\]\s*TJ", streams, re.S)]
    strings += re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", streams)
    return [s.decode("latin-1") for s in strings]


def _png_text(data: bytes) -> tuple[tuple[int, int], dict[str, str]]:
    """A PNG's (width, height) and its tEXt chunks."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    size = struct.unpack(">II", data[16:24])
    texts, position = {}, 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"tEXt":
            key, _, text = data[position + 8:position + 8 + length].partition(b"\0")
            texts[key.decode("latin-1")] = text.decode("latin-1")
        position += 12 + length
    return size, texts


def test_publication_figure_files_are_valid_with_their_labels(view):
    pytest.importorskip("matplotlib")
    processes = view.explorer.dataset.process_names
    title_start = "A1: X->cs: jet mass spectra versus efficiency and the stack at efficiency 1e-3"

    name, pdf = view.figure_file("PDF")
    assert name == f"{STEM}.pdf" and pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    strings = _pdf_strings(pdf)
    assert strings.count("Simulation") == 2 and strings.count("jet soft-drop mass [GeV]") == 2
    for process in processes:
        assert process in strings, (process, strings)
    assert b"/Title (" + title_start.encode() in pdf

    name, png = view.figure_file("PNG")
    assert name == f"{STEM}.png"
    size, texts = _png_text(png)
    assert size == (1800, 825)  # 12 x 5.5 inches at 150 dpi
    assert texts["Title"].startswith(title_start) and "jets.parquet" in texts["Title"]

    name, svg = view.figure_file("SVG")
    assert name == f"{STEM}.svg"
    document = ElementTree.fromstring(svg)
    assert document.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [element.text for element in document.iter("{http://purl.org/dc/elements/1.1/}title")]
    assert any(title and title.startswith(title_start) for title in titles)
    # a spectrum curve per efficiency and a filled step per process: many drawn paths
    assert sum(1 for _ in document.iter("{http://www.w3.org/2000/svg}path")) > 50


def test_the_figure_follows_normalisation_and_a_name_with_dollars(view):
    pytest.importorskip("matplotlib")
    view.explorer.normalise = True
    view.explorer.discriminant = Discriminant("costs $5 and $\\frac{$", (Term("X_cs"),))
    name, pdf = view.figure_file("PDF")  # the name is drawn as text, never parsed as LaTeX
    assert name == "costs_5_and_frac_eff1e-3_jets.pdf"
    assert "fraction / 5 GeV" in _pdf_strings(pdf)


def test_export_buttons_name_the_file_in_their_callback(view):
    """The FileDownload callbacks set the button's file name before Panel reads it, so the
    click that asks for the file gets it under the current name (not the previous one)."""
    pn.panel(view).get_root(Document())
    view.histogram_format = "npz"
    buffer = view._histogram_download_file()
    assert view._histogram_download.filename == f"{STEM}.npz"
    assert buffer.getvalue() == view.histogram_file("npz")[1]
    view.explorer.efficiency = 1e-2
    view._histogram_download._transfer()  # what a click runs
    assert view._histogram_download.filename == "A1_X_cs_eff0.01_jets.npz"
    assert view._histogram_download.data.startswith("data:application/octet-stream;base64,")
    view.figure_format = "SVG"
    view._figure_download._transfer()
    assert view._figure_download.filename == "A1_X_cs_eff0.01_jets.svg"
    assert view._figure_download.data.startswith("data:image/svg+xml;base64,")
    assert not view._histogram_download.disabled and not view._figure_download.disabled


def test_a_missing_extra_disables_its_button_and_says_what_to_install(view, monkeypatch):
    import sophon.extras

    monkeypatch.setattr(sophon.extras, "_installed", lambda module: module != "uproot")
    view.histogram_format = "npz"
    assert not view._histogram_download.disabled and not view._export_error.visible
    view.histogram_format = "ROOT"
    assert view._histogram_download.disabled and view._export_error.visible
    shown = html.unescape(view._export_error.object)
    assert "writing ROOT histogram files needs uproot" in shown
    assert "pip install 'sophon-explorer[root]'" in shown
    assert not view._figure_download.disabled
