"""ONNX export of the Sophon model with the published names, and an onnxruntime scorer for any such file.

The file has inputs ``pf_features`` (N, 17, P), ``pf_vectors`` (N, 4, P), ``pf_mask`` (N, 1, P), float32,
and one output ``softmax`` (N, 316): the 188 class probabilities, then the 128 latent features (the
published Sophon ONNX layout). N is dynamic; P is dynamic too unless ``dynamic_particles=False``
(then it is fixed at 128, as some consumers expect).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sophon.atomic import atomic_output
from sophon.features import MAX_PARTICLES, JetInputs, RaggedInputs
from sophon.model import SophonModel

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "N_OUTPUTS",
    "ModelOutputError",
    "export_onnx",
    "OnnxScorer",
]

INPUT_NAMES: tuple[str, ...] = ("pf_features", "pf_vectors", "pf_mask")
OUTPUT_NAME = "softmax"
N_CLASSES_OUT = 188
LATENT_DIM_OUT = 128
N_OUTPUTS = N_CLASSES_OUT + LATENT_DIM_OUT  # 316 numbers per jet
OPSET = 17


class ModelOutputError(ValueError):
    """A model file whose inputs or outputs do not follow the published Sophon layout."""


class _ConcatenatedOutput(nn.Module):
    """The published single-output form: ``cat(probabilities, latent)`` (N, 188 + 128)."""

    def __init__(self, model: SophonModel):
        super().__init__()
        self.model = model

    def forward(self, pf_features: Tensor, pf_vectors: Tensor, pf_mask: Tensor) -> Tensor:
        probabilities, latent = self.model(pf_features, pf_vectors, pf_mask)
        return torch.cat((probabilities, latent.to(probabilities.dtype)), dim=1)


def export_onnx(model: SophonModel, path: str | os.PathLike, *, dynamic_particles: bool = True,
                example_particles: int = MAX_PARTICLES, opset: int = OPSET) -> Path:
    """Export ``model`` (fp32, eval mode) to ``path`` atomically with the published names.

    The batch axis is dynamic; with ``dynamic_particles`` so is the particle axis, which lets a
    consumer trim padding. Returns the path.
    """
    if model.config.num_classes != N_CLASSES_OUT or model.config.embed_dim != LATENT_DIM_OUT:
        raise ModelOutputError(f"the published layout needs {N_CLASSES_OUT} classes and a "
                               f"{LATENT_DIM_OUT}-d latent; this model has "
                               f"{model.config.num_classes} and {model.config.embed_dim}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _ConcatenatedOutput(model).eval().float().cpu()
    length = example_particles
    example = (torch.zeros(2, model.config.input_dim, length), torch.zeros(2, 4, length),
               torch.ones(2, 1, length))
    example[1][:, 3] = 1.0  # massless-looking placeholders keep the trace free of NaNs
    dynamic_axes = {name: ({0: "N", 2: "n_particles"} if dynamic_particles else {0: "N"})
                    for name in INPUT_NAMES}
    dynamic_axes[OUTPUT_NAME] = {0: "N"}
    with atomic_output(path) as temporary, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter needs no extra dependency (the dynamo one needs
        # onnxscript); its deprecation notice is not actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, temporary, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
        _declare_output_width(temporary)
    return path


def _declare_output_width(path: str) -> None:
    """Write the static 316 into the output's shape: the tracer leaves it symbolic (a concat of
    dynamic-shaped pieces), but consumers check it, as :class:`OnnxScorer` does."""
    import onnx

    graph = onnx.load(path)
    width = graph.graph.output[0].type.tensor_type.shape.dim[1]
    width.ClearField("dim_param")
    width.dim_value = N_OUTPUTS
    onnx.checker.check_model(graph)
    onnx.save(graph, path)


class OnnxScorer:
    """Scores jets with any ONNX file in the published layout, through onnxruntime.

    ``score(inputs)`` returns ``(probabilities (N, 188), latents (N, 128))`` float32. Batches of
    ``batch_size`` jets; when the file's particle axis is dynamic, jets are sorted by multiplicity and
    each batch is trimmed to its longest jet (masked padding contributes nothing).
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 256, threads: int | None = None,
                 providers: list[str] | None = None, model_id: str = ""):
        import onnxruntime as ort

        self.path = Path(path)
        self.model_id = model_id or self.path.name
        self.description = "onnxruntime"
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelOutputError(f"{self.path}: onnxruntime cannot load the model ({error})") from None
        names = [node.name for node in self.session.get_inputs()]
        missing = [name for name in INPUT_NAMES if name not in names]
        if missing:
            raise ModelOutputError(f"{self.path}: model inputs {names} lack {missing}; expected "
                                   f"{list(INPUT_NAMES)}")
        outputs = self.session.get_outputs()
        self.output_name = OUTPUT_NAME if any(o.name == OUTPUT_NAME for o in outputs) else outputs[0].name
        width = next(o for o in outputs if o.name == self.output_name).shape[-1]
        if isinstance(width, int) and width != N_OUTPUTS:
            raise ModelOutputError(f"{self.path}: output {self.output_name!r} has {width} entries per "
                                   f"jet; the Sophon layout has {N_OUTPUTS} (188 probabilities, then "
                                   "128 latents)")
        particle_axis = next(i for i in self.session.get_inputs() if i.name == "pf_features").shape[2]
        self.fixed_length = particle_axis if isinstance(particle_axis, int) else None
        self.batch_size = int(batch_size)

    def run(self, inputs: JetInputs) -> np.ndarray:
        """One onnxruntime call on already padded inputs -> (N, 316) float32."""
        feeds = {name: np.ascontiguousarray(array, dtype=np.float32)
                 for name, array in inputs.as_dict().items()}
        output = self.session.run([self.output_name], feeds)[0]
        if output.ndim != 2 or output.shape[1] != N_OUTPUTS:
            raise ModelOutputError(f"{self.path}: output {self.output_name!r} has shape "
                                   f"{tuple(output.shape)}; the Sophon layout has {N_OUTPUTS} entries "
                                   "per jet (188 probabilities, then 128 latents)")
        return output

    def score(self, inputs: JetInputs) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 188) and latents (N, 128) of padded ``inputs``."""
        if self.fixed_length and inputs.pf_features.shape[2] != self.fixed_length:
            raise ModelOutputError(f"{self.path}: the model needs {self.fixed_length} particle "
                                   f"slots, the inputs have {inputs.pf_features.shape[2]}")
        n_jets = len(inputs)
        result = np.empty((n_jets, N_OUTPUTS), dtype=np.float32)
        for jets, length in self._buckets(inputs.multiplicity):
            result[jets] = self.run(JetInputs(
                inputs.pf_features[jets, :, :length], inputs.pf_vectors[jets, :, :length],
                inputs.pf_mask[jets, :, :length], inputs.multiplicity[jets]))
        return result[:, :N_CLASSES_OUT], result[:, N_CLASSES_OUT:]

    def score_ragged(self, inputs: RaggedInputs) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 188) and latents (N, 128) of flat per-particle inputs."""
        n_jets = len(inputs)
        result = np.empty((n_jets, N_OUTPUTS), dtype=np.float32)
        for jets, length in self._buckets(inputs.multiplicity):
            result[jets] = self.run(inputs.padded(jets, length))
        return result[:, :N_CLASSES_OUT], result[:, N_CLASSES_OUT:]

    def _buckets(self, multiplicity: np.ndarray):
        """(jet indices, padded length) per batch: jets sorted by multiplicity, each batch padded
        to its longest jet (or to the file's fixed length)."""
        order = np.argsort(multiplicity, kind="stable")
        for start in range(0, len(order), self.batch_size):
            jets = order[start:start + self.batch_size]
            yield jets, self.fixed_length or max(int(multiplicity[jets].max(initial=1)), 1)
