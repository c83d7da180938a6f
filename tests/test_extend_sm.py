"""sophon extend-sm: an SM sample combined with an extension from a higher pTHat, on toy samples
whose true cross-sections are known (dsigma/dpTHat proportional to pTHat^-5, generated with the
same pTHat^k bias as Pythia's bias2Selection)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("pythia8mc")  # sophon.generate needs the generate extra

from sophon.generate.extend import extend_sm, overlap_scale  # noqa: E402
from sophon.generate.writer import with_metadata, write_table_atomic  # noqa: E402

POWER, LOW, HIGH = 1.5, 200.0, 300.0
SPECTRUM = 5.0  # dsigma/dp ~ p^-5
TRUE_EVENTS = 1e6  # expected events above LOW in the luminosity


def _true_events_above(p: float) -> float:
    return TRUE_EVENTS * (p / LOW) ** (1.0 - SPECTRUM)


def _toy(path, n_events: int, pt_hat_min: float, seed: int, event_ids_from: int = 0,
         sample_pt_hat_min: float | None = None):
    """``n_events`` events of one QCD-like process from ``pt_hat_min``, weighted as the SM
    generator weights them; returns their pTHat. With ``sample_pt_hat_min`` the metadata says the
    sample's cut was that and QCD's own cut ``pt_hat_min`` (a per-process cut)."""
    rng = np.random.default_rng(seed)
    # biased generation: density ~ p^-SPECTRUM (p / pt_hat_min)^POWER
    pt_hat = pt_hat_min * rng.random(n_events) ** (-1.0 / (SPECTRUM - 1.0 - POWER))
    event_weight = (pt_hat_min / pt_hat) ** POWER
    scale = _true_events_above(pt_hat_min) / event_weight.sum()
    table = pa.table({"event_id": np.arange(n_events) + event_ids_from,
                      "jet_rank": np.zeros(n_events, dtype=np.int8),
                      "jet_sdmass": rng.uniform(0.0, 600.0, n_events),
                      "process": ["QCD"] * n_events, "weight": event_weight * scale})
    metadata = {"luminosity_fb": 138.0, "bias_power": POWER, "ecm_gev": 13000.0, "mpi": False,
                "selection": {"pt_min": 200.0}, "trigger": "toy",
                "pt_hat_min_gev": sample_pt_hat_min or pt_hat_min,
                "seed": seed, "n_events": n_events, "chunks": [],
                "processes": {"QCD": {"weight_per_unit_event_weight": scale}}}
    if sample_pt_hat_min is not None:
        metadata["processes"]["QCD"]["pt_hat_min_gev"] = pt_hat_min
    write_table_atomic(with_metadata(table, metadata, luminosity_fb=138.0), path)
    return pt_hat


def test_the_combination_is_unbiased_and_more_precise_above_the_extensions_pt_hat(tmp_path):
    base_pt_hat = _toy(tmp_path / "base.parquet", 200_000, LOW, seed=1)
    extension_pt_hat = _toy(tmp_path / "extension.parquet", 100_000, HIGH, seed=2)
    report = extend_sm(tmp_path / "base.parquet", tmp_path / "extension.parquet",
                       tmp_path / "combined" / "SM.parquet", batch_rows=30_000)
    import pyarrow.parquet as pq

    combined = pq.read_table(report.path)
    assert combined.num_rows == 300_000 and report.base_jets == 200_000
    weight = combined["weight"].to_numpy()
    pt_hat = np.concatenate([base_pt_hat, extension_pt_hat])
    ids = combined["event_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids)  # extension ids follow the base's

    # every event above HIGH, of either sample, weighs 1 / (1/w_base(p) + 1/w_ext(p))
    base_meta, ext_meta = (pq.read_schema(tmp_path / f).metadata for f in
                           ("base.parquet", "extension.parquet"))
    import json
    c_base = json.loads(base_meta[b"sophon.generate"])["processes"]["QCD"][
        "weight_per_unit_event_weight"]
    c_ext = json.loads(ext_meta[b"sophon.generate"])["processes"]["QCD"][
        "weight_per_unit_event_weight"]
    above = pt_hat >= HIGH
    expected = 1.0 / (1.0 / (c_base * (LOW / pt_hat) ** POWER)
                      + 1.0 / (c_ext * (HIGH / pt_hat) ** POWER))
    np.testing.assert_allclose(weight[above], expected[above], rtol=1e-9)
    base_weight = pq.read_table(tmp_path / "base.parquet")["weight"].to_numpy()
    np.testing.assert_array_equal(weight[:200_000][~above[:200_000]],
                                  base_weight[~above[:200_000]])  # below: untouched
    assert report.ratios["QCD"] == pytest.approx(
        overlap_scale(json.loads(base_meta[b"sophon.generate"]),
                      json.loads(ext_meta[b"sophon.generate"]), "QCD"))

    # unbiased: the expected events above several thresholds, within 4 standard deviations
    for threshold in (LOW, HIGH, 400.0, 600.0):
        passing = pt_hat >= threshold
        estimate = weight[passing].sum()
        error = np.sqrt((weight[passing] ** 2).sum())
        assert abs(estimate - _true_events_above(threshold)) < 4 * error, threshold
        if threshold >= HIGH:  # and more precise than the base alone (Kish's count grows)
            alone = base_weight[base_pt_hat >= threshold]
            assert (weight[passing].sum() ** 2 / (weight[passing] ** 2).sum()
                    > 2 * alone.sum() ** 2 / (alone ** 2).sum())


def test_a_process_with_its_own_pt_hat_cut_is_combined_from_that_cut(tmp_path):
    """The base's QCD generated from 250 GeV while the sample's cut says 200 (as `sophon
    generate sm --process-pt-hat-min QCD=250` writes it): its pTHat is read from its weight with
    its own cut, so the combination weighs and estimates as for a base from 250."""
    own = 250.0
    base_pt_hat = _toy(tmp_path / "base.parquet", 100_000, own, seed=7, sample_pt_hat_min=LOW)
    extension_pt_hat = _toy(tmp_path / "extension.parquet", 50_000, HIGH, seed=8)
    import json

    import pyarrow.parquet as pq

    report = extend_sm(tmp_path / "base.parquet", tmp_path / "extension.parquet",
                       tmp_path / "combined.parquet")
    weight = pq.read_table(report.path)["weight"].to_numpy()
    pt_hat = np.concatenate([base_pt_hat, extension_pt_hat])
    c_base, c_ext = (json.loads(pq.read_schema(tmp_path / f).metadata[b"sophon.generate"])[
        "processes"]["QCD"]["weight_per_unit_event_weight"]
        for f in ("base.parquet", "extension.parquet"))
    assert report.ratios["QCD"] == pytest.approx((c_ext / c_base) * (HIGH / own) ** POWER)
    above = pt_hat >= HIGH
    expected = 1.0 / (1.0 / (c_base * (own / pt_hat) ** POWER)
                      + 1.0 / (c_ext * (HIGH / pt_hat) ** POWER))
    np.testing.assert_allclose(weight[above], expected[above], rtol=1e-9)
    for threshold in (own, HIGH, 500.0):
        passing = pt_hat >= threshold
        error = np.sqrt((weight[passing] ** 2).sum())
        assert abs(weight[passing].sum() - _true_events_above(threshold)) < 4 * error, threshold
    # an extension whose QCD starts below the base's own QCD cut is refused, naming the process
    _toy(tmp_path / "low.parquet", 1_000, 240.0, seed=9)
    with pytest.raises(ValueError, match=r"low\.parquet: QCD pTHatMin 240 GeV must be above "
                                         r"the base's 250 GeV"):
        extend_sm(tmp_path / "base.parquet", tmp_path / "low.parquet", tmp_path / "out.parquet")


def test_the_msd_window_writes_the_jets_inside_it_with_the_weights_of_the_full_combination(
        tmp_path):
    _toy(tmp_path / "base.parquet", 20_000, LOW, seed=3)
    _toy(tmp_path / "extension.parquet", 10_000, HIGH, seed=4)
    import pyarrow.parquet as pq

    full = pq.read_table(extend_sm(tmp_path / "base.parquet", tmp_path / "extension.parquet",
                                   tmp_path / "full.parquet", batch_rows=7_000).path)
    report = extend_sm(tmp_path / "base.parquet", tmp_path / "extension.parquet",
                       tmp_path / "window.parquet", batch_rows=7_000, sdmass_range=(20.0, 500.0))
    window = pq.read_table(report.path)
    sdmass = full["jet_sdmass"].to_numpy()
    inside = (sdmass > 20.0) & (sdmass < 500.0)
    assert 0 < inside.sum() < len(full)  # the toy has jets on both sides
    assert window.num_rows == inside.sum() == report.base_jets + report.extension_jets
    assert report.base_jets == int(inside[:20_000].sum())
    for name in ("event_id", "jet_sdmass", "weight"):
        np.testing.assert_array_equal(window[name].to_numpy(), full[name].to_numpy()[inside])


def test_a_reversed_window_or_a_sample_without_msd_is_refused_by_name(tmp_path, capsys):
    from sophon.cli import main

    _toy(tmp_path / "base.parquet", 1_000, LOW, seed=5)
    _toy(tmp_path / "extension.parquet", 1_000, HIGH, seed=6)
    output = tmp_path / "combined.parquet"
    assert main(["extend-sm", str(tmp_path / "base.parquet"), str(tmp_path / "extension.parquet"),
                 "-o", str(output), "--sdmass-window", "500", "20"]) == 2
    assert "--sdmass-window 500 20: the low edge must be below the high one" in capsys.readouterr().err
    import pyarrow.parquet as pq

    for name in ("base", "extension"):  # the same columns, neither with jet_sdmass
        table = pq.read_table(tmp_path / f"{name}.parquet")
        pq.write_table(table.drop_columns(["jet_sdmass"]), tmp_path / f"{name}.parquet")
    with pytest.raises(ValueError, match=r"base\.parquet: no 'jet_sdmass' column"):
        extend_sm(tmp_path / "base.parquet", tmp_path / "extension.parquet", output,
                  sdmass_range=(20.0, 500.0))
    assert not output.exists()


def test_incompatible_samples_are_refused_by_name(tmp_path):
    _toy(tmp_path / "base.parquet", 1000, LOW, seed=1)
    _toy(tmp_path / "lower.parquet", 1000, 150.0, seed=2)
    with pytest.raises(ValueError, match=r"lower\.parquet: QCD pTHatMin 150 GeV must be above"):
        extend_sm(tmp_path / "base.parquet", tmp_path / "lower.parquet", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
