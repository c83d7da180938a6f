"""Retraining a checkpoint's head on its frozen latents (sophon.head_training)."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sophon.head_training import (HeadTrainingOptions, LatentSample,  # noqa: E402
                                  frozen_latents, train_head, with_new_head)
from sophon.labels import index_of  # noqa: E402
from sophon.model import (SophonModel, head_probabilities, load_checkpoint,  # noqa: E402
                          save_checkpoint)
from sophon.training import (TRAINING_CONFIGS, evaluate_with_latents,  # noqa: E402
                             load_training_sample)


def _blob_sample(n_per_class: int, seed: int) -> LatentSample:
    """Four classes, one per preset's signal and QCD, as Gaussian blobs in the 128-d latent
    space: a head can tell them apart, a random one cannot."""
    rng = np.random.default_rng(seed)
    classes = [index_of(name) for name in ("X_cs", "X_bb", "X_YY_qqb", "QCD_light")]
    centres = np.random.default_rng(99).normal(size=(len(classes), 128)).astype(np.float32)
    labels = np.repeat(classes, n_per_class)
    latents = (np.repeat(centres, n_per_class, axis=0) * 0.6
               + rng.normal(size=(len(labels), 128)).astype(np.float32))
    return LatentSample(latents=latents.astype(np.float32), labels=labels.astype(np.int64),
                        jet_pt=rng.uniform(250, 1500, len(labels)),
                        jet_sdmass=rng.uniform(30, 300, len(labels)))


def test_the_head_learns_separable_latents_and_keeps_its_best_epoch(tmp_path, torch_one_thread):
    torch.manual_seed(3)
    model = SophonModel(TRAINING_CONFIGS["small"])
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("mod.fc.")}
    sample = _blob_sample(600, seed=0)
    options = HeadTrainingOptions(epochs=8, samples_per_epoch=2000, batch_size=32,
                                  learning_rate=1e-2, validation_fraction=0.25, seed=1)
    summary = train_head(model, sample, tmp_path / "head.pt", options, log=lambda *_: None)
    history = summary["history"]
    start, best = history[0], history[summary["best_epoch"]]
    assert start["validation_accuracy"]["all classes"] < 0.5  # a random head: about 1 in 188
    assert best["validation_accuracy"]["all classes"] > 0.9
    assert best["validation_loss"] == min(r["validation_loss"] for r in history)
    assert best["validation_loss"] < 0.1 * start["validation_loss"]
    assert history[-1]["learning_rate"] == pytest.approx(0.01 * 1e-2, rel=0.3)  # decayed
    saved = load_checkpoint(tmp_path / "head.pt")
    for key, value in backbone.items():  # only the head changed
        torch.testing.assert_close(saved.state_dict()[key], value, rtol=0, atol=0)
    # the saved checkpoint is the best head: it tells the blobs apart on every jet
    probabilities = head_probabilities(saved, sample.latents)
    assert np.mean(probabilities.argmax(axis=1) == sample.labels) > 0.9
    written = json.loads((tmp_path / "head.json").read_text())
    assert written["best_epoch"] == summary["best_epoch"]


def test_a_head_that_cannot_improve_keeps_the_starting_one(tmp_path, torch_one_thread):
    torch.manual_seed(4)
    model = SophonModel(TRAINING_CONFIGS["small"])
    sample = _blob_sample(400, seed=2)
    train_head(model, sample, tmp_path / "good.pt", HeadTrainingOptions(
        epochs=3, samples_per_epoch=1600, batch_size=32, learning_rate=1e-2,
        validation_fraction=0.25), log=lambda *_: None)
    trained = load_checkpoint(tmp_path / "good.pt")
    # a learning rate of zero changes nothing: the starting head must come back unchanged
    summary = train_head(trained, sample, tmp_path / "same.pt", HeadTrainingOptions(
        epochs=2, samples_per_epoch=1600, batch_size=32, learning_rate=0.0,
        validation_fraction=0.25), log=lambda *_: None)
    assert summary["best_epoch"] == 0
    again = load_checkpoint(tmp_path / "same.pt")
    for key, value in load_checkpoint(tmp_path / "good.pt").state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_a_new_wider_head_learns_from_scratch_over_the_same_backbone(tmp_path, torch_one_thread):
    torch.manual_seed(7)
    model = SophonModel(TRAINING_CONFIGS["small"])
    wide = with_new_head(model, (96, 48), seed=2)
    assert wide.config.fc_params == ((96, 0.1), (48, 0.1))
    for key, value in model.state_dict().items():
        if not key.startswith("mod.fc."):  # the backbone is copied to the bit
            torch.testing.assert_close(wide.state_dict()[key], value, rtol=0, atol=0)
    sample = _blob_sample(500, seed=4)
    summary = train_head(wide, sample, tmp_path / "wide.pt", HeadTrainingOptions(
        epochs=6, samples_per_epoch=1600, batch_size=32, learning_rate=1e-2,
        validation_fraction=0.25), log=lambda *_: None)
    assert summary["history"][summary["best_epoch"]]["validation_accuracy"]["all classes"] > 0.9
    saved = load_checkpoint(tmp_path / "wide.pt")  # its shape read back from the weights
    assert saved.config.fc_params == ((96, 0.1), (48, 0.1))
    assert np.mean(head_probabilities(saved, sample.latents).argmax(axis=1) == sample.labels) > 0.9
    with pytest.raises(ValueError, match="head widths must be positive"):
        with_new_head(model, (0,))


def test_frozen_latents_are_the_models_and_their_cache_follows_the_file(reference_dir, tmp_path,
                                                                      torch_one_thread):
    from sophon.scorers import load_scorer

    source = tmp_path / "jets.parquet"
    shutil.copy(reference_dir / "JetClassII_example.parquet", source)
    torch.manual_seed(5)
    model = SophonModel(TRAINING_CONFIGS["small"]).eval()
    save_checkpoint(model, tmp_path / "model.pt")
    scorer = load_scorer(tmp_path / "model.pt", device="cpu", precision="fp32")
    direct = load_training_sample([source], feature_dtype=np.float32)
    probabilities, latents = evaluate_with_latents(model, direct, np.arange(len(direct)))
    first = frozen_latents(scorer, [source], cache=tmp_path / "cache", log=lambda *_: None)
    np.testing.assert_allclose(first.latents, latents, atol=2e-5)  # the selected jets, in order
    np.testing.assert_array_equal(first.labels, direct.labels)
    # the latents are what the head reads: its softmax of them is the model's output
    np.testing.assert_allclose(head_probabilities(model, first.latents), probabilities, atol=1e-5)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = frozen_latents(scorer, [source], cache=tmp_path / "cache", log=pytest.fail)
    np.testing.assert_array_equal(again.latents, first.latents)  # read back, nothing recomputed
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(source).slice(0, 50), source)
    changed = frozen_latents(scorer, [source], cache=tmp_path / "cache", log=lambda *_: None)
    assert len(changed) == len(load_training_sample([source])) < len(direct)


def test_a_tail_weighted_head_is_chosen_by_the_objective_it_trains(tmp_path, torch_one_thread):
    torch.manual_seed(6)
    model = SophonModel(TRAINING_CONFIGS["small"])
    sample = _blob_sample(400, seed=3)
    options = HeadTrainingOptions(epochs=4, samples_per_epoch=1600, batch_size=32,
                                  learning_rate=1e-2, validation_fraction=0.25, tail_weight=2.0,
                                  tail_focus=1.0)
    summary = train_head(model, sample, tmp_path / "tail.pt", options, log=lambda *_: None)
    history = summary["history"]
    # the binary terms are cross-entropies, never negative: the objective is at least the loss
    assert all(r["validation_objective"] > r["validation_loss"] for r in history)
    best = history[summary["best_epoch"]]
    assert best["validation_objective"] == min(r["validation_objective"] for r in history)
    assert best["validation_objective"] < 0.2 * history[0]["validation_objective"]


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -1}, {"validation_fraction": 1.0},
                                 {"learning_rate": float("nan")}, {"max_draws_per_jet": 0},
                                 {"tail_weight": -1.0}, {"tail_focus": float("nan")}])
def test_options_out_of_range_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        HeadTrainingOptions(**bad)
