import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sophon.spectrum import (DEFAULT_EFFICIENCIES, EfficiencyScan, MassBinning,
                             significance_scan, thresholds_for_efficiencies)
from sophon.stats import asimov_significance


def naive_thresholds(values, weights, efficiencies):
    order = np.argsort(-values, kind="stable")
    accumulated = np.cumsum(weights[order])
    result = []
    for efficiency in efficiencies:
        position = np.searchsorted(accumulated, efficiency * weights.sum() * (1 - 1e-12))
        result.append(values[order][min(position, len(values) - 1)])
    return np.array(result, dtype=np.float32)


def test_asimov_known_values():
    assert asimov_significance(10.0, 10.0) == pytest.approx(math.sqrt(2 * (20 * math.log(2) - 10)))
    # s << b: Z -> s / sqrt(b)
    assert asimov_significance(1.0, 1e6) == pytest.approx(1e-3, rel=1e-3)
    assert asimov_significance(0.0, 5.0) == 0.0
    assert np.isinf(asimov_significance(3.0, 0.0))


def test_default_efficiencies_are_the_nine_decades_halves():
    np.testing.assert_allclose(DEFAULT_EFFICIENCIES, [10 ** (-k / 2) for k in range(9)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**31 - 1), st.booleans())
def test_thresholds_equal_a_full_sort(n, seed, with_ties):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n).astype(np.float32)
    if with_ties:
        values = np.round(values, 1)
        values[: n // 10] = np.inf
    weights = rng.exponential(size=n)
    efficiencies = np.sort(rng.uniform(1e-4, 1, 7))[::-1]
    np.testing.assert_array_equal(thresholds_for_efficiencies(values, weights, efficiencies),
                                  naive_thresholds(values, weights, efficiencies))


def test_thresholds_keep_the_requested_weighted_fraction():
    rng = np.random.default_rng(5)
    values = rng.normal(size=200_000).astype(np.float32)
    weights = rng.exponential(size=values.size)
    for efficiency, cut in zip(DEFAULT_EFFICIENCIES,
                               thresholds_for_efficiencies(values, weights, DEFAULT_EFFICIENCIES)):
        passing = weights[values >= cut].sum() / weights.sum()
        strictly_above = weights[values > cut].sum() / weights.sum()
        assert strictly_above < efficiency <= passing + 1e-12


def test_reference_subset_sets_the_efficiency():
    rng = np.random.default_rng(6)
    values = rng.normal(size=10_000).astype(np.float32)
    weights = np.ones(values.size)
    reference = rng.random(values.size) < 0.3
    cut = thresholds_for_efficiencies(values, weights, [0.1], reference)[0]
    np.testing.assert_array_equal(cut, naive_thresholds(values[reference], weights[reference],
                                                        [0.1])[0])


def test_scan_spectra_equal_direct_histograms():
    rng = np.random.default_rng(8)
    n = 50_000
    values = rng.normal(size=n).astype(np.float32)
    mass = rng.uniform(-20, 600, n)
    weights = rng.exponential(size=n)
    processes = rng.integers(0, 3, n)
    binning = MassBinning(50, 0, 500)
    scan = EfficiencyScan.build(values, binning.index(mass), weights, processes, ["a", "b", "c"],
                                binning=binning)
    for level, cut in enumerate(scan.thresholds):
        passing = values >= cut
        expected, _ = np.histogram(mass[passing], bins=binning.edges, weights=weights[passing])
        np.testing.assert_allclose(scan.spectrum(level), expected, rtol=1e-9, atol=1e-9)
        expected_w2, _ = np.histogram(mass[passing], bins=binning.edges,
                                      weights=weights[passing] ** 2)
        np.testing.assert_allclose(scan.spectrum_variance(level), expected_w2, rtol=1e-9)
        assert scan.selected_jets(level) == passing.sum()
        assert scan.selected_yield(level) == pytest.approx(weights[passing].sum())
        for code in range(3):
            mine = passing & (processes == code)
            expected, _ = np.histogram(mass[mine], bins=binning.edges, weights=weights[mine])
            np.testing.assert_allclose(scan.stack(level)[code], expected, rtol=1e-9, atol=1e-9)
    histogram = scan.to_hist(3)
    np.testing.assert_allclose(histogram.values()[1], scan.stack(3)[1])
    assert histogram.sum(flow=True).value == pytest.approx(scan.selected_yield(3))


def test_significance_scan_matches_a_direct_count():
    rng = np.random.default_rng(9)
    n = 40_000
    processes = rng.integers(0, 2, n)  # 0 = signal
    mass = np.where(processes == 0, rng.normal(80, 5, n), rng.uniform(0, 500, n))
    values = (rng.normal(size=n) + 2.0 * (processes == 0)).astype(np.float32)
    weights = np.where(processes == 0, 0.1, 1.0)
    binning = MassBinning(100, 0, 500)
    curve = significance_scan(values, binning.index(mass), weights, processes, ["W", "QCD"], "W",
                              (70, 90), background_efficiencies=[1.0, 0.1, 0.01], binning=binning)
    assert curve.window == (70.0, 90.0)
    for i, cut in enumerate(curve.thresholds):
        passing = (values >= cut) & (mass >= 70) & (mass < 90)
        s = weights[passing & (processes == 0)].sum()
        b = weights[passing & (processes == 1)].sum()
        assert curve.signal[i] == pytest.approx(s)
        assert curve.background[i] == pytest.approx(b)
        assert curve.significance[i] == pytest.approx(asimov_significance(s, b))
    with pytest.raises(ValueError, match="unknown signal process"):
        significance_scan(values, binning.index(mass), weights, processes, ["W", "QCD"], "Z",
                          (70, 90))


def test_mass_binning_flows():
    binning = MassBinning(10, 0, 100)
    np.testing.assert_array_equal(binning.index(np.array([-5, 0, 9.99, 10, 99.9, 100, np.nan])),
                                  [0, 1, 1, 2, 10, 11, 11])


def test_effective_jets_largest_share_and_achieved_efficiency_known_answers():
    # 98 light jets of weight 1 with low scores and two heavy jets of weight 100 at the top
    values = np.concatenate([np.linspace(0, 1, 98), [5.0, 6.0]]).astype(np.float32)
    weights = np.concatenate([np.ones(98), [100.0, 100.0]])
    binning = MassBinning(bins=10, low=0, high=100)
    mass_index = binning.index(np.full(100, 55.0))
    scan = EfficiencyScan.build(values, mass_index, weights, np.zeros(100, int), ["QCD"],
                                efficiencies=[1.0, 0.5, 0.01], binning=binning)
    # everything: (298)^2 / (98 + 2e4)
    assert scan.effective_jets(0) == pytest.approx(298**2 / (98 + 2e4))
    assert scan.largest_weight_share(0) == pytest.approx(100 / 298)
    # 50 % of 298 is reached by the two heavy jets (200 of 298): they alone pass, achieving 67 %
    assert scan.selected_jets(1) == 2
    assert scan.effective_jets(1) == pytest.approx(2.0)
    assert scan.largest_weight_share(1) == pytest.approx(0.5)
    assert scan.achieved_efficiencies[1] == pytest.approx(200 / 298)
    # 1 % = 2.98 events: the heaviest jet alone, which is 33.6 % of the weight
    assert scan.selected_jets(2) == 1 and scan.effective_jets(2) == pytest.approx(1.0)
    assert scan.achieved_efficiencies[2] == pytest.approx(100 / 298)
    np.testing.assert_allclose(scan.spectrum_variance(2)[5], 1e4)
    assert np.all(np.isnan(EfficiencyScan.from_thresholds(
        values, mass_index, weights, np.zeros(100, int), ["QCD"], efficiencies=scan.efficiencies,
        thresholds=scan.thresholds, binning=binning).achieved_efficiencies))


def test_nearest_level_in_log_scale():
    from sophon.spectrum import nearest_level

    efficiencies = DEFAULT_EFFICIENCIES
    assert nearest_level(efficiencies, 1.0) == 0
    assert nearest_level(efficiencies, 1e-4) == 8
    # 0.05 lies 0.30 decades below 0.1 and 0.20 above 10^-1.5 = 0.0316: the latter is nearer
    assert nearest_level(efficiencies, 0.05) == 3
    assert nearest_level(efficiencies, 0.07) == 2


def test_densest_window_holds_half_the_weight_in_the_narrowest_interval():
    from sophon.spectrum import MassBinning, densest_window

    binning = MassBinning(bins=50, low=0.0, high=500.0)
    # a narrow peak at 80-90 GeV with 60 % of the weight, a broad tail elsewhere
    rng = np.random.default_rng(3)
    peak = rng.uniform(81.0, 89.0, 600)
    tail = rng.uniform(150.0, 450.0, 400)
    mass = np.concatenate([peak, tail, [np.nan, 700.0, -5.0]])
    weights = np.ones(len(mass))
    low, high = densest_window(mass, weights, binning)
    assert (low, high) == (80.0, 90.0)  # snapped outward to the 10 GeV bin edges
    # zero-weight jets do not count; a heavy tail jet pulls the window to itself
    weights[600] = 10_000.0
    low, high = densest_window(mass, weights, binning)
    assert low <= mass[600] < high and high - low == 10.0
    assert densest_window(np.array([np.nan]), np.array([1.0]), binning) == (0.0, 500.0)


def test_effective_count_is_kish_for_scalars_and_arrays():
    from sophon.stats import effective_count

    weights = np.array([1.0, 1.0, 100.0])
    assert effective_count(weights.sum(), (weights ** 2).sum()) == pytest.approx(102 ** 2 / 10_002)
    assert effective_count(40.0, 40.0) == 40.0
    assert effective_count(0.0, 0.0) == 0.0
    np.testing.assert_allclose(effective_count(np.array([4.0, 0.0, 6.0]), np.array([8.0, 0.0, 12.0])),
                               [2.0, 0.0, 3.0])
