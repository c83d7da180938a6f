import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS
from sophon.labels import select


@pytest.fixture(scope="module")
def analysis(synthetic_dataset):
    return DatasetAnalysis(synthetic_dataset)


def test_dijet_mass_from_the_two_leading_jets(analysis, synthetic_dataset):
    events = analysis.events
    jets = np.flatnonzero(events.event_of_jet == 17)
    pt, eta, phi, energy = (synthetic_dataset.column(c)[jets].astype(float)
                            for c in ("jet_pt", "jet_eta", "jet_phi", "jet_energy"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    expected = np.sqrt(energy.sum() ** 2 - px.sum() ** 2 - py.sum() ** 2 - pz.sum() ** 2)
    assert events.dijet_mass[17] == pytest.approx(expected, rel=1e-5)
    assert events.n_events == synthetic_dataset.n_jets // 2


def test_event_discriminant_is_the_sum_over_leading_jets(analysis):
    triboson = PRESETS["W'->WWW triboson"]
    jet_values = analysis.discriminant(triboson)
    event_values = analysis.event_discriminant(triboson)
    events = analysis.events
    first = np.flatnonzero(events.event_of_jet == 3)
    assert event_values[3] == pytest.approx(jet_values[first].sum(), rel=1e-6)
    assert np.all((event_values >= 0) & (event_values <= 2 + 1e-6))
    scan = analysis.event_scan(triboson)
    assert scan.selected_jets(0) == events.n_events


def test_qcd_efficiency_reference(analysis, synthetic_dataset):
    scan = analysis.jet_scan(PRESETS["A1: X->cs"], efficiencies=[0.01], reference="QCD")
    qcd = analysis.qcd_reference
    values = analysis.log_odds(PRESETS["A1: X->cs"])
    weights = synthetic_dataset.weights
    fraction = weights[qcd & (values >= scan.thresholds[0])].sum() / weights[qcd].sum()
    assert fraction == pytest.approx(0.01, abs=0.002)


def test_tight_cut_reveals_the_synthetic_peaks(analysis):
    """On the synthetic sample the W tagger's tight spectrum peaks at the W mass it was built
    with, and the bqq tagger's at the top mass (a check of the whole chain, not of physics)."""
    for name, peak in (("A1: X->cs", 80.4), ("A3: X->b q q", 173.0)):
        scan = analysis.jet_scan(PRESETS[name], reference="QCD")
        level = scan.nearest_level(1e-4)
        assert abs(scan.binning.centers[np.argmax(scan.spectrum(level))] - peak) < 15


def test_subset_uses_the_full_dataset_thresholds(analysis):
    discriminant = PRESETS["A2: X->bb"]
    full = analysis.jet_scan(discriminant)
    subset = np.arange(0, 5000)
    partial = analysis.subset_scan(discriminant, full, subset)
    np.testing.assert_array_equal(partial.thresholds, full.thresholds)
    values = analysis.log_odds(discriminant)[subset]
    assert partial.selected_jets(4) == int((values >= full.thresholds[4]).sum())


def test_top_classes(analysis, synthetic_dataset):
    top, probabilities = analysis.top_classes(np.array([0, 1]), k=5)
    assert top.shape == (2, 5)
    assert np.all(np.diff(probabilities, axis=1) <= 0)
    assert probabilities[0, 0] == synthetic_dataset.scores[0].max()


def test_discriminant_values_are_cached_and_read_only(analysis):
    first = analysis.log_odds(PRESETS["A2: X->bb"])
    assert analysis.log_odds(PRESETS["A2: X->bb"]) is first
    assert not first.flags.writeable
    assert len(select("QCD")) == 27


def test_event_significance_counts_events_in_the_dijet_window(analysis, synthetic_dataset):
    triboson = PRESETS["W'->WWW triboson"]
    curve = analysis.event_significance(triboson, "ttbar", (500.0, 1500.0))
    events = analysis.events
    values = analysis.event_discriminant(triboson)
    signal = events.process_code == list(synthetic_dataset.process_names).index("ttbar")
    low, high = curve.window
    in_window = (events.dijet_mass >= low) & (events.dijet_mass < high)
    for i, cut in enumerate(curve.thresholds):
        passing = (values >= cut) & in_window
        assert curve.signal[i] == pytest.approx(events.weight[passing & signal].sum())
        assert curve.background[i] == pytest.approx(events.weight[passing & ~signal].sum())


def test_leading_jet_scan_uses_only_each_events_leading_jet(analysis, synthetic_dataset):
    discriminant = PRESETS["A1: X->cs"]
    leading = synthetic_dataset.column("jet_rank") == 0
    scan = analysis.jet_scan(discriminant, efficiencies=[1.0, 0.01], jets="leading")
    assert scan.selected_jets(0) == int(leading.sum()) < len(leading)
    # the cut keeps 1 % of the leading jets' weight, computed here directly
    values = analysis.log_odds(discriminant)[leading]
    weights = synthetic_dataset.weights[leading]
    passing = values >= scan.thresholds[1]
    assert scan.selected_jets(1) == int(passing.sum())
    assert scan.achieved_efficiencies[1] == pytest.approx(weights[passing].sum() / weights.sum())
    assert scan.effective_jets(1) == pytest.approx(weights[passing].sum() ** 2
                                                   / (weights[passing] ** 2).sum())
    with pytest.raises(ValueError, match="leading"):
        analysis.jet_scan(discriminant, jets="subleading")


def test_no_truth_class_is_not_qcd(tmp_path):
    """jet_label -1 (SM or Delphes jets without a truth class) never counts as QCD."""
    from sophon.synthetic import make_synthetic
    from sophon.store import DatasetMetadata, JetDataset, write_dataset

    sample = make_synthetic(200, 3)
    columns = {k: v for k, v in sample.columns.items() if k != "process"}
    labels = np.asarray(columns["jet_label"]).copy()
    labels[:50] = -1
    columns["jet_label"] = labels
    path = write_dataset(tmp_path / "jets.parquet", columns, scores=sample.scores,
                         latents=sample.latents, metadata=DatasetMetadata(model_id="synthetic"))
    reference = DatasetAnalysis(JetDataset(path)).qcd_reference
    assert not reference[:50].any()
    qcd = np.array([name.startswith("QCD") for name in np.array(select("all"))])
    np.testing.assert_array_equal(reference[50:], qcd[labels[50:]])


def test_event_scans_are_labelled_dijet_mass(analysis):
    from sophon.spectrum import DIJET_MASS_LABEL

    assert analysis.event_scan(PRESETS["X->bb vs QCD"]).mass_label == DIJET_MASS_LABEL
