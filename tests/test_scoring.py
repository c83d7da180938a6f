"""sophon.scoring: bucketed scorers against the plain model, and ``sophon score`` end to end."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sophon.cli import main
from sophon.export import export_onnx
from sophon.features import build_inputs, ragged_inputs
from sophon.labels import LABELS
from sophon.model import SophonModel, randomize_weights_, save_checkpoint, sophon_config
from sophon.scorers import OnnxScorer, TorchScorer, load_scorer
from sophon.scoring import part_path, score_files, score_table
from sophon.store import JetDataset



@pytest.fixture(scope="module")
def table(reference_table) -> pa.Table:
    return reference_table


@pytest.fixture(scope="module")
def model() -> SophonModel:
    return randomize_weights_(SophonModel(), seed=31).eval()


@pytest.fixture(scope="module")
def expected(model, table):
    """The plain model on the contract's 128-slot inputs, one batch: the reference answer."""
    inputs = build_inputs(table)
    with torch.no_grad():
        probabilities, latent = model(*(torch.from_numpy(a) for a in
                                        (inputs.pf_features, inputs.pf_vectors, inputs.pf_mask)))
    return probabilities.numpy(), latent.numpy()


@pytest.fixture(scope="module")
def small_parquet(table, tmp_path_factory) -> Path:
    """The first 20 reference jets, for the command-line round trips (resume, errors)."""
    path = tmp_path_factory.mktemp("input") / "small.parquet"
    pq.write_table(table.slice(0, 20), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "sophon.pt")


def _ten_output_onnx(path: Path) -> Path:
    """An ONNX file with the published input names but 10 outputs per jet."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "P"])
              for name, channels in (("pf_features", 17), ("pf_vectors", 4), ("pf_mask", 1))]
    output = helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["N", 10])
    nodes = [helper.make_node("ReduceSum", ["pf_features", "axes"], ["summed"], keepdims=0),
             helper.make_node("MatMul", ["summed", "w"], ["softmax"])]
    initializers = [numpy_helper.from_array(np.ones((17, 10), np.float32), "w"),
                    numpy_helper.from_array(np.array([2], np.int64), "axes")]
    graph = helper.make_graph(nodes, "ten", inputs, [output], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def run(*argv: str) -> int:
    return main(["score", *argv, "-q"])


def test_bucketed_torch_scorer_reproduces_the_model(model, table, expected):
    scorer = TorchScorer(model, device="cpu", precision="fp32", batch_size=7)  # 15 buckets
    probabilities, latents = scorer.score_ragged(ragged_inputs(table))
    assert probabilities.dtype == np.float32 and probabilities.shape == (100, 188)
    assert np.abs(probabilities - expected[0]).max() < 1e-5
    assert np.abs(latents - expected[1]).max() < 1e-4
    # Padded inputs give the same answer as flat ones.
    again, _ = scorer.score(build_inputs(table.slice(0, 30)))
    assert np.abs(again - probabilities[:30]).max() < 1e-6


def test_a_checkpoint_on_the_cpu_is_scored_by_onnxruntime_two_batches_at_once(checkpoint, table,
                                                                             expected):
    """The default CPU path of ``sophon score`` and the app: the checkpoint's graph exported in
    memory, each core scoring its own batches; fp32 throughout, so the plain model's answer."""
    scorer = load_scorer(checkpoint, device="cpu", threads=2, batch_size=8)  # 13 buckets
    assert isinstance(scorer, OnnxScorer) and scorer.workers == 2
    assert scorer.model_id.startswith("sophon.pt@sha256:")
    probabilities, latents = scorer.score_ragged(ragged_inputs(table))
    assert np.abs(probabilities - expected[0]).max() < 1e-5
    assert np.abs(latents - expected[1]).max() < 1e-4
    # one call at a time on one thread: the same numbers, bucket for bucket
    alone, _ = load_scorer(checkpoint, device="cpu", threads=1, batch_size=8).score_ragged(
        ragged_inputs(table))
    np.testing.assert_array_equal(alone, probabilities)
    # torch remains the path for reduced precision (and CUDA, and torch.compile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 is emulated on some CPUs
        assert isinstance(load_scorer(checkpoint, device="cpu", precision="bf16"), TorchScorer)


def test_cpu_bf16_autocast_stays_close(model, table, expected):
    scorer = TorchScorer(model, device="cpu", precision="bf16", batch_size=50)
    probabilities, _ = scorer.score_ragged(ragged_inputs(table.slice(0, 50)))
    assert np.abs(probabilities - expected[0][:50]).max() < 3e-3


def test_score_table_keeps_the_jet_columns(model, table, expected):
    scorer = TorchScorer(model, device="cpu", batch_size=64)
    jets, probabilities, latents = score_table(table.slice(0, 30), scorer, source_name="reference")
    assert list(jets)[:3] == ["jet_pt", "jet_eta", "jet_phi"] and "jet_label" in jets
    assert jets["jet_label"].to_pylist() == table["jet_label"].to_pylist()[:30]
    assert np.abs(probabilities - expected[0][:30]).max() < 1e-5
    assert latents.shape == (30, 128)


def test_cli_turns_the_reference_parquet_into_a_dataset(checkpoint, table, expected, tmp_path,
                                                        reference_parquet):
    output = tmp_path / "dataset"
    assert run(str(reference_parquet), "--model", str(checkpoint), "-o", str(output),
               "--device", "cpu") == 0
    part = part_path(output, reference_parquet)
    assert part.is_file() and not [p for p in output.iterdir() if p.name.startswith(".")]
    dataset = JetDataset(output)  # validates: finite scores summing to 1, masses, ...
    assert len(dataset) == 100
    np.testing.assert_allclose(dataset.scores, expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(dataset.latents, expected[1], atol=1e-4, rtol=0)
    for name in ("jet_pt", "jet_sdmass", "jet_nparticles", "jet_tau2", "jet_label"):
        np.testing.assert_array_equal(dataset.column(name), table[name].to_numpy())
    assert dataset.columns[dataset.columns.index("score_X_bb"):][:188] == tuple(
        f"score_{label}" for label in LABELS)
    assert dataset.metadata.model_id.startswith("sophon.pt@sha256:")
    assert dataset.metadata.extra["source_rows"] == 100


def test_cli_resumes_and_refuses_to_mix_models(checkpoint, small_parquet, tmp_path):
    source, output = str(small_parquet), tmp_path / "dataset"
    assert run(source, "--model", str(checkpoint), "-o", str(output)) == 0
    part = part_path(output, small_parquet)
    os.utime(part, (1_000_000, 1_000_000))
    assert run(source, "--model", str(checkpoint), "-o", str(output)) == 0
    assert part.stat().st_mtime == 1_000_000  # complete part: skipped, not rewritten

    other = save_checkpoint(randomize_weights_(SophonModel(), seed=99), tmp_path / "other.pt")
    assert run(source, "--model", str(other), "-o", str(output)) == 2
    assert part.stat().st_mtime == 1_000_000
    assert run(source, "--model", str(other), "-o", str(output), "--overwrite") == 0
    assert "other.pt" in JetDataset(output).metadata.model_id

    # A truncated part (interrupted copy, disk full) is rescored.
    part.write_bytes(part.read_bytes()[:1000])
    assert run(source, "--model", str(other), "-o", str(output)) == 0
    assert len(JetDataset(output)) == 20


@pytest.mark.parametrize("prefetch", [False, True])
def test_streams_several_files_in_chunks(model, table, expected, tmp_path, prefetch):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(table.slice(0, 30), first, row_group_size=12)
    pq.write_table(table.slice(30, 15), second)
    scorer = TorchScorer(model, device="cpu", batch_size=16, model_id="test")
    parts = score_files([first, second], tmp_path / "out", scorer, chunk_jets=17, progress=False,
                        prefetch=prefetch, log=lambda message: None)
    assert [p.name for p in parts] == ["part-a.parquet", "part-b.parquet"]
    dataset = JetDataset(tmp_path / "out")
    np.testing.assert_allclose(dataset.scores, expected[0][:45], atol=1e-5, rtol=0)


def test_generated_sm_columns_are_carried(model, table, tmp_path):
    n = 20
    generated = table.slice(0, n).drop_columns(["jet_label"]).append_column(
        "event_id", pa.array(np.arange(n) // 2, pa.int64())).append_column(
        "jet_rank", pa.array(np.arange(n) % 2, pa.int8())).append_column(
        "process", pa.array(["ttbar"] * n)).append_column("weight", pa.array(np.full(n, 0.25)))
    source = tmp_path / "ttbar.parquet"
    pq.write_table(generated, source)
    scorer = TorchScorer(model, device="cpu", model_id="test")
    score_files([source], tmp_path / "out", scorer, progress=False, luminosity_fb=300.0,
                log=lambda message: None)
    dataset = JetDataset(tmp_path / "out")
    assert dataset.metadata.luminosity_fb == 300.0
    assert dataset.process_names == ("ttbar",)
    np.testing.assert_array_equal(dataset.column("event_id"), np.arange(n) // 2)
    np.testing.assert_allclose(dataset.weights, 0.25)
    assert not dataset.has("jet_label")


def test_clear_errors(checkpoint, table, small_parquet, tmp_path, capsys):
    missing = tmp_path / "missing.parquet"
    pq.write_table(table.drop_columns(["part_d0err"]), missing)
    assert run(str(missing), "--model", str(checkpoint), "-o", str(tmp_path / "x")) == 2
    assert "missing.parquet: missing column 'part_d0err'" in capsys.readouterr().err

    no_tau = tmp_path / "no_tau.parquet"
    pq.write_table(table.drop_columns(["jet_tau3"]), no_tau)
    assert run(str(no_tau), "--model", str(checkpoint), "-o", str(tmp_path / "x")) == 2
    assert "missing column 'jet_tau3'" in capsys.readouterr().err

    empty = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    assert run(str(empty), "--model", str(checkpoint), "-o", str(tmp_path / "x")) == 2
    assert "empty.parquet: holds no jets" in capsys.readouterr().err

    assert run(str(small_parquet), "--model", str(tmp_path / "nope.pt"), "-o",
               str(tmp_path / "x")) == 2
    assert "nope.pt: no such model file" in capsys.readouterr().err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert run(str(small_parquet), "--model", str(garbage), "-o", str(tmp_path / "x")) == 2
    assert "garbage.pt: not a loadable Sophon/ParticleTransformer checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_models_without_316_outputs_are_refused(small_parquet, tmp_path, capsys):
    small = save_checkpoint(SophonModel(sophon_config(num_classes=10, num_layers=1)),
                            tmp_path / "ten.pt")
    assert run(str(small_parquet), "--model", str(small), "-o", str(tmp_path / "x")) == 2
    assert "316" in capsys.readouterr().err

    onnx_file = _ten_output_onnx(tmp_path / "ten.onnx")
    assert run(str(small_parquet), "--model", str(onnx_file), "-o", str(tmp_path / "x")) == 2
    assert "ten.onnx: output 'softmax' has 10 entries per jet" in capsys.readouterr().err


def test_onnx_model_through_the_cli(model, expected, small_parquet, tmp_path):
    path = export_onnx(model, tmp_path / "sophon.onnx")
    scorer = load_scorer(path, device="cpu")
    assert scorer.model_id.startswith("sophon.onnx@sha256:")
    assert run(str(small_parquet), "--model", str(path), "-o", str(tmp_path / "out")) == 0
    scores = JetDataset(tmp_path / "out").scores
    np.testing.assert_allclose(scores, expected[0][:20], atol=1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_request_without_cuda_is_an_error(checkpoint, small_parquet, tmp_path, capsys):
    assert run(str(small_parquet), "--model", str(checkpoint), "-o", str(tmp_path / "x"),
               "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bucketed_bf16_and_fp16_within_1e_3(model, table, expected):
    for precision in ("fp32", "bf16", "fp16"):
        scorer = TorchScorer(model, device="cuda", precision=precision, batch_size=32)
        probabilities, _ = scorer.score_ragged(ragged_inputs(table))
        tolerance = 1e-4 if precision == "fp32" else 1e-3
        assert np.abs(probabilities - expected[0]).max() < tolerance, precision


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_scorer(model, table, expected):
    scorer = TorchScorer(model, device="cuda", precision="fp32", batch_size=32, compile=True)
    probabilities, _ = scorer.score_ragged(ragged_inputs(table))
    assert np.abs(probabilities - expected[0]).max() < 1e-4
