"""What the workshop notebooks' numbers and checks rest on (issue 22).

- The library's statistics that the notebooks print beside their text: a yield in some mass
  bins with its MC error and effective jets (``EfficiencyScan.window_yield``, ``peak``), the
  process shares, a significance point's s and b (``SignificanceCurve.yields``) and the weighted
  ROC curve (``sophon.tagging.weighted_roc``), each against a plain numpy count over the jets of
  a SYNTHETIC dataset; the ROC figure draws.
- The exercises' checks (``notebooks/_workshop.py``) on the embedded default: they reject the
  wrong answers (the plain X->bb tagger for the top peak; any other process or term for the
  triboson's selection) and accept the right ones. Skipped without the default.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS, Discriminant, Term
from sophon.tagging import weighted_roc

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def synthetic_analysis(synthetic_dataset):
    return DatasetAnalysis(synthetic_dataset)


def _passing(analysis, discriminant, scan, level):
    return analysis.log_odds(discriminant) >= scan.thresholds[level]


def test_window_yield_peak_and_shares_count_the_passing_jets(synthetic_analysis):
    analysis, dataset = synthetic_analysis, synthetic_analysis.dataset
    discriminant = PRESETS["X->bb vs QCD"]
    scan = analysis.jet_scan(discriminant, reference="QCD")
    level = scan.nearest_level(1e-2)
    passing = _passing(analysis, discriminant, scan, level)
    mass, weights, codes = dataset.column("jet_sdmass"), dataset.weights, dataset.process_codes
    centre = (np.floor(mass / 5.0) + 0.5) * 5.0     # 5 GeV bins from 0 to 500
    inside = passing & (centre >= 80) & (centre < 140)
    found = scan.window_yield(level, (80, 140))
    assert found.events == pytest.approx(weights[inside].sum())
    assert found.error == pytest.approx(np.sqrt((weights[inside] ** 2).sum()))
    assert found.effective_jets == pytest.approx(weights[inside].sum() ** 2
                                                 / (weights[inside] ** 2).sum())
    assert (found.low, found.high) == (80.0, 140.0)
    qcd = list(dataset.process_names).index("QCD")
    only_qcd = scan.window_yield(level, (80, 140), [qcd])
    assert only_qcd.events == pytest.approx(weights[inside & (codes == qcd)].sum())

    peak = scan.peak(level)
    in_bin = passing & (centre == peak.mass)
    assert peak.events == pytest.approx(weights[in_bin].sum())
    assert peak.events == pytest.approx(scan.spectrum(level).max())
    assert peak.error == pytest.approx(scan.bin_errors(level)[np.argmax(scan.spectrum(level))])
    assert "effective jets" in str(peak)

    shares = scan.process_shares(level)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["QCD"] == pytest.approx(weights[passing & (codes == qcd)].sum()
                                          / weights[passing].sum())
    with pytest.raises(ValueError, match="no mass bin"):
        scan.window_yield(level, (501, 600))


def test_significance_yields_are_its_s_and_b(synthetic_analysis):
    names = list(synthetic_analysis.dataset.process_names)
    signal = next(name for name in names if name != "QCD")
    curve = synthetic_analysis.significance(PRESETS["X->bb vs QCD"], signal, (60, 140))
    s, b = curve.yields()
    assert s.events == pytest.approx(curve.signal[curve.best])
    assert b.events == pytest.approx(curve.background[curve.best])
    assert 0 < b.effective_jets and b.error > 0


def test_weighted_roc_against_a_plain_count():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(1, 1, 400), rng.normal(-1, 1, 600)])
    weights = rng.uniform(0.5, 3.0, 1000)
    signal = np.arange(1000) < 400
    curve = weighted_roc(values, weights, signal, ~signal)
    assert curve.signal_efficiency[-1] == pytest.approx(1.0)
    assert curve.background_efficiency[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve.signal_efficiency) >= 0)
    for index in (10, 200, 700):
        cut = curve.thresholds[index]
        passing = values >= cut
        background = weights[~signal].sum()
        assert curve.signal_efficiency[index] == pytest.approx(
            weights[signal & passing].sum() / weights[signal].sum())
        assert curve.background_efficiency[index] == pytest.approx(
            weights[~signal & passing].sum() / background)
        assert curve.background_error[index] == pytest.approx(
            np.sqrt((weights[~signal & passing] ** 2).sum()) / background)
    # the AUC is the weighted chance that a signal value beats a background one
    pairs = (values[signal][:, None] > values[~signal][None, :])
    pair_weights = weights[signal][:, None] * weights[~signal][None, :]
    assert curve.auc == pytest.approx((pairs * pair_weights).sum() / pair_weights.sum(), abs=1e-3)
    point = curve.at_signal_efficiency(0.5)
    assert curve.signal_efficiency[point] >= 0.5 > curve.signal_efficiency[point - 1]
    with pytest.raises(ValueError):
        weighted_roc(values, weights, signal, np.zeros(1000, bool))


def test_roc_figure_draws(synthetic_analysis):
    pytest.importorskip("matplotlib")
    from sophon.figures import roc_figure

    names = list(synthetic_analysis.dataset.process_names)
    signal = next(name for name in names if name != "QCD")
    figure = roc_figure({"X->bb": synthetic_analysis.roc(PRESETS["X->bb vs QCD"], signal)},
                        luminosity_fb=138)
    axes = figure.axes[0]
    assert axes.get_yscale() == "log" and "AUC" in axes.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="unknown process"):
        synthetic_analysis.roc(PRESETS["X->bb vs QCD"], "nonexistent")


# --- the exercises' checks, on the embedded default -----------------------------------------
@pytest.fixture(scope="module")
def workshop():
    if str(NOTEBOOKS) not in sys.path:
        sys.path.insert(0, str(NOTEBOOKS))
    import _workshop

    if not _workshop.default_dataset_present():
        pytest.skip("the exercises' checks are made for the embedded default dataset")
    return _workshop


@pytest.fixture(scope="module")
def default_analysis(workshop):
    from sophon.store import JetDataset

    return DatasetAnalysis(JetDataset(workshop.DEFAULT_DATASET))


def test_the_plain_x_to_bb_tagger_fails_the_top_peak_check(workshop, default_analysis):
    assert not workshop.check_top_peak(default_analysis, PRESETS["X->bb vs QCD"])
    assert not workshop.check_top_peak(default_analysis, PRESETS["A1: X->cs"])
    assert not workshop.check_top_peak(default_analysis, None)
    assert workshop.check_top_peak(default_analysis, PRESETS["A3: X->b q q"])


def test_the_triboson_checks_reject_wrong_answers(workshop, default_analysis):
    paper = PRESETS["W'->WWW triboson"]
    assert workshop.check_triboson(paper)
    at_jet_level = Discriminant(name="jet level", numerator=paper.numerator,
                                denominator=paper.denominator)
    assert not workshop.check_triboson(at_jet_level)
    other_weights = Discriminant(name="other weights", level="event", denominator="QCD",
                                 numerator=tuple(Term(t.classes, 1.0, t.label)
                                                 for t in paper.numerator))
    assert not workshop.check_triboson(other_weights)

    # exactly one (process, term) answer passes the selection check
    labels = [term.label for term in paper.numerator]
    right = [(process, term)
             for process, term in itertools.product(default_analysis.dataset.process_names, labels)
             if workshop.check_triboson_selection(default_analysis, paper, process, term)]
    assert len(right) == 1
    assert not workshop.check_triboson_selection(default_analysis, paper, None, None)
    assert not workshop.check_triboson_selection(default_analysis, paper, "no such", labels[0])
