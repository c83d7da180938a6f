"""Transfer learning on frozen latents (`sophon transfer`): the preloaded head, the training
weights, the held-out comparison with the node discriminants, the new score column."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import shifted_latents
import torch

from sophon.cli import main
from sophon.model import SophonModel, head_probabilities, sophon_config
from sophon.packaging import package_dataset
from sophon.store import DatasetError, DatasetMetadata, JetDataset, write_dataset
from sophon.training import PT_EDGES, SDMASS_EDGES
from sophon.transfer import (JetSet, TransferOptions, fit_transfer, node_discriminants,
                             preloaded_head, training_weights, write_score_column)

SHIFT = 1.5  # the signal's latent mean moves this far along one unit direction
QUICK = TransferOptions(epochs=20)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _separable(path, *, n_signal=2000, n_background=2000, seed=0, model_id="test",
               latents_stored=True):
    """Unit-Gaussian latents, the signal's shifted by SHIFT along one direction; scores drawn
    independently of the latents, alike for both sets, so no node discriminant sees the shift.
    Processes 'signal' and 'QCD'; true classes X_bb / X_cc for the signal, QCD_light else."""
    rng = np.random.default_rng(seed)
    n = n_signal + n_background
    latents = shifted_latents(rng, np.arange(n) < n_signal, SHIFT)
    labels = np.concatenate([rng.choice([0, 1], n_signal), np.full(n_background, 187)])
    jets = {"jet_pt": rng.uniform(200, 1000, n).astype(np.float32),
            "jet_sdmass": rng.uniform(21, 300, n).astype(np.float32),
            "jet_label": labels.astype(np.int32),
            "process": np.array(["signal"] * n_signal + ["QCD"] * n_background, dtype=object),
            "weight": rng.uniform(0.5, 1.5, n)}
    write_dataset(path, jets, scores=rng.dirichlet(np.ones(188), size=n),
                  latents=latents if latents_stored else None,
                  metadata=DatasetMetadata(luminosity_fb=1.0, model_id=model_id))
    return path


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    return _separable(tmp_path_factory.mktemp("separable") / "jets.parquet")


@pytest.fixture(scope="module")
def fitted(separable, model_file):
    return fit_transfer(separable, "process:signal", "process:QCD", model=model_file[0],
                        options=QUICK)


def test_the_head_beats_the_node_discriminant_along_a_direction_the_nodes_do_not_see(fitted):
    # the best possible cut, on the projection onto the shift: at 50 % signal efficiency it sits
    # at SHIFT, where a unit Gaussian keeps 6.7 % of the background (rejection 15); at 30 % at
    # SHIFT + 0.52 (rejection 46). The node scores carry no information: rejection 1/eff. A head
    # fitted on 800 jets a set in 128 dimensions gets half-way to the best cut.
    unit = NormalDist()
    optimal_50 = 1 / (1 - unit.cdf(SHIFT))
    optimal_30 = 1 / (1 - unit.cdf(SHIFT + unit.inv_cdf(0.7)))
    head_50, head_30 = fitted.rejection(0.5), fitted.rejection(0.3)
    node_50, node_30 = fitted.rejection(0.5, nodes=True), fitted.rejection(0.3, nodes=True)
    assert 1.6 < node_50.rejection < 2.6 and 2.4 < node_30.rejection < 4.6
    assert 0.45 * optimal_50 < head_50.rejection < optimal_50 + 3 * head_50.error
    assert 0.3 * optimal_30 < head_30.rejection < optimal_30 + 3 * head_30.error
    assert head_50.rejection > 3 * node_50.rejection
    assert 0.5 <= head_50.signal_efficiency < 0.51
    summary = fitted.summary()
    assert summary["head_beats_nodes_at_50%"] is True
    assert summary["held_out"]["head"]["50%"]["rejection"] == head_50.rejection
    assert summary["jets"]["signal"] == {"in_set": 2000, "train": 800, "validation": 200,
                                         "held_out": 1000}
    json.dumps(summary)  # JSON-ready


def test_the_first_layer_is_preloaded_from_the_model_head(model_file):
    _, model = model_file
    first = model.mod.fc[0][0]
    head = preloaded_head(model, seed=5)
    assert head.first.out_features == 256  # the small configuration's 128 -> 256
    assert torch.equal(head.first.weight, first.weight) and torch.equal(head.first.bias,
                                                                        first.bias)
    assert head.second.weight.shape == (2, 256) and not head.second.bias.any()
    assert torch.equal(head.second.weight, preloaded_head(model, seed=5).second.weight)
    assert not torch.equal(head.second.weight, preloaded_head(model, seed=6).second.weight)
    # a head without a hidden layer: the first layer is its 128 -> 188 logits
    bare = SophonModel(sophon_config(embed_dims=(64, 128), pair_embed_dims=(8,), num_layers=1,
                                     num_cls_layers=1, fc_params=()))
    assert torch.equal(preloaded_head(bare).first.weight, bare.mod.fc[0].weight)


def test_training_reweighting_flattens_each_set_and_balances_them():
    rng = np.random.default_rng(4)

    def falling(n, steepness):
        """n jets drawn cell by cell: the pT cells' shares fall by ``steepness``, the mSD cells'
        by 3, uniform within a cell (GeV)."""
        pt_share = np.geomspace(1, 1 / steepness, len(PT_EDGES) - 1)
        mass_share = np.geomspace(1, 1 / 3, len(SDMASS_EDGES) - 1)
        pt_bin = rng.choice(len(pt_share), n, p=pt_share / pt_share.sum())
        mass_bin = rng.choice(len(mass_share), n, p=mass_share / mass_share.sum())
        return (rng.uniform(PT_EDGES[pt_bin], PT_EDGES[pt_bin + 1]),
                rng.uniform(SDMASS_EDGES[mass_bin], SDMASS_EDGES[mass_bin + 1]))

    sets = [falling(400_000, 30.0), falling(150_000, 10.0)]
    pt = np.concatenate([s[0] for s in sets])
    mass = np.concatenate([s[1] for s in sets])
    is_signal = np.arange(len(pt)) < len(sets[0][0])

    def histogram(weights, members):
        return np.histogram2d(pt[members], mass[members], bins=(PT_EDGES, SDMASS_EDGES),
                              weights=weights[members])[0]

    # reference at the sparsest populated cell: every cell of a set holds the same weight
    flat = training_weights(pt, mass, is_signal, percentile=0)
    for members in (is_signal, ~is_signal):
        unweighted = histogram(np.ones(len(pt)), members)
        assert unweighted.max() / unweighted[unweighted > 0].min() > 20  # far from flat before
        content = histogram(flat, members)[unweighted > 0]
        assert content.max() / content.min() - 1 < 1e-9
    # the default reference (the 70th percentile of the cells) caps every cell at one level
    capped = training_weights(pt, mass, is_signal)
    for members in (is_signal, ~is_signal):
        unweighted = histogram(np.ones(len(pt)), members)
        content = histogram(capped, members)
        populous = unweighted >= np.percentile(unweighted[unweighted > 0], 70)
        assert content[populous].max() / content[populous].min() - 1 < 1e-9
        assert content.max() <= content[populous].min() * (1 + 1e-9)
    for weights in (flat, capped, training_weights(pt, mass, is_signal, flatten=False)):
        assert math.isclose(weights[is_signal].sum(), weights[~is_signal].sum(), rel_tol=1e-9)
        assert math.isclose(weights.mean(), 1.0, rel_tol=1e-9)


def test_class_queries_rows_and_labelled_files_name_the_jets(separable, model_file, tmp_path):
    dataset = JetDataset(separable)
    options = TransferOptions(epochs=2)
    by_classes = fit_transfer(dataset, "classes:X_bb", "classes:QCD", model=model_file[0],
                              options=options)
    assert by_classes.jets["signal"]["in_set"] == int((dataset.column("jet_label") == 0).sum())
    assert by_classes.jets["background"]["in_set"] == 2000
    rows = np.flatnonzero(dataset.column("process") == "signal")[::2]
    selection = tmp_path / "selection.csv"
    selection.write_text("jet,process\n" + "".join(f"{r},signal\n" for r in rows))
    by_rows = fit_transfer(dataset, JetSet.parse(f"rows:{selection}"), "QCD",
                           model=model_file[0], options=options)
    assert by_rows.jets["signal"]["in_set"] == len(rows) == 1000
    # a labelled file: its jets are the set, scored by the same model
    other = _separable(tmp_path / "other.parquet", n_signal=300, n_background=0, seed=1)
    by_file = fit_transfer(dataset, f"file:{other}", "QCD", model=model_file[0], options=options)
    assert by_file.jets["signal"]["in_set"] == 300
    assert by_file.values.shape == (dataset.n_jets,)


def test_fits_are_reproducible_and_the_values_are_the_heads(separable, model_file, fitted):
    again = fit_transfer(separable, "signal", model=model_file[0], options=QUICK)
    np.testing.assert_array_equal(again.values, fitted.values)
    assert again.history == fitted.history and again.best_epoch == fitted.best_epoch
    latents = JetDataset(separable).latents
    np.testing.assert_array_equal(fitted.values, fitted.head.log_odds(latents))
    # trained on from the preloaded layer
    assert not torch.equal(fitted.head.first.weight, model_file[1].mod.fc[0][0].weight)
    other_seed = fit_transfer(separable, "signal", model=model_file[0],
                              options=TransferOptions(epochs=20, seed=1))
    assert not np.array_equal(other_seed.values, fitted.values)


def test_a_compact_dataset_preloads_its_own_head_and_gets_the_score_column(tmp_path, model_file):
    checkpoint, model = model_file
    head_file = tmp_path / "data" / "models" / "small.pt"
    head_file.parent.mkdir(parents=True)
    head_file.write_bytes(checkpoint.read_bytes())
    rng = np.random.default_rng(2)
    n = 1200
    latents = rng.normal(size=(n, 128)).astype(np.float32)
    jets = {"jet_pt": rng.uniform(200, 1000, n).astype(np.float32),
            "jet_sdmass": rng.uniform(21, 300, n).astype(np.float32),
            "process": np.where(np.arange(n) < 300, "Higgs", "QCD").astype(object),
            "weight": rng.uniform(0.1, 1, n)}
    write_dataset(tmp_path / "scored.parquet", jets, scores=head_probabilities(model, latents),
                  latents=latents, metadata=DatasetMetadata(luminosity_fb=1.0, model_id="small"))
    packed = tmp_path / "data" / "default" / "jets.parquet"
    package_dataset(tmp_path / "scored.parquet", packed, checkpoint=head_file, log=lambda *a: None)
    dataset = JetDataset(packed)
    result = fit_transfer(dataset, "Higgs", options=TransferOptions(epochs=2))
    assert result.model == head_file.resolve()

    copy = tmp_path / "data" / "transfer" / "jets.parquet"
    written = write_score_column(dataset, result.values, copy, name="higgs",
                                 description="Higgs against QCD")
    assert written == [copy]
    reread = JetDataset(copy)
    np.testing.assert_array_equal(reread.column("transfer_higgs"), result.values)
    np.testing.assert_array_equal(reread.scores, dataset.scores)  # the head found from there
    assert reread.metadata.extra["transfer"] == {"transfer_higgs": "Higgs against QCD"}
    assert "transfer_higgs" not in pq.read_schema(packed).names  # the source is untouched
    # written again: the column is replaced, not repeated
    write_score_column(reread, -result.values, copy, name="higgs")
    np.testing.assert_array_equal(JetDataset(copy).column("transfer_higgs"), -result.values)
    with pytest.raises(ValueError, match="could not name"):
        write_score_column(dataset, result.values, tmp_path / "a" / "b" / "jets.parquet",
                           name="higgs")
    with pytest.raises(ValueError, match="letters, digits or '_'"):
        write_score_column(dataset, result.values, copy, name="../x")
    with pytest.raises(ValueError, match=r"\(5,\) values for the 1200 jets"):
        write_score_column(dataset, np.zeros(5), copy, name="higgs")


def test_bad_inputs_raise_errors_that_name_the_value(separable, model_file, tmp_path):
    model = model_file[0]
    options = TransferOptions(epochs=1)
    with pytest.raises(ValueError, match=r"unknown process 'Zprime'.*\['QCD', 'signal'\]"):
        fit_transfer(separable, "Zprime", model=model, options=options)
    with pytest.raises(ValueError, match=r"signal set 'classes:X_ee' holds no jets"):
        fit_transfer(separable, "classes:X_ee", model=model, options=options)
    with pytest.raises(ValueError, match=r"'process:signal' and the background set "
                                         r"'classes:X_bb \| X_cc' share \d+ jets"):
        fit_transfer(separable, "signal", "classes:X_bb | X_cc", model=model, options=options)
    with pytest.raises(ValueError, match="row 4000 of the selection is not a jet"):
        fit_transfer(separable, JetSet("rows", [1, 4000]), model=model, options=options)
    with pytest.raises(ValueError, match="holds 10 jets; at least 20"):
        fit_transfer(separable, JetSet("rows", range(10)), model=model, options=options)
    with pytest.raises(ValueError, match="unknown jet-set kind 'latent'"):
        JetSet("latent", "x")
    with pytest.raises(ValueError, match=r"transfer option epochs must be .* got 0"):
        TransferOptions(epochs=0)
    without = _separable(tmp_path / "bare.parquet", latents_stored=False)
    with pytest.raises(DatasetError, match=r"bare\.parquet: .* no 'latent' column"):
        fit_transfer(without, "signal", model=model, options=options)
    other_model = _separable(tmp_path / "other.parquet", n_background=0, model_id="another")
    with pytest.raises(ValueError, match=r"scored by 'another', the dataset by 'test'"):
        fit_transfer(separable, f"file:{other_model}", model=model, options=options)
    with pytest.raises(ValueError, match=r"names no model head .*--model"):
        fit_transfer(separable, "signal", options=options)
    with pytest.raises(ValueError, match=r"nothing\.pt: no such model checkpoint"):
        fit_transfer(separable, "signal", model=tmp_path / "nothing.pt", options=options)


def test_node_candidates_are_every_class_and_group_against_the_denominator():
    candidates = node_discriminants()
    names = [c.numerator[0].classes for c in candidates]
    assert names[:3] == ["X_bb", "X_cc", "X_ss"] and "QCD_light" in names
    assert "two_prong" in names and "QCD" not in names  # QCD against QCD leaves g_B empty
    assert len(set(names)) == len(names) and all(c.denominator == "QCD" for c in candidates)


def test_the_command_prints_the_summary_and_writes_the_column(separable, model_file, tmp_path,
                                                            capsys):
    summary_file = tmp_path / "summary.json"
    copy = tmp_path / "copy.parquet"
    assert main(["transfer", str(separable), "--signal", "signal", "--model",
                 str(model_file[0]), "--epochs", "3", "-o", str(summary_file),
                 "--column", "signal", "--write", str(copy)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(summary_file.read_text())
    assert printed["signal"] == "process:signal" and printed["background"] == "process:QCD"
    assert set(printed["held_out"]["best_node_discriminant"]) >= {"name", "30%", "50%", "auc"}
    assert printed["written"] == {"column": "transfer_signal", "files": [str(copy)]}
    assert JetDataset(copy).column("transfer_signal").shape == (4000,)
    assert main(["transfer", str(separable), "--signal", "Zprime", "--model",
                 str(model_file[0])]) == 2
    assert "unknown process 'Zprime'" in capsys.readouterr().err


def test_an_ensemble_averages_its_heads_and_its_first_head_is_the_single_fit(separable,
                                                                            model_file):
    options = TransferOptions(epochs=4)
    single = fit_transfer(separable, "process:signal", "process:QCD", model=model_file[0],
                          options=options)
    calls = []
    ensemble = fit_transfer(separable, "process:signal", "process:QCD", model=model_file[0],
                            options=TransferOptions(epochs=4, ensemble=3),
                            progress=lambda done, total: calls.append((done, total)))
    members = ensemble.head.members
    assert len(members) == 3 and calls == [(done, 12) for done in range(1, 13)]
    latents = JetDataset(separable).latents
    each = [member.log_odds(latents) for member in members]
    np.testing.assert_array_equal(each[0], single.values)  # the same training as one head
    assert not np.array_equal(each[0], each[1])  # the others start and shuffle differently
    np.testing.assert_allclose(ensemble.values, np.mean(each, axis=0), rtol=1e-6, atol=1e-6)
    summary = ensemble.summary()
    assert summary["head"]["ensemble"] == 3 and summary["head"]["hidden"] == 256
    with pytest.raises(ValueError, match="ensemble must be an integer from 1 to 20"):
        TransferOptions(ensemble=0)
