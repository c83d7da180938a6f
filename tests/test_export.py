"""ONNX export with the published names, checked against the torch model through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch

from sophon.export import export_onnx, onnx_bytes
from sophon.scorers import INPUT_NAMES, N_OUTPUTS, OUTPUT_NAME, ModelOutputError, OnnxScorer
from sophon.features import build_inputs, ragged_inputs
from sophon.model import SophonModel, randomize_weights_, sophon_config

ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def table(reference_table) -> pa.Table:
    return reference_table


@pytest.fixture(scope="module")
def model() -> SophonModel:
    return randomize_weights_(SophonModel(), seed=21).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "sophon.onnx")


@pytest.fixture(scope="module")
def torch_outputs(model, table):
    inputs = build_inputs(table)
    with torch.no_grad():
        probabilities, latent = model(*(torch.from_numpy(a) for a in
                                        (inputs.pf_features, inputs.pf_vectors, inputs.pf_mask)))
    return inputs, probabilities.numpy(), latent.numpy()


def test_published_names_and_dynamic_axes(onnx_file):
    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    shapes = {i.name: dims(i) for i in graph.graph.input}
    assert shapes["pf_features"][1] == 17 and shapes["pf_vectors"][1] == 4 and shapes["pf_mask"][1] == 1
    for name in INPUT_NAMES:
        assert isinstance(shapes[name][0], str) and isinstance(shapes[name][2], str)  # N, particles
    output = dims(graph.graph.output[0])
    assert isinstance(output[0], str) and output[1] == N_OUTPUTS


def test_onnx_reproduces_torch_on_128_slots(onnx_file, torch_outputs):
    inputs, probabilities, latent = torch_outputs
    scorer = OnnxScorer(onnx_file, batch_size=1000)
    raw = scorer.run(inputs)  # one call, all 100 jets at 128 slots, as the published file is used
    assert raw.shape == (100, N_OUTPUTS)
    assert np.abs(raw[:, :188] - probabilities).max() <= ONNX_TOLERANCE
    assert np.abs(raw[:, 188:] - latent).max() <= ONNX_TOLERANCE
    np.testing.assert_allclose(raw[:, :188].sum(axis=1), 1.0, atol=1e-5)


def test_bucketed_onnx_scoring_reproduces_torch(onnx_file, torch_outputs, table):
    _, probabilities, latent = torch_outputs
    scorer = OnnxScorer(onnx_file, batch_size=16)  # several trimmed buckets, results unsorted back
    for p, z in (scorer.score_ragged(ragged_inputs(table)), scorer.score(build_inputs(table))):
        assert np.abs(p - probabilities).max() <= ONNX_TOLERANCE
        assert np.abs(z - latent).max() <= ONNX_TOLERANCE


def test_fixed_particle_axis_export(model, tmp_path, torch_outputs, table):
    path = export_onnx(model, tmp_path / "fixed.onnx", dynamic_particles=False)
    scorer = OnnxScorer(path, batch_size=50)
    assert scorer.fixed_length == 128
    _, probabilities, _ = torch_outputs
    p, _ = scorer.score_ragged(ragged_inputs(table.slice(0, 20)))
    assert np.abs(p - probabilities[:20]).max() <= ONNX_TOLERANCE


def _tiny_onnx(path: Path, width: int, input_names=INPUT_NAMES) -> Path:
    """A stand-in model: reduces pf_features to (N, width) with a MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, "P"])
              for name, channels in zip(input_names, (17, 4, 1), strict=True)]
    output = helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["N", width])
    weight = numpy_helper.from_array(np.ones((17, width), np.float32), "w")
    nodes = [helper.make_node("ReduceSum", [input_names[0], "axes"], ["summed"], keepdims=0),
             helper.make_node("MatMul", ["summed", "w"], ["softmax"])]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    graph = helper.make_graph(nodes, "tiny", inputs, [output], [weight, axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_wrong_output_width_is_refused(tmp_path):
    with pytest.raises(ModelOutputError, match="10 entries per jet.*316"):
        OnnxScorer(_tiny_onnx(tmp_path / "ten.onnx", 10))


def test_wrong_input_names_are_refused(tmp_path):
    path = _tiny_onnx(tmp_path / "names.onnx", N_OUTPUTS, ("x", "v", "mask"))
    with pytest.raises(ModelOutputError, match="lack.*pf_features"):
        OnnxScorer(path)


def test_only_the_188_class_128_latent_layout_exports(tmp_path):
    small = SophonModel(sophon_config(num_classes=10, num_layers=1))
    with pytest.raises(ModelOutputError, match="188 classes"):
        export_onnx(small, tmp_path / "small.onnx")
    assert not list(tmp_path.iterdir())


def test_exports_from_several_threads_at_once_all_succeed(table):
    """torch's exporter keeps its state in globals; the app's sessions and a Dask worker's tasks
    export checkpoints from threads, so exports take turns (before, the second one raised)."""
    from concurrent.futures import ThreadPoolExecutor

    small = randomize_weights_(SophonModel(sophon_config(num_layers=1, num_cls_layers=1)),
                               seed=5).eval()
    with ThreadPoolExecutor(3) as pool:
        graphs = list(pool.map(lambda _: onnx_bytes(small), range(3)))
    inputs = build_inputs(table.slice(0, 5))
    with torch.no_grad():
        expected, _ = small(*(torch.from_numpy(a) for a in
                              (inputs.pf_features, inputs.pf_vectors, inputs.pf_mask)))
    for graph in graphs:
        probabilities, _ = OnnxScorer(graph, name="small.onnx").score(inputs)
        assert np.abs(probabilities - expected.numpy()).max() <= ONNX_TOLERANCE
