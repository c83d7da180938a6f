"""ONNX export of the Sophon model with the published names (:class:`sophon.scorers.OnnxScorer`
scores any such file).

The file has inputs ``pf_features`` (N, 17, P), ``pf_vectors`` (N, 4, P), ``pf_mask`` (N, 1, P), float32,
and one output ``softmax`` (N, 316): the 188 class probabilities, then the 128 latent features (the
published Sophon ONNX layout). N is dynamic; P is dynamic too unless ``dynamic_particles=False``
(then it is fixed at 128, as some consumers expect).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from sophon.atomic import atomic_output
from sophon.extras import require
from sophon.features import MAX_PARTICLES
from sophon.labels import N_CLASSES
from sophon.model import SophonModel
from sophon.scorers import INPUT_NAMES, N_OUTPUTS, OUTPUT_NAME, ModelOutputError
from sophon.store import LATENT_DIM

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "N_OUTPUTS",
    "ModelOutputError",
    "export_onnx",
]

OPSET = 17


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
    if model.config.num_classes != N_CLASSES or model.config.embed_dim != LATENT_DIM:
        raise ModelOutputError(f"the published layout needs {N_CLASSES} classes and a "
                               f"{LATENT_DIM}-d latent; this model has "
                               f"{model.config.num_classes} and {model.config.embed_dim}")
    require("onnx", "onnx", "ONNX export")  # before the trace, not after it
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
    dynamic-shaped pieces), but consumers check it, as :class:`~sophon.scorers.OnnxScorer` does."""
    onnx = require("onnx", "onnx", "ONNX export")
    graph = onnx.load(path)
    width = graph.graph.output[0].type.tensor_type.shape.dim[1]
    width.ClearField("dim_param")
    width.dim_value = N_OUTPUTS
    onnx.checker.check_model(graph)
    onnx.save(graph, path)
