"""Compact datasets: scores recomputed from latents through the model head, mantissa rounding,
constituents kept for a subset of jets (`sophon package`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sophon.model import SophonModel, head_probabilities, randomize_weights_, save_checkpoint
from sophon.packaging import package_dataset, round_mantissa, subset_lists
from sophon.store import SCORE_COLUMNS, DatasetError, DatasetMetadata, JetDataset, write_dataset
from sophon.training import TRAINING_CONFIGS


def _scored(path, model, n=3000, seed=0):
    """A dataset whose scores are the model head of its latents, as `sophon score` writes them."""
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(n, 128)).astype(np.float32) * 2
    jets = {"jet_pt": rng.uniform(200, 1000, n).astype(np.float32),
            "jet_sdmass": rng.uniform(20, 300, n).astype(np.float32),
            "weight": rng.uniform(0.1, 1, n), "process": np.where(rng.random(n) < 0.5, "QCD", "W"),
            "event_id": np.arange(n, dtype=np.int64)}
    write_dataset(path, jets, scores=head_probabilities(model, latents), latents=latents,
                  metadata=DatasetMetadata(luminosity_fb=138.0, model_id="small"))
    return latents


def _beside(tmp_path, checkpoint):
    """A copy of ``checkpoint`` in ``tmp_path/models``: inside the folder holding the datasets."""
    copy = tmp_path / "models" / checkpoint.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(checkpoint.read_bytes())
    return copy


def test_round_mantissa_matches_bfloat16_and_bounds_the_error():
    rng = np.random.default_rng(1)
    values = (rng.normal(size=20_000) * 10.0 ** rng.uniform(-3, 3, 20_000)).astype(np.float32)
    rounded = round_mantissa(values, 7)
    assert rounded.dtype == np.float32
    assert not (rounded.view(np.uint32) & 0xFFFF).any()  # the dropped bits are zero
    assert np.all(np.abs(rounded - values) <= np.abs(values) * 2.0 ** -8)
    # bfloat16 keeps 7 mantissa bits and rounds to nearest (ties to even: skip exact ties)
    reference = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    not_tie = (values.view(np.uint32) & 0xFFFF) != 0x8000
    np.testing.assert_array_equal(rounded[not_tie], reference[not_tie])
    np.testing.assert_array_equal(round_mantissa(values, 23), values)
    with pytest.raises(ValueError, match="mantissa bits"):
        round_mantissa(values, 0)


def test_subset_lists_empties_the_rows_not_kept():
    column = pa.array([[1.0, 2.0], [3.0], [], [4.0, 5.0, 6.0]], pa.list_(pa.float32()))
    result = subset_lists(column.slice(0), np.array([True, False, True, True]))
    assert result.to_pylist() == [[1.0, 2.0], [], [], [4.0, 5.0, 6.0]]
    sliced = subset_lists(column.slice(1, 3), np.array([True, False, True]))
    assert sliced.to_pylist() == [[3.0], [], [4.0, 5.0, 6.0]]


def test_scores_are_recomputed_from_the_latents(tmp_path, model_file):
    checkpoint, model = model_file
    checkpoint = _beside(tmp_path, checkpoint)
    latents = _scored(tmp_path / "scored.parquet", model)
    packed = tmp_path / "default" / "jets.parquet"
    report = package_dataset(tmp_path / "scored.parquet", packed, checkpoint=checkpoint,
                             log=lambda *a: None)
    assert report.max_score_difference < 0.02
    names = pq.read_schema(packed).names
    assert not any(n in names for n in SCORE_COLUMNS) and "latent" in names
    dataset = JetDataset(packed)
    assert dataset.score_head == checkpoint.resolve()
    expected = head_probabilities(model, round_mantissa(latents, 7))
    np.testing.assert_allclose(dataset.scores, expected, rtol=0, atol=1e-6)
    original = JetDataset(tmp_path / "scored.parquet").scores
    assert np.abs(dataset.scores - original).max() < 0.02
    assert dataset.metadata.luminosity_fb == 138.0
    np.testing.assert_array_equal(dataset.column("jet_pt"),
                                  JetDataset(tmp_path / "scored.parquet").column("jet_pt"))


def test_latent_codes_round_trip_within_half_a_step(tmp_path, model_file):
    from sophon.store import decode_latents, encode_latents

    rng = np.random.default_rng(2)
    latents = (rng.normal(size=(500, 128)) * rng.uniform(0.1, 5, 128)).astype(np.float32)
    codes, quantisation = encode_latents(latents)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    step = np.asarray(quantisation["step"], dtype=np.float32)
    error = np.abs(decode_latents(codes, quantisation) - latents)
    assert np.all(error <= 0.5 * step * (1 + 1e-4) + 1e-6)
    # packed with codes: the store decodes them, and the scores are the head's of the decoded
    checkpoint, model = model_file
    checkpoint = _beside(tmp_path, checkpoint)
    stored = _scored(tmp_path / "scored.parquet", model)
    packed = tmp_path / "default" / "codes.parquet"
    package_dataset(tmp_path / "scored.parquet", packed, checkpoint=checkpoint, latent_codes=True,
                    log=lambda *a: None)
    assert pq.read_schema(packed).field("latent").type.value_type == pa.uint8()
    dataset = JetDataset(packed)
    codes, quantisation = encode_latents(stored)
    np.testing.assert_allclose(dataset.latents, decode_latents(codes, quantisation), atol=1e-6)
    np.testing.assert_allclose(dataset.scores, head_probabilities(model, dataset.latents),
                               atol=1e-6)


def test_score_head_problems_are_named(tmp_path, model_file):
    checkpoint, model = model_file
    _scored(tmp_path / "scored.parquet", model)
    packed = tmp_path / "data" / "default" / "jets.parquet"
    head = tmp_path / "data" / "models" / "small.pt"
    head.parent.mkdir(parents=True)
    head.write_bytes(checkpoint.read_bytes())
    package_dataset(tmp_path / "scored.parquet", packed, checkpoint=head, log=lambda *a: None)
    assert JetDataset(packed).score_head == head.resolve()
    head.unlink()
    with pytest.raises(DatasetError, match=r"score head .*small\.pt.* missing"):
        JetDataset(packed)
    # a head outside the folder that holds the dataset is refused
    outside = tmp_path / "elsewhere" / "jets.parquet"
    package_dataset(tmp_path / "scored.parquet", outside, checkpoint=checkpoint,
                    log=lambda *a: None)
    with pytest.raises(DatasetError, match="outside"):
        JetDataset(outside)


def test_a_different_model_is_refused(tmp_path, model_file):
    checkpoint, model = model_file
    _scored(tmp_path / "scored.parquet", model)
    other = randomize_weights_(SophonModel(TRAINING_CONFIGS["small"]), seed=99)
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(DatasetError, match="differ"):
        package_dataset(tmp_path / "scored.parquet", tmp_path / "packed.parquet",
                        checkpoint=tmp_path / "other.pt", log=lambda *a: None)


def test_constituents_are_kept_for_a_subset(tmp_path, reference_parquet, model_file):
    from sophon.scorers import TorchScorer
    from sophon.scoring import score_files

    checkpoint, model = model_file
    checkpoint = _beside(tmp_path, checkpoint)
    scored = tmp_path / "scored"
    score_files([reference_parquet], scored, TorchScorer(model, device="cpu"), progress=False,
                log=lambda *a: None)
    packed = tmp_path / "packed" / "jets.parquet"
    report = package_dataset(scored, packed, checkpoint=checkpoint, constituents=reference_parquet,
                             constituent_jets=10, seed=4, sdmass_range=None, log=lambda *a: None)
    assert report.constituent_jets == 10
    table = pq.read_table(packed)
    source = pq.read_table(reference_parquet)
    lengths = pa.compute.list_value_length(table["part_px"]).to_numpy()
    kept = np.flatnonzero(lengths > 0)
    assert len(kept) == 10
    for row in kept:
        assert table["part_px"][row].as_py() == source["part_px"][row].as_py()
        assert table["part_isMuon"][row].as_py() == source["part_isMuon"][row].as_py()
    # the packed scores are the model's scores of those jets, to the latent rounding
    assert np.abs(JetDataset(packed).scores - JetDataset(scored).scores).max() < 0.02
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(source.take(np.arange(source.num_rows)[::-1].copy()), shuffled)
    with pytest.raises(DatasetError, match="row for row"):
        package_dataset(scored, tmp_path / "bad.parquet", checkpoint=checkpoint,
                        constituents=shuffled, log=lambda *a: None)
    # the default keeps the training phase space 20 < mSD < 500 GeV, constituents included
    selected = package_dataset(scored, tmp_path / "selected" / "jets.parquet",
                               checkpoint=checkpoint, constituents=reference_parquet,
                               constituent_jets=100, log=lambda *a: None)
    sdmass = source["jet_sdmass"].to_numpy()
    inside = (sdmass > 20) & (sdmass < 500)
    assert 0 < inside.sum() < len(sdmass)  # the reference jets include some outside
    assert selected.n_jets == selected.constituent_jets == inside.sum()
    table = pq.read_table(tmp_path / "selected" / "jets.parquet")
    np.testing.assert_array_equal(table["jet_sdmass"].to_numpy(), sdmass[inside])
    assert table["part_px"].to_pylist() == source["part_px"].filter(pa.array(inside)).to_pylist()


def test_thinning_keeps_protected_events_and_preserves_weight_on_average():
    from sophon.packaging import thin_events

    rng = np.random.default_rng(5)
    n_events = 40_000
    event_ids = np.repeat(np.arange(n_events) * 7 + 3, 2)  # two jets per event, sparse ids
    weights = np.repeat(rng.exponential(1.0, n_events), 2)
    protected = np.zeros(2 * n_events, dtype=bool)
    protected[rng.choice(2 * n_events, 3000, replace=False)] = True
    keep, factor = thin_events(event_ids, protected, 0.25, np.random.default_rng(1))
    by_event = keep.reshape(-1, 2)
    assert np.all(by_event[:, 0] == by_event[:, 1])  # one decision per event
    event_protected = protected.reshape(-1, 2).any(axis=1)
    assert by_event[event_protected, 0].all()
    np.testing.assert_array_equal(factor.reshape(-1, 2)[event_protected], 1.0)
    np.testing.assert_array_equal(factor.reshape(-1, 2)[~event_protected], 4.0)
    kept_fraction = by_event[~event_protected, 0].mean()
    assert abs(kept_fraction - 0.25) < 0.01
    # the weighted sum is unbiased: within a few standard deviations of the original
    thinned = (weights * factor)[keep].sum()
    spread = np.sqrt(((weights[~protected] * 4) ** 2).sum() * 0.25 * 0.75 / 4)
    assert abs(thinned - weights.sum()) < 4 * spread
    with pytest.raises(ValueError, match="keep probability"):
        thin_events(event_ids, protected, 0.0, rng)


def test_packed_thinning_scales_the_weights(tmp_path, model_file):
    checkpoint, model = model_file
    checkpoint = _beside(tmp_path, checkpoint)
    _scored(tmp_path / "scored.parquet", model, n=6000)
    original = JetDataset(tmp_path / "scored.parquet")
    qcd_probability = original.scores[:, [n.startswith("score_QCD") for n in SCORE_COLUMNS]].sum(1)
    threshold = float(np.median(qcd_probability))
    report = package_dataset(tmp_path / "scored.parquet", tmp_path / "thin" / "jets.parquet",
                             checkpoint=checkpoint, thin_keep=0.5, thin_qcd=threshold,
                             log=lambda *a: None)
    packed = JetDataset(tmp_path / "thin" / "jets.parquet")
    assert report.n_jets == len(packed) < len(original)
    event, weight = original.column("event_id"), original.weights
    protected = qcd_probability < threshold - 0.01  # clear of the latent rounding
    thinned = qcd_probability > threshold + 0.01
    # every protected jet is there with its weight; the others carry twice theirs
    lookup = dict(zip(packed.column("event_id").tolist(), packed.weights.tolist()))
    assert all(lookup.get(e) == w for e, w in zip(event[protected], weight[protected]))
    doubled = [lookup[e] / w for e, w in zip(event[thinned], weight[thinned]) if e in lookup]
    assert 0.4 < len(doubled) / thinned.sum() < 0.6
    np.testing.assert_allclose(doubled, 2.0)


def test_discriminant_keyed_thinning_is_unbiased_and_leaves_tight_cuts_untouched():
    from sophon.discriminant import PRESETS
    from sophon.packaging import protected_by_discriminants, thin_events
    from sophon.spectrum import EfficiencyScan, MassBinning
    from sophon.synthetic import make_synthetic

    sample = make_synthetic(60000, seed=5, with_latents=False)
    columns, scores = sample.columns, sample.scores
    weights = columns["weight"]
    event_ids = columns["event_id"]
    protected = protected_by_discriminants(scores, weights, 1e-2)
    # the protected jets are exactly those passing a 1 % cut of one of the discriminants
    values = PRESETS["A1: X->cs"].log_odds(scores)
    assert protected[np.argsort(-values)[:10]].all() and 0 < protected.mean() < 0.2
    binning = MassBinning(bins=25, low=0, high=250)
    mass_index = binning.index(columns["jet_sdmass"])
    codes = np.unique(columns["process"], return_inverse=True)[1]
    names = [str(n) for n in np.unique(columns["process"])]
    full = EfficiencyScan.build(values, mass_index, weights, codes, names,
                                efficiencies=[1.0, 0.1, 1e-2, 1e-3], binning=binning)
    totals = []
    for seed in range(40):
        keep, factor = thin_events(event_ids, protected, 0.1, np.random.default_rng(seed))
        thinned = EfficiencyScan.from_thresholds(
            values[keep], mass_index[keep], (weights * factor)[keep], codes[keep], names,
            efficiencies=full.efficiencies, thresholds=full.thresholds, binning=binning)
        # at 1 % and tighter every passing jet is protected: the same jets, the same weights
        for level in (2, 3):
            np.testing.assert_allclose(thinned.sum_of_weights[level], full.sum_of_weights[level])
        totals.append(thinned.spectrum(0))
        if seed == 0:  # one thinning: the loose spectrum agrees within its own MC errors
            variance = thinned.spectrum_variance(0) + full.spectrum_variance(0)
            filled = variance > 0
            pulls = (thinned.spectrum(0) - full.spectrum(0))[filled] / np.sqrt(variance[filled])
            assert np.mean(pulls ** 2) < 3
    # averaged over thinnings the loose spectrum converges to the unthinned one (unbiased)
    mean = np.mean(totals, axis=0)
    spread = np.std(totals, axis=0) / np.sqrt(len(totals))
    filled = spread > 0
    pulls = (mean - full.spectrum(0))[filled] / spread[filled]
    assert np.abs(pulls).max() < 5 and abs(np.mean(pulls)) < 1


def test_cut_side_changes_counts_the_jets_that_cross_the_cut():
    from sophon.discriminant import PRESETS
    from sophon.packaging import cut_side_changes
    from sophon.spectrum import thresholds_for_efficiencies

    rng = np.random.default_rng(5)
    scores = rng.dirichlet(np.ones(188), size=20000)
    weights = np.ones(len(scores))
    assert cut_side_changes(scores, scores, weights) == {
        name: {1e-3: 0, 1e-4: 0} for name in ("A1: X->cs", "A2: X->bb", "A3: X->b q q")}
    # swap the scores of the last jet that passes A1's cut at 1e-3 and the first that fails:
    # the cut (its own per set of scores) stays, those two jets change side, none at 1e-4
    values = PRESETS["A1: X->cs"].log_odds(scores)
    passing = int((values >= thresholds_for_efficiencies(values, weights, [1e-3])[0]).sum())
    order = np.argsort(values)[::-1]
    last_in, first_out = order[passing - 1], order[passing]
    changed = scores.copy()
    changed[[last_in, first_out]] = scores[[first_out, last_in]]
    counts = cut_side_changes(scores, changed, weights)
    assert counts["A1: X->cs"] == {1e-3: 2, 1e-4: 0}


def test_rehead_points_the_scores_at_a_new_head_over_the_same_backbone(tmp_path, model_file):
    from sophon.packaging import rehead_dataset

    checkpoint, model = model_file
    checkpoint = _beside(tmp_path, checkpoint)
    _scored(tmp_path / "scored.parquet", model)
    packed = tmp_path / "default" / "jets.parquet"
    package_dataset(tmp_path / "scored.parquet", packed, checkpoint=checkpoint, latent_codes=True,
                    log=lambda *a: None)
    before = JetDataset(packed)
    # a new head over the same backbone, as sophon train-head writes it
    reheaded = randomize_weights_(SophonModel(TRAINING_CONFIGS["small"]), seed=3).eval()
    randomize_weights_(reheaded.mod.fc, seed=8)
    new_head = tmp_path / "models" / "new.pt"
    save_checkpoint(reheaded, new_head)
    changes = rehead_dataset(packed, new_head, log=lambda *a: None)
    after = JetDataset(packed)
    assert after.score_head == new_head.resolve()
    assert after.metadata.model_id.startswith("new.pt@sha256:")
    np.testing.assert_array_equal(after.latents, before.latents)  # the jets are untouched
    np.testing.assert_array_equal(after.weights, before.weights)
    np.testing.assert_allclose(after.scores, head_probabilities(reheaded, before.latents),
                               rtol=0, atol=1e-6)
    assert np.abs(after.scores - before.scores).max() > 0.01  # a different head indeed
    assert sum(n for counts in changes.values() for n in counts.values()) > 0
    # another backbone is refused, and the file is left as it was
    other = tmp_path / "models" / "other.pt"
    save_checkpoint(randomize_weights_(SophonModel(TRAINING_CONFIGS["small"]), seed=4), other)
    with pytest.raises(DatasetError, match="backbone"):
        rehead_dataset(packed, other, log=lambda *a: None)
    assert JetDataset(packed).score_head == new_head.resolve()
    corrupt = tmp_path / "models" / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DatasetError, match="corrupt.pt: not a loadable Sophon checkpoint"):
        rehead_dataset(packed, corrupt, log=lambda *a: None)
