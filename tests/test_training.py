import json

import numpy as np
import pytest

from sophon.labels import index_of
from sophon.model import load_checkpoint
from sophon.model import masked_batch_norm
from sophon.tagging import background_rejection, selection_score, tagging_figures
from sophon.training import (CLASS_WEIGHTS, TRAINING_CONFIGS, TrainingOptions, acceptance,
                             bucketed, epoch_jets, evaluate, evaluate_model, flattening_factors,
                             load_training_sample, preset_tail_terms, train)


def test_flattening_caps_sparse_cells_and_thins_dense_ones():
    # one group (QCD_light), three (pT, mSD) cells with 1000, 100 and 10 jets; the reference is
    # the 10th percentile of the cell counts, np.percentile([10, 100, 1000], 10) = 28
    labels = np.full(1110, index_of("QCD_light"))
    pt = np.full(1110, 300.0)
    sdmass = np.repeat([55.0, 155.0, 255.0], [1000, 100, 10])
    factors = flattening_factors(labels, pt, sdmass, percentile=10)
    assert np.allclose(factors[:1000], 28 / 1000)
    assert np.allclose(factors[1000:1100], 28 / 100)
    assert np.all(factors[1100:] == 1.0)
    # the 70th percentile (the default) is 100 + 0.4 * 900 = 460 (linear interpolation)
    factors = flattening_factors(labels, pt, sdmass)
    assert np.allclose(factors[:1000], 460 / 1000) and np.all(factors[1000:] == 1.0)


def test_acceptance_shares_follow_the_published_class_weights():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(20000, index_of("QCD_light")), np.full(20000, index_of("X_bb")),
                             np.full(20000, index_of("X_YY_bbbb"))])
    pt = rng.uniform(250, 2000, len(labels))
    sdmass = rng.uniform(30, 480, len(labels))
    p = acceptance(labels, pt, sdmass, 6000)
    assert p.max() <= 1 and p.sum() == pytest.approx(6000)
    # QCD 0.25, X_QQ 0.4, X_YY_QQQQ 0.32 of the published weights, renormalised over those present
    total = CLASS_WEIGHTS["QCD"] + CLASS_WEIGHTS["X_QQ"] + CLASS_WEIGHTS["X_YY_QQQQ"]
    for label, group in (("QCD_light", "QCD"), ("X_bb", "X_QQ"), ("X_YY_bbbb", "X_YY_QQQQ")):
        share = p[labels == index_of(label)].sum() / p.sum()
        assert share == pytest.approx(CLASS_WEIGHTS[group] / total, rel=1e-9)
    # a cap binds: no jet above it, and a group that cannot fill its share is drawn at the cap
    capped = acceptance(labels, pt, sdmass, 50000, cap=0.5)
    assert capped.max() == pytest.approx(0.5)
    assert capped.sum() < 50000


def test_epoch_draws_are_without_replacement_and_reproducible():
    p = np.random.default_rng(1).uniform(0, 1, 5000)
    first = epoch_jets(p, seed=3, epoch=0)
    assert len(np.unique(first)) == len(first)
    assert np.array_equal(first, epoch_jets(p, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_jets(p, seed=3, epoch=1))
    assert len(first) == pytest.approx(p.sum(), rel=0.05)
    # a jet's draw frequency over many epochs is its probability
    counts = np.zeros(len(p))
    for epoch in range(200):
        counts[epoch_jets(p, seed=3, epoch=epoch)] += 1
    assert np.corrcoef(counts / 200, p)[0, 1] > 0.99


def test_masked_batch_norm_uses_only_real_entries():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = torch.randn(6, 3, 10)
    valid = torch.rand(6, 10) > 0.4
    x_padded = x.masked_fill(~valid[:, None, :], -18.4)  # padded slots: log(eps) pair features
    masked = torch.nn.BatchNorm1d(3)
    reference = torch.nn.BatchNorm1d(3)
    out = masked_batch_norm(masked, x_padded, valid)
    real = x.permute(0, 2, 1)[valid]  # (n_real, 3): what a BatchNorm over real entries sees
    expected = reference(real)
    torch.testing.assert_close(out.permute(0, 2, 1)[valid], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked.running_mean, reference.running_mean)
    torch.testing.assert_close(masked.running_var, reference.running_var)
    masked.eval()  # evaluation: the plain module with running statistics
    torch.testing.assert_close(masked_batch_norm(masked, x_padded, valid), masked(x_padded))


def test_the_published_configuration_is_registered():
    from sophon.model import SophonModel, count_parameters
    assert count_parameters(SophonModel(TRAINING_CONFIGS["sophon"])) == 2_304_688
    for name in ("compact", "small"):
        assert TRAINING_CONFIGS[name].embed_dim == 128  # the latent stays 128-d
    assert count_parameters(SophonModel(TRAINING_CONFIGS["small"])) < 1_000_000


def test_bucketed_batches_partition_the_jets_by_multiplicity():
    rng = np.random.default_rng(3)
    multiplicity = rng.integers(1, 129, 1000)
    jets = rng.choice(1000, 700, replace=False)
    batches = bucketed(jets, multiplicity, 64, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == sorted(jets.tolist())
    assert [len(b) for b in batches].count(64) == 10
    # batches cover disjoint multiplicity ranges (up to ties), in a shuffled order
    ranges = sorted((multiplicity[b].min(), multiplicity[b].max()) for b in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))
    assert [multiplicity[b].min() for b in batches] != sorted(multiplicity[b].min() for b in batches)
    dropped = bucketed(jets, multiplicity, 64, np.random.default_rng(0), drop_last=True)
    assert [len(b) for b in dropped] == [64] * 10


def test_background_rejection_known_answers():
    signal = np.arange(100.0)  # 60 % efficiency keeps values >= 40
    background = np.concatenate([np.full(990, -1.0), np.full(10, 50.0)])
    assert background_rejection(signal, background, 0.6) == pytest.approx(100.0)
    assert background_rejection(signal, np.full(10, -5.0), 0.6) == float("inf")


def test_tagging_figures_of_a_known_tagger():
    # 100 X_bb jets and 1000 QCD_light jets; X_bb jets have g_Xbb rising with their index, and
    # 10 QCD jets look exactly like the most X_bb-like signal jet
    n_signal, n_qcd = 100, 1000
    probabilities = np.full((n_signal + n_qcd, 188), 1e-4)
    probabilities[:n_signal, index_of("X_bb")] = np.linspace(0.1, 0.9, n_signal)
    probabilities[n_signal:, index_of("QCD_light")] = 0.9
    probabilities[n_signal:n_signal + 10] = probabilities[n_signal - 1]
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = np.concatenate([np.full(n_signal, index_of("X_bb")), np.full(n_qcd, index_of("QCD_light"))])
    figures = tagging_figures(probabilities, labels, presets=("A2: X->bb",))["A2: X->bb"]
    assert figures["signal_jets"] == n_signal and figures["qcd_jets"] == n_qcd
    # at 30-60 % signal efficiency the 10 signal-like QCD jets pass and no other QCD jet does
    for key in ("30%", "50%", "60%"):
        assert figures[key]["qcd_passing"] == 10
        assert figures[key]["rejection"] == pytest.approx(100.0)
    assert selection_score({"A2": figures}) == pytest.approx(100.0)


def test_the_tail_loss_is_each_presets_binary_cross_entropy():
    """Known answers from a probability vector written by hand: g_cs = 0.2, g_bb = 0.1,
    g_QCD = 0.4 over the 27 QCD classes, the six A3 classes 0.02 each, the rest spread evenly."""
    import torch

    from sophon.discriminant import PRESETS
    from sophon.labels import FAMILIES, FAMILY_OF_CLASS

    qcd = FAMILY_OF_CLASS == FAMILIES.index("QCD")
    a3 = PRESETS["A3: X->b q q"].numerator_weights > 0
    p = np.zeros(188)
    p[qcd] = 0.4 / qcd.sum()
    p[a3] = 0.02
    p[index_of("X_cs")], p[index_of("X_bb")] = 0.2, 0.1
    rest = p == 0
    p[rest] = (1 - p.sum()) / rest.sum()
    g_a3 = 0.02 * a3.sum()
    d = {"A1": 0.2 / 0.6, "A2": 0.1 / 0.5, "A3": g_a3 / (g_a3 + 0.4)}
    logits = torch.tensor(np.log(np.tile(p, (3, 1))) + 7.0,  # unnormalised
                          requires_grad=True)
    labels = torch.tensor([index_of("X_cs"), index_of("QCD_light"), index_of("X_gg")])
    for focus in (0.0, 2.0):
        terms = preset_tail_terms(logits, labels, focus=focus).detach().numpy()
        assert terms[0] == pytest.approx(-np.log(d["A1"]))  # signal of A1 only
        assert terms[1] == pytest.approx(sum(-np.log(1 - v) * v ** focus for v in d.values()))
        assert terms[2] == 0.0  # X->gg is neither a preset's signal nor QCD
    # a preset that weighs its classes: D as the discriminant itself computes it from scores
    triboson = "W'->WWW triboson"
    d_weighted = PRESETS[triboson].evaluate(np.tile(p, (3, 1)).astype(np.float32))[1]
    assert preset_tail_terms(logits, labels, presets=(triboson,))[1].item() == pytest.approx(
        -np.log(1 - d_weighted), rel=1e-5)
    preset_tail_terms(logits, labels).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0].abs().sum() > 0
    assert logits.grad[2].abs().sum() == 0


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
    assert saved["best_epoch"] == summary["best_epoch"] and saved["finished"]
    # learning curves: training and validation loss per epoch, under the same draw weights
    assert all(np.isfinite([r["loss"], r["validation_loss"]]).all() for r in saved["history"])
    # scoring happens in multiplicity order; results come back in the order asked for
    order = np.random.default_rng(0).permutation(len(sample))
    np.testing.assert_allclose(evaluate(model, sample, order), probabilities[order], atol=1e-6)
    figures = evaluate_model(tmp_path / "model.pt", [reference_dir / "JetClassII_example.parquet"],
                             device="cpu")
    assert figures["jets"] == len(sample)
    predicted = probabilities.argmax(axis=1)
    assert figures["accuracy"]["all classes"] == pytest.approx(np.mean(predicted == sample.labels))


def test_a_stopped_training_resumes_where_it_stopped(reference_dir, tmp_path):
    torch = pytest.importorskip("torch")
    sample = load_training_sample([reference_dir / "JetClassII_example.parquet"])
    options = TrainingOptions(config="small", epochs=2, samples_per_epoch=64, batch_size=16,
                              learning_rate=2e-3, device="cpu", seed=4)
    whole = train(sample, tmp_path / "whole.pt", options, state_path=tmp_path / "whole.state",
                  log=lambda *_: None)
    # max_minutes=0 stops after the first batch; then three resumptions finish the run
    parts = tmp_path / "parts.state"
    first = train(sample, tmp_path / "parts.pt", options, state_path=parts, max_minutes=0,
                  log=lambda *_: None)
    assert not first["finished"]
    state = torch.load(parts, weights_only=False)
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 1)
    for _ in range(40):  # each resumed run trains at least one batch: a bounded number of runs
        summary = train(sample, tmp_path / "parts.pt", options, state_path=parts, resume=True,
                        max_minutes=0, log=lambda *_: None)
        if summary["finished"]:
            break
    else:
        pytest.fail("resumed runs made no progress")
    assert [r["loss"] for r in summary["history"]] == [r["loss"] for r in whole["history"]]
    final_whole = torch.load(tmp_path / "whole.state", weights_only=False)["model"]
    final_parts = torch.load(parts, weights_only=False)["model"]
    for key, value in final_whole.items():
        torch.testing.assert_close(final_parts[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exists already"):  # never overwritten by a new run
        train(sample, tmp_path / "parts.pt", options, state_path=parts)
    other = TrainingOptions(**{**options.__dict__, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="learning_rate"):
        train(sample, tmp_path / "parts.pt", other, state_path=parts, resume=True)


def test_training_can_start_from_a_checkpoint(reference_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from sophon.manifest import DEFAULT_MODELS

    shipped = DEFAULT_MODELS / "sophon-small-v2.pt"
    sample = load_training_sample([reference_dir / "JetClassII_example.parquet"])
    # a learning rate of zero and no BatchNorm warm-up: the kept checkpoint is the initial one,
    # to the bit (a fresh model, or BatchNorm statistics updated over 20 warm-up steps, is not)
    options = TrainingOptions(config="small", epochs=1, samples_per_epoch=64, batch_size=16,
                              learning_rate=0.0, batch_norm_warmup=0.0, device="cpu", seed=2,
                              init=str(shipped))
    train(sample, tmp_path / "same.pt", options, log=lambda *_: None)
    initial = torch.load(shipped, weights_only=True)
    kept = torch.load(tmp_path / "same.pt", weights_only=True)
    assert kept.keys() == initial.keys()
    for key, value in initial.items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=0, msg=key)
    # the presets' loss reaches the training loss: the same model on the same batches (zero
    # learning rate, same seed) has a larger loss by the binary terms, which are never negative
    plain = train(sample, tmp_path / "plain.pt", options, log=lambda *_: None)
    tail = train(sample, tmp_path / "tail.pt", TrainingOptions(**{**options.__dict__,
                                                                   "tail_weight": 1.0}),
                 state_path=tmp_path / "tail-state.pt", log=lambda *_: None)
    assert tail["history"][-1]["loss"] > plain["history"][-1]["loss"] + 0.01
    # the file and the configuration are checked, and named
    compact = TrainingOptions(**{**options.__dict__, "config": "compact"})
    with pytest.raises(ValueError, match="sophon-small-v2.pt.*'compact'"):
        train(sample, tmp_path / "other.pt", compact, log=lambda *_: None)
    missing = TrainingOptions(**{**options.__dict__, "init": str(tmp_path / "none.pt")})
    with pytest.raises(ValueError, match="none.pt: no such model checkpoint"):
        train(sample, tmp_path / "other.pt", missing, log=lambda *_: None)


def test_the_training_sample_cache_is_exact_and_follows_its_files(reference_dir, tmp_path):
    import shutil

    from sophon.training import cached_training_sample

    source = tmp_path / "jets.parquet"
    shutil.copy(reference_dir / "JetClassII_example.parquet", source)
    direct = load_training_sample([source])
    first = cached_training_sample([source], tmp_path / "cache")
    again = cached_training_sample([source], tmp_path / "cache")
    assert isinstance(again.inputs.features, np.memmap)  # read back, not rebuilt
    for sample in (first, again):
        np.testing.assert_array_equal(sample.inputs.features, direct.inputs.features)
        np.testing.assert_array_equal(sample.inputs.vectors, direct.inputs.vectors)
        np.testing.assert_array_equal(sample.labels, direct.labels)
        np.testing.assert_array_equal(sample.jet_sdmass, direct.jet_sdmass)
    # a changed file is read anew
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(source).slice(0, 50), source)
    changed = cached_training_sample([source], tmp_path / "cache")
    assert len(changed) == len(load_training_sample([source])) < len(direct)


def test_missing_training_column_is_named(tmp_path, reference_dir):
    import pyarrow.parquet as pq

    table = pq.read_table(reference_dir / "JetClassII_example.parquet").drop(["jet_label"])
    pq.write_table(table, tmp_path / "nolabel.parquet")
    with pytest.raises(ValueError, match="nolabel.parquet.*jet_label"):
        load_training_sample([tmp_path / "nolabel.parquet"])
