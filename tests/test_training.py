import json

import numpy as np
import pytest

from sophon.labels import index_of
from sophon.model import load_checkpoint
from sophon.training import (TRAINING_CONFIGS, TrainingOptions, background_rejection, bucketed,
                             evaluate, evaluate_model, flattening_weights, load_training_sample,
                             train)


def test_flattening_weights_equalise_groups_and_cells():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(900, index_of("QCD_light")), np.full(100, index_of("X_bb"))])
    pt = np.where(rng.random(1000) < 0.8, 300.0, 1500.0)
    sdmass = rng.choice([50.0, 150.0], 1000)
    weights = flattening_weights(labels, pt, sdmass)
    assert weights.sum() == pytest.approx(1.0)
    qcd = labels == index_of("QCD_light")
    # QCD_light and X_bb are different reweighting groups: each gets half the weight
    assert weights[qcd].sum() == pytest.approx(0.5)
    # within a group every occupied (pT, mSD) cell carries the same total weight
    for group in (qcd, ~qcd):
        totals = [weights[group & (pt == p) & (sdmass == m)].sum()
                  for p in (300.0, 1500.0) for m in (50.0, 150.0)]
        assert np.allclose(totals, totals[0])


def test_the_published_configuration_is_registered():
    from sophon.model import SophonModel, count_parameters
    assert count_parameters(SophonModel(TRAINING_CONFIGS["sophon"])) == 2_304_688
    for name in ("compact", "small"):
        assert TRAINING_CONFIGS[name].embed_dim == 128  # the latent stays 128-d
    assert count_parameters(SophonModel(TRAINING_CONFIGS["small"])) < 1_000_000


def test_bucketed_batches_partition_the_jets_by_multiplicity():
    rng = np.random.default_rng(3)
    multiplicity = rng.integers(1, 129, 1000)
    jets = rng.choice(1000, 700, replace=True)  # resampled with repeats, as in an epoch
    batches = bucketed(jets, multiplicity, 64, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == sorted(jets.tolist())
    assert [len(b) for b in batches].count(64) == 10
    # batches cover disjoint multiplicity ranges (up to ties), in a shuffled order
    ranges = sorted((multiplicity[b].min(), multiplicity[b].max()) for b in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))
    assert [multiplicity[b].min() for b in batches] != sorted(multiplicity[b].min() for b in batches)


def test_background_rejection_known_answers():
    signal = np.arange(100.0)  # 60 % efficiency keeps values >= 40
    background = np.concatenate([np.full(990, -1.0), np.full(10, 50.0)])
    assert background_rejection(signal, background, 0.6) == pytest.approx(100.0)
    assert background_rejection(signal, np.full(10, -5.0), 0.6) == float("inf")


def test_training_learns_and_keeps_a_loadable_best_checkpoint(reference_dir, tmp_path):
    sample = load_training_sample([reference_dir / "JetClassII_example.parquet"])
    assert 0 < len(sample) <= 100
    assert np.all((sample.jet_pt > 200) & (sample.jet_sdmass > 20) & (sample.jet_sdmass < 500))
    # a few passes over a handful of jets: enough to see the loss fall, cheap on a CPU
    options = TrainingOptions(config="compact", epochs=3, samples_per_epoch=96, batch_size=32,
                              learning_rate=2e-3, validation_fraction=0.05, device="cpu", seed=1)
    summary = train(sample, tmp_path / "model.pt", options, log=lambda *_: None)
    losses = [record["loss"] for record in summary["history"]]
    assert losses[-1] < losses[0]
    model = load_checkpoint(tmp_path / "model.pt")
    probabilities = evaluate(model, sample, np.arange(len(sample)))
    assert probabilities.shape == (len(sample), 188)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["best_validation_accuracy"] == summary["best_validation_accuracy"]
    # scoring happens in multiplicity order; results come back in the order asked for
    order = np.random.default_rng(0).permutation(len(sample))
    np.testing.assert_allclose(evaluate(model, sample, order), probabilities[order], atol=1e-6)
    figures = evaluate_model(tmp_path / "model.pt", [reference_dir / "JetClassII_example.parquet"],
                             device="cpu")
    assert figures["jets"] == len(sample)
    predicted = probabilities.argmax(axis=1)
    assert figures["accuracy"]["all classes"] == pytest.approx(np.mean(predicted == sample.labels))


def test_missing_training_column_is_named(tmp_path, reference_dir):
    import pyarrow.parquet as pq

    table = pq.read_table(reference_dir / "JetClassII_example.parquet").drop(["jet_label"])
    pq.write_table(table, tmp_path / "nolabel.parquet")
    with pytest.raises(ValueError, match="nolabel.parquet.*jet_label"):
        load_training_sample([tmp_path / "nolabel.parquet"])
