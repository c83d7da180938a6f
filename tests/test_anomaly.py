"""sophon.anomaly: the sliding-window weakly supervised search, against answers known by
construction: a resonance injected at a known mass with a known feature-space signature
enhances its own window and no far one, the background-only control enhances none, the windows'
edges and the working point are exact, and bad inputs name the value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sophon.anomaly import (
    AnomalyError, MassWindow, SearchSample, _WorkingPoint, data_weights, default_classifier,
    effective_count, sample_from_dataset, significance_improvement, sliding_window_scan,
    sliding_windows, split_sample,
)
from sophon.cli import main
from sophon.store import JetDataset
from sophon.synthetic import write_synthetic_dataset

RESONANCE_MASS = 150.0  # GeV
RESONANCE_WIDTH = 4.0  # GeV: the far windows' application ranges lie > 10 widths away
#: the resonance's share of the weight in 145-155 GeV: S = 2400 x 1.0 x P(|z| < 1.25) = 1893,
#: B = 48000 x 10/280 x (10^1.5 - 1) / (1.5 ln 10) = 15198
PEAK_SHARE = 1893.0 / (1893.0 + 15198.0)
#: one window on the resonance, two far from it
WINDOWS = (MassWindow(90.0), MassWindow(RESONANCE_MASS), MassWindow(210.0))


def _fast_classifier(seed: int):
    return default_classifier(seed, max_iter=30)


def resonance_sample(*, n_background: int = 48_000, n_signal: int = 2_400, seed: int = 11,
                     signal_weight: float = 1.0) -> SearchSample:
    """Background: mass flat in 40-320 GeV, 6 standard-normal features independent of mass,
    weights log-uniform over 1.5 decades (mean 8.87). Signal "X": mass N(150, 4) GeV, features
    shifted by +2 in the first two dimensions (its feature-space signature), weight
    ``signal_weight`` each: :data:`PEAK_SHARE` of the weight in 145-155 GeV."""
    rng = np.random.default_rng(seed)
    n_jets = n_background + n_signal
    mass = np.concatenate([rng.uniform(40.0, 320.0, n_background),
                           rng.normal(RESONANCE_MASS, RESONANCE_WIDTH, n_signal)])
    features = rng.standard_normal((n_jets, 6)).astype(np.float32)
    features[n_background:, :2] += 2.0
    weight = np.concatenate([10.0 ** rng.uniform(0.0, 1.5, n_background),
                             np.full(n_signal, signal_weight)])
    process = np.concatenate([np.zeros(n_background, np.int32), np.ones(n_signal, np.int32)])
    return SearchSample(features=features, mass=mass, weight=weight, process=process,
                        process_names=("QCD", "X"), event=np.arange(n_jets),
                        feature_names=tuple(f"feature_{i}" for i in range(6)))


@pytest.fixture(scope="module")
def resonance() -> SearchSample:
    return resonance_sample()


def test_window_edges_are_the_papers():
    window = MassWindow(125.0)
    assert window.signal_region == (110.0, 140.0)
    assert window.sidebands == ((100.0, 110.0), (140.0, 150.0))
    assert window.application == (120.0, 130.0)
    # half-open: an edge belongs to the region above it, never to two regions
    mass = np.array([99.999, 100.0, 109.999, 110.0, 139.999, 140.0, 149.999, 150.0])
    assert window.in_sidebands(mass).tolist() == [False, True, True, False, False, True, True,
                                                  False]
    assert window.in_signal_region(mass).tolist() == [False, False, False, True, True, False,
                                                      False, False]
    centres = [w.centre for w in sliding_windows()]
    assert centres == [65.0 + 10.0 * i for i in range(24)] and centres[-1] == 295.0
    # the application windows tile 60-300 GeV: the selected jets stack into one histogram
    edges = np.array([w.application for w in sliding_windows()])
    assert edges[0, 0] == 60.0 and edges[-1, 1] == 300.0
    assert np.array_equal(edges[1:, 0], edges[:-1, 1])


@pytest.mark.parametrize("ties", [False, True])
def test_working_point_keeps_the_asked_share_of_background_weight(ties):
    rng = np.random.default_rng(3)
    weight = 10.0 ** rng.uniform(0.0, 3.0, 50_000)  # three decades
    scores = rng.standard_normal(50_000).astype(np.float32)
    if ties:  # a classifier that learnt little: a handful of distinct scores
        scores = np.round(scores).astype(np.float32)
    point = _WorkingPoint.keeping(scores, weight, 1e-3)
    kept = np.dot(weight, point.passing(scores)) / weight.sum()
    assert kept == pytest.approx(1e-3, rel=1e-9)


def test_split_keeps_events_together_and_each_role_at_full_luminosity():
    rng = np.random.default_rng(0)
    n_jets = 10_000
    event = np.repeat(np.arange(n_jets // 2), 2)
    process = rng.integers(0, 2, n_jets // 2).repeat(2).astype(np.int32)
    sample = SearchSample(features=rng.standard_normal((n_jets, 2)).astype(np.float32),
                          mass=rng.uniform(50, 250, n_jets), weight=rng.uniform(1, 3, n_jets),
                          process=process, process_names=("QCD", "W"), event=event,
                          feature_names=("a", "b"))
    split = split_sample(sample, folds=3, simulation_fraction=0.4, seed=5)
    assert np.array_equal(split.fold[0::2], split.fold[1::2])
    assert np.array_equal(split.is_simulation[0::2], split.is_simulation[1::2])
    assert not split.is_simulation[process == 1].any()  # the simulation is background only
    assert set(np.unique(split.fold)) == {0, 1, 2}
    background = process == 0
    assert np.allclose(split.weight[split.is_simulation], sample.weight[split.is_simulation] / 0.4)
    data = data_weights(sample, split)
    assert np.allclose(data[background & ~split.is_simulation],
                       sample.weight[background & ~split.is_simulation] / 0.6)
    assert np.array_equal(data[process == 1], sample.weight[process == 1])
    assert not data[split.is_simulation].any()  # data and simulation share no jet
    assert not data_weights(sample, split, signal_scale=0.0)[process == 1].any()


@pytest.mark.parametrize("method", ["salad", "cwola", "iad"])
def test_resonance_enhances_its_window_and_no_far_one(resonance, method):
    result = sliding_window_scan(resonance, method=method, windows=WINDOWS, efficiency=0.05,
                                 seed=0, classifier=_fast_classifier)
    far_low, on_peak, far_high = result.windows
    share, _ = on_peak.non_qcd_share
    baseline, _ = on_peak.baseline_share
    assert baseline == pytest.approx(PEAK_SHARE, abs=0.03)  # within the data half's fluctuation
    assert share > 4 * baseline and on_peak.share_enhancement > 3
    assert on_peak.excess_significance > 3
    assert result.enhanced_windows == (RESONANCE_MASS,)
    assert result.share_enhanced_windows == (RESONANCE_MASS,)
    for far in (far_low, far_high):
        assert far.selected[1] == 0 and abs(far.excess_significance) < 3
    for window in result.windows:  # the working point is the one asked for, in every window
        assert window.background_efficiency == pytest.approx(0.05, rel=1e-9)


def test_background_only_control_enhances_no_window(resonance):
    windows = sliding_windows(80.0, 240.0, 40.0)
    reports = []
    result = sliding_window_scan(resonance, method="salad", windows=windows, efficiency=0.05,
                                 signal_scale=0.0, seed=1, classifier=_fast_classifier,
                                 progress=lambda done, total: reports.append((done, total)))
    assert reports == [(done, 5) for done in range(1, 6)]
    edges, stacked = result.stack()
    assert edges.tolist() == [[75.0, 85.0], [115.0, 125.0], [155.0, 165.0], [195.0, 205.0],
                              [235.0, 245.0]]
    assert np.array_equal(stacked["QCD"], [w.selected[0] for w in result.windows])
    assert result.control and result.enhanced_windows == () and result.unresolved_windows == ()
    significances = np.array([w.excess_significance for w in result.windows])
    assert np.all(np.abs(significances) < 3)
    assert all(w.selected[1] == 0 and w.non_qcd_share == (0.0, 0.0) for w in result.windows)
    assert result.share_enhanced_windows == ()


def test_a_working_point_beyond_the_simulated_statistics_is_flagged_not_enhanced(resonance):
    """1e-3 of ~430 simulated jets per window and fold is a fraction of one jet: the cut sits at
    the best simulated jet, and data jets above it are not what 1e-3 predicts."""
    result = sliding_window_scan(resonance, method="iad", windows=WINDOWS[1:2], efficiency=1e-3,
                                 seed=0, classifier=_fast_classifier)
    window = result.windows[0]
    assert window.background_prediction_jets < 10 and not window.resolved
    assert result.unresolved_windows == (RESONANCE_MASS,) and result.enhanced_windows == ()
    assert window.background_efficiency == pytest.approx(1e-3, rel=1e-9)


def test_a_common_weight_scale_scales_yields_and_nothing_else(resonance):
    """Per-class normalisation: the classifiers see the same weights, so every cut is the same
    and the selected yields scale exactly."""
    scaled = SearchSample(features=resonance.features, mass=resonance.mass,
                          weight=resonance.weight * 1e4, process=resonance.process,
                          process_names=resonance.process_names, event=resonance.event,
                          feature_names=resonance.feature_names)
    options = dict(method="iad", windows=WINDOWS[1:2], efficiency=0.05, seed=0,
                   classifier=_fast_classifier)
    plain = sliding_window_scan(resonance, **options).windows[0]
    heavy = sliding_window_scan(scaled, **options).windows[0]
    assert np.allclose(heavy.selected, plain.selected * 1e4, rtol=1e-6)
    assert heavy.non_qcd_share == pytest.approx(plain.non_qcd_share, rel=1e-6)
    assert heavy.effective_jets == pytest.approx(plain.effective_jets, rel=1e-6)


def test_effective_count_is_kish():
    assert effective_count(np.ones(40)) == pytest.approx(40)
    assert effective_count(np.array([1.0, 1.0, 100.0])) == pytest.approx(102 ** 2 / 10_002)
    assert effective_count(np.zeros(3)) == 0.0


def test_significance_improvement_grows_with_injected_signal(resonance):
    result = significance_improvement(resonance, window=MassWindow(RESONANCE_MASS), signal="X",
                                      signal_to_background=(0.005, 0.1), repeats=2,
                                      efficiency=0.05, classifier=_fast_classifier)
    assert result.improvement.shape == (2, 2) and result.spread.shape == (2,)
    # eps_S <= 1: the improvement is bounded by 1/sqrt(eps_B); a 2-sigma shift in two of six
    # features, learnt from a 10 % admixture, reaches a good part of it
    bound = 1 / np.sqrt(0.05)
    assert np.all(result.improvement <= bound + 1e-9)
    assert result.mean[1] > 0.4 * bound and result.mean[1] > result.mean[0]
    assert result.injected_events[1] == pytest.approx(20 * result.injected_events[0])


def test_dataset_sample_takes_leading_jets_and_their_features(synthetic_dataset):
    latent = sample_from_dataset(synthetic_dataset, "latent")
    leading = synthetic_dataset.column("jet_rank") == 0
    assert len(latent) == int(leading.sum()) and latent.features.shape[1] == 128
    assert np.array_equal(latent.mass, synthetic_dataset.column("jet_sdmass")[leading])
    assert np.array_equal(latent.weight, synthetic_dataset.weights[leading])
    highlevel = sample_from_dataset(synthetic_dataset, "highlevel", leading_only=False)
    tau1, tau2 = (synthetic_dataset.column(f"jet_tau{i}") for i in (1, 2))
    assert highlevel.feature_names == ("tau21", "tau32", "tau43", "jet_pt")
    assert np.allclose(highlevel.features[:, 0], tau2 / tau1)
    assert len(np.unique(highlevel.event)) == len(highlevel) // 2  # two jets per event


def test_bad_inputs_name_the_value(resonance, tmp_path):
    no_latents = JetDataset(write_synthetic_dataset(tmp_path / "plain.parquet", 400, seed=2,
                                                    with_latents=False))
    with pytest.raises(AnomalyError, match="no latents"):
        sample_from_dataset(no_latents, "latent")
    with pytest.raises(AnomalyError, match="'umap'"):
        sample_from_dataset(no_latents, "umap")
    with pytest.raises(AnomalyError, match="unknown process 'Zprime'.*QCD, X"):
        sliding_window_scan(resonance, windows=WINDOWS, signal_processes=["Zprime"])
    with pytest.raises(AnomalyError, match="'QCD' is the background"):
        sliding_window_scan(resonance, windows=WINDOWS, signal_processes=["QCD"])
    with pytest.raises(AnomalyError, match="m0 = 305 GeV needs jets from 280 to 330 GeV"):
        sliding_window_scan(resonance, windows=[MassWindow(305.0)])
    with pytest.raises(AnomalyError, match="unknown method 'bumps'"):
        sliding_window_scan(resonance, method="bumps", windows=WINDOWS)
    with pytest.raises(AnomalyError, match="efficiency is 1.5"):
        sliding_window_scan(resonance, windows=WINDOWS, efficiency=1.5)
    with pytest.raises(AnomalyError, match="step is -10"):
        sliding_windows(65, 295, -10)
    gap = ~((resonance.mass >= 100) & (resonance.mass < 110))  # no jet in 100-110 GeV
    gapped = SearchSample(features=resonance.features[gap], mass=resonance.mass[gap],
                          weight=resonance.weight[gap], process=resonance.process[gap],
                          process_names=resonance.process_names,
                          event=np.arange(int(gap.sum())), feature_names=resonance.feature_names)
    for method in ("salad", "cwola"):
        with pytest.raises(AnomalyError, match="m0 = 125 GeV: the sideband 100-110 GeV holds no"):
            sliding_window_scan(gapped, method=method, windows=[MassWindow(125.0)],
                                classifier=_fast_classifier)


def test_command_line_prints_the_json_summary(synthetic_path, capsys, tmp_path):
    output = tmp_path / "scan.json"
    code = main(["anomaly", str(synthetic_path), "--start", "80", "--stop", "100",
                 "--efficiency", "0.01", "--max-jets", "3000", "--max-iter", "20",
                 "--features", "highlevel", "--method", "cwola", "-o", str(output)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads(output.read_text())
    assert [w["m0_GeV"] for w in summary["windows"]] == [80.0, 90.0, 100.0]
    assert summary["windows"][0]["signal_region_GeV"] == [65.0, 95.0]
    assert summary["method"] == "cwola" and summary["features"] == list(
        ("tau21", "tau32", "tau43", "jet_pt"))
    assert all(w["background_efficiency"] == pytest.approx(0.01) for w in summary["windows"])
    assert main(["anomaly", str(synthetic_path), "--signal", "Zprime", "--start", "80",
                 "--stop", "80"]) == 2
    assert "unknown process 'Zprime'" in capsys.readouterr().err
    assert main(["anomaly", str(synthetic_path), "--improvement", "--signal", "W+jets",
                 "--window", "80", "--repeats", "2", "--signal-to-background", "0.05", "0.2",
                 "--efficiency", "0.05", "--max-iter", "20", "--features", "highlevel",
                 "--max-jets", "2000"]) == 0
    improvement = json.loads(capsys.readouterr().out)
    assert improvement["m0_GeV"] == 80.0 and improvement["signal"] == "W+jets"
    assert np.array(improvement["improvement"]).shape == (2, 2)
