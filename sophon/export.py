"""ONNX export of the Sophon model with the published names (:class:`sophon.scorers.OnnxScorer`
scores any such file), and that published layout itself.

The file has inputs ``pf_features`` (N, 17, P), ``pf_vectors`` (N, 4, P), ``pf_mask`` (N, 1, P), float32,
and one output ``softmax`` (N, 316): the 188 class probabilities, then the 128 latent features (the
published Sophon ONNX layout). N is dynamic; P is dynamic too unless ``dynamic_particles=False``
(then it is fixed at 128, as some consumers expect).
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from sophon.atomic import atomic_output
from sophon.extras import require
from sophon.features import MAX_PARTICLES
from sophon.labels import N_CLASSES
from sophon.model import SophonModel
from sophon.store import LATENT_DIM

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "N_OUTPUTS",
    "ModelOutputError",
    "check_output_layout",
    "export_onnx",
    "onnx_bytes",
]

OPSET = 17
# torch's ONNX exporter keeps its state in globals: one export at a time per process (the app's
# sessions and a Dask worker's tasks run in threads, and each may export a checkpoint to score it).
_EXPORT_LOCK = threading.Lock()

# The published layout, which every scorer reads and this module writes.
INPUT_NAMES: tuple[str, ...] = ("pf_features", "pf_vectors", "pf_mask")
OUTPUT_NAME = "softmax"
N_OUTPUTS = N_CLASSES + LATENT_DIM  # 316 numbers per jet: 188 probabilities, then 128 latents


class ModelOutputError(ValueError):
    """A model file whose inputs or outputs do not follow the published Sophon layout."""


def check_output_layout(model: nn.Module) -> None:
    """:class:`ModelOutputError` unless ``model`` (its ``config``) gives the 188 probabilities and
    128 latents per jet of the published layout, which a Sophon dataset holds."""
    config = model.config
    if config.num_classes != N_CLASSES or config.embed_dim != LATENT_DIM:
        raise ModelOutputError(
            f"the model outputs {config.num_classes} probabilities and a {config.embed_dim}-d "
            f"latent ({config.num_classes + config.embed_dim} numbers per jet); the published "
            f"layout, which a Sophon dataset holds, needs {N_CLASSES} classes and a "
            f"{LATENT_DIM}-d latent, {N_CLASSES} + {LATENT_DIM} = {N_OUTPUTS}")


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
    ``model``: a :class:`SophonModel`, or any module with its ``config`` and its ``forward``
    (weaver-core's network from :func:`sophon.oracle.weaver_reference`: the published graph).

    The batch axis is dynamic; with ``dynamic_particles`` so is the particle axis (up to the
    contract's 128 slots), which lets a consumer trim padding. The pair embedding runs once per
    unordered pair, as in :class:`sophon.model.PairEmbedding`. Returns the path.
    """
    graph = onnx_bytes(model, dynamic_particles=dynamic_particles,
                       example_particles=example_particles, opset=opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        Path(temporary).write_bytes(graph)
    return path


def onnx_bytes(model: SophonModel, *, dynamic_particles: bool = True,
               example_particles: int = MAX_PARTICLES, opset: int = OPSET) -> bytes:
    """The ONNX file :func:`export_onnx` writes, as bytes (for an in-memory onnxruntime session:
    :func:`sophon.scorers.load_scorer` scores a checkpoint on the CPU this way)."""
    check_output_layout(model)
    onnx = require("onnx", "onnx", "ONNX export")  # before the trace, not after it
    wrapper = _ConcatenatedOutput(model).eval().float().cpu()
    length = example_particles
    example = (torch.zeros(2, model.config.input_dim, length), torch.zeros(2, 4, length),
               torch.ones(2, 1, length))
    example[1][:, 3] = 1.0  # massless-looking placeholders keep the trace free of NaNs
    dynamic_axes = {name: ({0: "N", 2: "n_particles"} if dynamic_particles else {0: "N"})
                    for name in INPUT_NAMES}
    dynamic_axes[OUTPUT_NAME] = {0: "N"}
    buffer = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter needs no extra dependency (the dynamo one needs
        # onnxscript); its deprecation notice is not actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example, buffer, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    # The tracer leaves the output's width symbolic (a concat of dynamic-shaped pieces), but
    # consumers check it, as OnnxScorer does: write the static 316.
    width = graph.graph.output[0].type.tensor_type.shape.dim[1]
    width.ClearField("dim_param")
    width.dim_value = N_OUTPUTS
    onnx.checker.check_model(graph)
    return graph.SerializeToString()
