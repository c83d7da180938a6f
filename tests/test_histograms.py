"""Spectra as hist.Hist (sophon.spectrum) and their files (sophon.histograms): values and
variances against direct numpy histograms of the passing jets, and the ROOT / npz / JSON round
trips read back independently (uproot for ROOT)."""

from __future__ import annotations

import json

import hist
import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS
from sophon.histograms import (METADATA_KEY, TOTAL_KEY, histogram_key, level_key,
                               read_histograms, scan_histograms, write_histograms)
from sophon.spectrum import JET_MASS_LABEL, EfficiencyScan, MassBinning, significance_scan

PROCESSES = ("QCD", "W+jets", "single top")
BINNING = MassBinning(bins=25, low=0.0, high=250.0)


@pytest.fixture(scope="module")
def jets():
    rng = np.random.default_rng(11)
    n = 30_000
    process = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])
    mass = np.where(process == 1, rng.normal(80, 8, n), rng.exponential(60, n))
    mass[:50] = 300.0  # overflow
    mass[50:60] = -5.0  # underflow
    value = (rng.normal(size=n) + 1.5 * (process > 0)).astype(np.float32)
    weight = rng.exponential(1.0, n) * np.where(process == 0, 5.0, 1.0)
    return value, mass, weight, process


@pytest.fixture(scope="module")
def scan(jets):
    value, mass, weight, process = jets
    return EfficiencyScan.build(value, BINNING.index(mass), weight, process, PROCESSES,
                                efficiencies=[1.0, 0.1, 0.01], binning=BINNING)


def _with_flow(mass, weights):
    """Direct weighted histogram with underflow and overflow bins, (bins+2,)."""
    inside, _ = np.histogram(mass, bins=BINNING.edges, weights=weights)
    return np.concatenate([[weights[mass < BINNING.low].sum()], inside,
                           [weights[mass >= BINNING.high].sum()]])


def _expected(jets, scan, level, process=None):
    value, mass, weight, codes = jets
    passing = value >= scan.thresholds[level]
    if process is not None:
        passing &= codes == process
    return _with_flow(mass[passing], weight[passing]), _with_flow(mass[passing],
                                                                  weight[passing] ** 2)


def test_stack_and_sum_hists_hold_the_passing_jets(jets, scan):
    level = 1
    stack = scan.to_hist(level)
    assert [axis.name for axis in stack.axes] == ["process", "mass"]
    assert stack.axes["mass"].label == JET_MASS_LABEL
    assert list(stack.axes["process"]) == list(PROCESSES)
    assert isinstance(stack.storage_type(), type(hist.storage.Weight()))
    np.testing.assert_allclose(stack.axes["mass"].edges, BINNING.edges)
    for code, name in enumerate(PROCESSES):
        values, variances = _expected(jets, scan, level, code)
        one = stack[{"process": name}]
        np.testing.assert_allclose(one.values(flow=True), values, rtol=1e-10)
        np.testing.assert_allclose(one.variances(flow=True), variances, rtol=1e-10)
    total = scan.spectrum_hist(level)
    values, variances = _expected(jets, scan, level)
    np.testing.assert_allclose(total.values(flow=True), values, rtol=1e-10)
    np.testing.assert_allclose(total.variances(flow=True), variances, rtol=1e-10)
    assert total.axes[0].name == "mass"
    # the level's selected yield, all masses
    assert total.sum(flow=True).value == pytest.approx(scan.selected_yield(level))


def test_root_round_trip_read_back_with_uproot(jets, scan, tmp_path):
    uproot = pytest.importorskip("uproot")
    level = 2
    path = write_histograms(scan, level, tmp_path / "spectra.root",
                            metadata={"luminosity_fb": 138.0})
    with uproot.open(path) as file:
        info = json.loads(str(file[METADATA_KEY]))
        assert info["efficiency"] == pytest.approx(0.01) and info["luminosity_fb"] == 138.0
        assert info["threshold"] == pytest.approx(float(scan.thresholds[level]))
        assert info["processes"] == {"QCD": "QCD", "W_jets": "W+jets", "single_top": "single top"}
        for code, name in enumerate(PROCESSES):
            stored = file[histogram_key(name)]
            assert stored.classname == "TH1D" and stored.title == name
            values, variances = _expected(jets, scan, level, code)
            np.testing.assert_allclose(stored.values(flow=True), values, rtol=1e-10)
            np.testing.assert_allclose(stored.variances(flow=True), variances, rtol=1e-10)
            # exactly the library's numbers (float64 TH1D)
            np.testing.assert_array_equal(stored.values(flow=True), scan.sum_of_weights[level][code])
            np.testing.assert_array_equal(stored.variances(flow=True),
                                          scan.sum_of_weights_squared[level][code])
            np.testing.assert_allclose(stored.axis().edges(), BINNING.edges)
            assert stored.member("fXaxis").member("fTitle") == JET_MASS_LABEL
        values, variances = _expected(jets, scan, level)
        np.testing.assert_allclose(file[TOTAL_KEY].values(flow=True), values, rtol=1e-10)
        np.testing.assert_allclose(file[TOTAL_KEY].variances(flow=True), variances, rtol=1e-10)
        # uproot's own hist conversion gives the same numbers
        as_hist = file["W_jets"].to_hist()
        np.testing.assert_allclose(as_hist.values(), scan.stack(level)[1], rtol=1e-10)


@pytest.mark.parametrize("suffix", [".root", ".npz", ".json"])
def test_every_format_reads_back_the_library_values(scan, tmp_path, suffix):
    if suffix == ".root":
        pytest.importorskip("uproot")
    level = 1
    path = write_histograms(scan, level, tmp_path / f"spectra{suffix}")
    histograms, info = read_histograms(path)
    expected = scan_histograms(scan, level)
    assert list(histograms) == list(expected) == ["QCD", "W_jets", "single_top", TOTAL_KEY]
    for key, histogram in histograms.items():
        np.testing.assert_array_equal(histogram.values(flow=True), expected[key].values(flow=True))
        np.testing.assert_array_equal(histogram.variances(flow=True),
                                      expected[key].variances(flow=True))
        np.testing.assert_allclose(histogram.axes[0].edges, BINNING.edges)
        assert histogram.axes[0].label == JET_MASS_LABEL
    assert histograms["W_jets"].name == "W+jets"
    assert info["level"] == level and info["binning"] == {"bins": 25, "low": 0.0, "high": 250.0}


def test_writes_are_atomic_and_formats_checked(scan, tmp_path):
    path = tmp_path / "spectra.json"
    write_histograms(scan, 0, path)
    first = path.read_text()
    write_histograms(scan, 2, path)  # replaced whole
    assert path.read_text() != first and json.loads(path.read_text())["metadata"]["level"] == 2
    with pytest.raises(ValueError, match=r"spectra\.txt: unknown histogram format"):
        write_histograms(scan, 0, tmp_path / "spectra.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spectra.json"]  # no temporaries


def test_significance_curve_keeps_its_templates(jets):
    value, mass, weight, process = jets
    curve = significance_scan(value, BINNING.index(mass), weight, process, PROCESSES, "W+jets",
                              (70.0, 90.0), background_efficiencies=[1.0, 0.1, 0.01],
                              binning=BINNING)
    templates = curve.to_hist()  # the most significant cut
    level = curve.best
    passing = value >= curve.thresholds[level]
    signal = passing & (process == 1)
    np.testing.assert_allclose(templates[{"process": "W+jets"}].values(flow=True),
                               _with_flow(mass[signal], weight[signal]), rtol=1e-10)
    window = templates[{"process": "W+jets"}][hist.loc(70.0):hist.loc(90.0)].sum().value
    assert window == pytest.approx(curve.signal[level])
    background = sum(templates[{"process": p}][hist.loc(70.0):hist.loc(90.0)].sum().value
                     for p in ("QCD", "single top"))
    assert background == pytest.approx(curve.background[level])


def test_analysis_scans_give_hists(synthetic_dataset):
    """A latent-space selection's scan and the event-level dijet scan, through DatasetAnalysis."""
    analysis = DatasetAnalysis(synthetic_dataset)
    discriminant = PRESETS["A1: X->cs"]
    scan = analysis.jet_scan(discriminant)
    subset = np.arange(0, synthetic_dataset.n_jets, 3)
    selection = analysis.subset_scan(discriminant, scan, subset)
    level = 2
    values = analysis.log_odds(discriminant)[subset]
    passing = subset[values >= scan.thresholds[level]]
    mass = synthetic_dataset.column("jet_sdmass")[passing]
    weights = synthetic_dataset.weights[passing]
    expected, _ = np.histogram(mass, bins=analysis.binning.edges, weights=weights)
    np.testing.assert_allclose(selection.spectrum_hist(level).values(), expected, rtol=1e-9)
    if analysis.has_events:
        events = analysis.event_scan(discriminant)
        histogram = events.spectrum_hist(1)
        np.testing.assert_allclose(histogram.values(flow=True),
                                   events.sum_of_weights[1].sum(axis=0))
        np.testing.assert_allclose(histogram.axes[0].edges, events.binning.edges)


@pytest.mark.parametrize("suffix", [".root", ".npz", ".json"])
def test_every_level_adds_the_spectrum_at_each_efficiency(jets, scan, tmp_path, suffix):
    """every_level: the sum over processes at each level of the scan, each under its own cut,
    in a scan scaled to another luminosity (weights x 2.5, squared weights x 6.25)."""
    if suffix == ".root":
        pytest.importorskip("uproot")
    scaled = scan.scaled(2.5)
    path = write_histograms(scaled, 1, tmp_path / f"spectra{suffix}", every_level=True)
    histograms, info = read_histograms(path)
    assert list(histograms)[4:] == [level_key(i) for i in range(scan.n_levels)]
    for index in range(scan.n_levels):
        values, variances = _expected(jets, scan, index)
        stored = histograms[level_key(index)]
        np.testing.assert_allclose(stored.values(flow=True), 2.5 * values, rtol=1e-10)
        np.testing.assert_allclose(stored.variances(flow=True), 6.25 * variances, rtol=1e-10)
        entry = info["levels"][level_key(index)]
        assert entry["efficiency"] == pytest.approx(scan.efficiencies[index])
        assert entry["threshold"] == pytest.approx(float(scan.thresholds[index]))
        assert stored.name == entry["name"] == \
            f"total at efficiency {scan.efficiencies[index]:.3g}"
    # the level's own histograms are unchanged by every_level
    np.testing.assert_allclose(histograms[TOTAL_KEY].values(flow=True),
                               2.5 * _expected(jets, scan, 1)[0], rtol=1e-10)
    # a process that would read as a level's key keeps its own
    assert histogram_key("total level 3") == "process_total_level_3"
    with pytest.raises(ValueError, match="factor"):
        scan.scaled(float("nan"))
