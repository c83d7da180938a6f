"""The scorer family: everything that turns model inputs into (probabilities, latents).

Two scorers share one interface (:class:`Scorer`): :class:`TorchScorer` runs a
:class:`~sophon.model.SophonModel` checkpoint, :class:`OnnxScorer` any ONNX file in the published
layout (inputs :data:`INPUT_NAMES`, one output :data:`OUTPUT_NAME` of :data:`N_OUTPUTS` = 188
probabilities then 128 latents per jet; :func:`sophon.export.export_onnx` writes such files).
:func:`load_scorer` picks one for a model file; :func:`resolve_device` and
:func:`resolve_precision` turn the command-line names into torch's.

Both bucket: jets are sorted by constituent multiplicity and batched so that each batch is padded
only to its longest jet (JetClass-II jets fill ~45-60 of the 128 slots, and the attention cost
grows with the square of the length). Masked padding contributes nothing, so trimming changes no
result beyond float rounding. On the CPU the fastest path is onnxruntime with the cores scoring
batches side by side (:class:`OnnxScorer`; :func:`load_scorer` exports a checkpoint's graph in
memory for it); the torch scorer builds the padding on the device from flat particle arrays and
serves CUDA (bf16 autocast, optionally ``torch.compile``) and training-time checks. onnxruntime is
imported only when an :class:`OnnxScorer` is made.

Files and datasets are scored with these by :mod:`sophon.scoring`.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from sophon.export import (INPUT_NAMES, N_OUTPUTS, OUTPUT_NAME, ModelOutputError,
                           check_output_layout, onnx_bytes)
from sophon.extras import has_extra, require
from sophon.features import MAX_PARTICLES, JetInputs, RaggedInputs
from sophon.labels import N_CLASSES
from sophon.manifest import sha256_file
from sophon.model import SophonModel, load_checkpoint

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "N_OUTPUTS",
    "ModelOutputError",
    "check_output_layout",
    "Scorer",
    "TorchScorer",
    "OnnxScorer",
    "load_scorer",
    "resolve_device",
    "resolve_precision",
    "cpu_has_bf16",
]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# Jets per onnxruntime call when the cores score batches side by side (the best of 16-64 for both
# the published and the small configuration in benchmarks/bench_scoring.py).
DATA_PARALLEL_BATCH = 16

# Longest model-loading error shown (a strict load of a wrong-shape file lists every tensor).
MAX_ERROR_CHARACTERS = 20_000


@runtime_checkable
class Scorer(Protocol):
    """Anything that turns model inputs into (probabilities (N, 188), latents (N, 128)) float32."""

    model_id: str
    description: str

    def score(self, inputs: JetInputs) -> tuple[np.ndarray, np.ndarray]: ...

    def score_ragged(self, inputs: RaggedInputs) -> tuple[np.ndarray, np.ndarray]: ...


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. Asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA, fp32 on CPU. fp16 needs CUDA (CPUs lack fast fp16 kernels)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 inference needs --device cuda; use bf16 or fp32 on the CPU")
    if name == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX) is emulated and "
                      "about 100x slower than fp32; use --precision fp32 (or auto) here",
                      RuntimeWarning, stacklevel=2)
    return PRECISIONS[name]


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's own test: AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class _SortedParticles:
    """Flat particles of a chunk reordered so that jets are sorted by multiplicity (on the device).

    Row r of ``features``/``vectors`` belongs to sorted jet ``jet[r]`` at slot ``slot[r]``;
    the particles of sorted jets [a, b) are rows ``particle_offsets[a]:particle_offsets[b]``.
    """

    features: torch.Tensor
    vectors: torch.Tensor
    jet: torch.Tensor
    slot: torch.Tensor
    counts: torch.Tensor
    particle_offsets: np.ndarray
    counts_host: np.ndarray


def _sort_particles(inputs: RaggedInputs, order: np.ndarray, device: torch.device) -> _SortedParticles:
    counts = inputs.multiplicity[order]
    total = int(counts.sum())
    sorted_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(counts, out=sorted_offsets[1:])
    jet = np.repeat(np.arange(len(order), dtype=np.int64), counts)
    slot = np.arange(total, dtype=np.int64) - np.repeat(sorted_offsets[:-1], counts)
    source = np.repeat(inputs.offsets[:-1][order], counts) + slot
    pinned = device.type == "cuda"

    def to_device(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if pinned:
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)

    return _SortedParticles(
        features=to_device(inputs.features[source]), vectors=to_device(inputs.vectors[source]),
        jet=to_device(jet), slot=to_device(slot), counts=to_device(counts),
        particle_offsets=sorted_offsets, counts_host=counts)


def _padded_batch(particles: _SortedParticles, start: int, stop: int,
                  length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model inputs (n, 17, L), (n, 4, L), (n, 1, L) of sorted jets [start, stop), zero-padded."""
    n_jets = stop - start
    first, last = int(particles.particle_offsets[start]), int(particles.particle_offsets[stop])
    destination = (particles.jet[first:last] - start) * length + particles.slot[first:last]
    device = particles.features.device
    features = torch.zeros(n_jets * length, particles.features.shape[1], device=device)
    vectors = torch.zeros(n_jets * length, particles.vectors.shape[1], device=device)
    features[destination] = particles.features[first:last]
    vectors[destination] = particles.vectors[first:last]
    slots = torch.arange(length, device=device)
    mask = (slots[None, :] < particles.counts[start:stop, None]).to(torch.float32).unsqueeze(1)
    # Channel-major views of particle-major buffers: the layout the model's first layers want.
    return (features.view(n_jets, length, -1).transpose(1, 2),
            vectors.view(n_jets, length, -1).transpose(1, 2), mask)


class TorchScorer:
    """Scores jets with a :class:`SophonModel` on CPU or CUDA, bucketed by multiplicity.

    ``precision``: fp32, or bf16/fp16 autocast for the matrix products (probabilities stay within
    ~1e-3 of fp32). ``batch_size``: jets per forward pass. ``length_quantum``: each batch's padded
    length is rounded up to a multiple of it (fewer distinct shapes for ``torch.compile`` and the CUDA
    kernels; 1 on the CPU, where every extra slot costs). ``compile``: wrap the model in
    ``torch.compile`` (dynamic shapes).
    """

    def __init__(self, model: SophonModel, *, device: str | torch.device = "auto",
                 precision: str = "auto", batch_size: int | None = None,
                 length_quantum: int | None = None, compile: bool = False, model_id: str = "",
                 threads: int | None = None):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        check_output_layout(model)
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval().to(self.device)
        cuda = self.device.type == "cuda"
        self.batch_size = int(batch_size or (2048 if cuda else 32))
        self.length_quantum = int(length_quantum or (8 if cuda or compile else 1))
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.model_id = model_id
        self.description = (f"torch {self.device.type} {str(self.dtype).removeprefix('torch.')}"
                            f"{' compiled' if compile else ''}")

    def _padded_length(self, longest: int) -> int:
        quantum = self.length_quantum
        return min(max(-(-longest // quantum) * quantum, 1), max(longest, MAX_PARTICLES))

    @torch.inference_mode()
    def score_ragged(self, inputs: RaggedInputs) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 188) and latents (N, 128) float32 of flat per-particle inputs."""
        n_jets = len(inputs)
        order = np.argsort(inputs.multiplicity, kind="stable")
        particles = _sort_particles(inputs, order, self.device)
        outputs = torch.empty(n_jets, N_OUTPUTS, dtype=torch.float32, device=self.device)
        autocast = self.dtype != torch.float32
        for start in range(0, n_jets, self.batch_size):
            stop = min(start + self.batch_size, n_jets)
            length = self._padded_length(int(particles.counts_host[stop - 1]))  # sorted: last longest
            features, vectors, mask = _padded_batch(particles, start, stop, length)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
                probabilities, latent = self.forward(features, vectors, mask)
            outputs[start:stop, :N_CLASSES] = probabilities.float()
            outputs[start:stop, N_CLASSES:] = latent.float()
        result = np.empty((n_jets, N_OUTPUTS), dtype=np.float32)
        result[order] = outputs.cpu().numpy()
        return result[:, :N_CLASSES], result[:, N_CLASSES:]

    def score(self, inputs: JetInputs) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and latents of already padded inputs (N, C, L)."""
        counts = np.asarray(inputs.multiplicity, dtype=np.int64)
        slots = np.arange(inputs.pf_features.shape[2])
        real = slots[None, :] < counts[:, None]
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ragged = RaggedInputs(features=inputs.pf_features.transpose(0, 2, 1)[real],
                              vectors=inputs.pf_vectors.transpose(0, 2, 1)[real], offsets=offsets,
                              max_particles=inputs.pf_features.shape[2])
        return self.score_ragged(ragged)


class OnnxScorer:
    """Scores jets with any ONNX file in the published layout, through onnxruntime.

    ``score(inputs)`` returns ``(probabilities (N, 188), latents (N, 128))`` float32. Batches of
    ``batch_size`` jets; when the file's particle axis is dynamic, jets are sorted by multiplicity and
    each batch is trimmed to its longest jet (masked padding contributes nothing).

    ``source``: the file's path, or the file's bytes (then ``name`` names it in messages).
    ``threads``: CPU cores to use (default: all). ``batches_at_once`` (default: one per core on the
    CPU, one on a GPU): calls run side by side, each on ``threads // batches_at_once`` threads. At
    these sizes (batches of tens of jets, layers of 128-512 channels) a core per batch is faster
    than splitting every operator across the cores, whose synchronisation then costs as much as
    the work (measured in ``benchmarks/bench_scoring.py``).
    """

    def __init__(self, source: str | os.PathLike | bytes, *, batch_size: int = DATA_PARALLEL_BATCH,
                 threads: int | None = None, batches_at_once: int | None = None,
                 providers: list[str] | None = None, model_id: str = "", name: str | None = None):
        ort = require("onnxruntime", "onnx", "ONNX scoring")

        in_memory = isinstance(source, bytes)
        self.path = Path(name or "model.onnx") if in_memory else Path(source)
        self.model_id = model_id or self.path.name
        if not in_memory and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        providers = providers or ["CPUExecutionProvider"]
        cores = max(1, threads or os.cpu_count() or 1)
        on_cpu = providers[0] == "CPUExecutionProvider"  # a GPU runs one batch at a time anyway
        self.workers = max(1, min(batches_at_once or (cores if on_cpu else 1), cores))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, cores // self.workers)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(source if in_memory else str(self.path),
                                                sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelOutputError(f"{self.path}: onnxruntime cannot load the model ({error})") from None
        self.description = "onnxruntime" + (f", {self.workers} batches at once"
                                             if self.workers > 1 else "")
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
        return self._score_buckets(inputs.multiplicity, lambda jets, length: JetInputs(
            inputs.pf_features[jets, :, :length], inputs.pf_vectors[jets, :, :length],
            inputs.pf_mask[jets, :, :length], inputs.multiplicity[jets]))

    def score_ragged(self, inputs: RaggedInputs) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, 188) and latents (N, 128) of flat per-particle inputs."""
        return self._score_buckets(inputs.multiplicity, inputs.padded)

    def _score_buckets(self, multiplicity: np.ndarray, padded) -> tuple[np.ndarray, np.ndarray]:
        """Every bucket of jets padded by ``padded(jets, length)`` and scored, ``workers`` at a
        time (onnxruntime releases the GIL while it runs, so the calls overlap)."""
        result = np.empty((len(multiplicity), N_OUTPUTS), dtype=np.float32)

        def score_bucket(bucket: tuple[np.ndarray, int]) -> None:
            jets, length = bucket
            result[jets] = self.run(padded(jets, length))

        buckets = list(self._buckets(multiplicity))
        if self.workers > 1 and len(buckets) > 1:
            with ThreadPoolExecutor(min(self.workers, len(buckets))) as pool:
                for _ in pool.map(score_bucket, buckets):  # re-raises a bucket's error
                    pass
        else:
            for bucket in buckets:
                score_bucket(bucket)
        return result[:, :N_CLASSES], result[:, N_CLASSES:]

    def _buckets(self, multiplicity: np.ndarray):
        """(jet indices, padded length) per batch: jets sorted by multiplicity, each batch padded
        to its longest jet (or to the file's fixed length)."""
        order = np.argsort(multiplicity, kind="stable")
        for start in range(0, len(order), self.batch_size):
            jets = order[start:start + self.batch_size]
            yield jets, self.fixed_length or max(int(multiplicity[jets].max(initial=1)), 1)


def load_scorer(path: str | os.PathLike, *, device: str = "auto", precision: str = "auto",
                batch_size: int | None = None, compile: bool = False,
                threads: int | None = None) -> Scorer:
    """A scorer for a model file: ``.onnx`` -> onnxruntime; anything else is a torch checkpoint,
    scored on the CPU in fp32 by onnxruntime on its exported graph when the ``onnx`` extra is
    installed (the fastest CPU path), else, and on CUDA, in bf16, or compiled, by torch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    model_id = f"{path.name}@sha256:{sha256_file(path)[:12]}"
    resolved = resolve_device(device)
    fp32 = precision in ("auto", "fp32")  # auto is fp32 on the CPU; ONNX files are fp32 anyway
    cpu_batch = batch_size or DATA_PARALLEL_BATCH
    if path.suffix.lower() == ".onnx":
        if not fp32:
            raise ValueError(f"{path}: an ONNX model runs in the precision it was exported in; "
                             "use --precision fp32 or auto")
        if resolved.type == "cuda":
            return OnnxScorer(path, batch_size=batch_size or 64, threads=threads, model_id=model_id,
                              providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return OnnxScorer(path, batch_size=cpu_batch, threads=threads, model_id=model_id)
    try:
        model = load_checkpoint(path)
    except Exception as error:  # torch.load and strict loading raise many types; name the file
        # every line: a strict load lists each missing key and each size mismatch on its own
        lines = [" ".join(line.split()) for line in str(error).strip().splitlines()]
        detail = " ".join(line for line in lines if line) or type(error).__name__
        if len(detail) > MAX_ERROR_CHARACTERS:
            detail = detail[:MAX_ERROR_CHARACTERS - 1] + "…"
        raise ModelOutputError(f"{path}: not a loadable Sophon/ParticleTransformer checkpoint "
                               f"({detail})") from None
    if resolved.type == "cpu" and fp32 and not compile and has_extra("onnx"):
        # The fastest CPU path (benchmarks/bench_scoring.py): the checkpoint's own graph in an
        # in-memory onnxruntime session, the cores scoring batches side by side. Same fp32 sums.
        # onnx_bytes checks the output layout, as TorchScorer does.
        scorer = OnnxScorer(onnx_bytes(model), batch_size=cpu_batch, threads=threads,
                            model_id=model_id, name=path.name)
        scorer.description = f"{scorer.description} (exported from {path.name})"
        return scorer
    return TorchScorer(model, device=resolved, precision=precision, batch_size=batch_size,
                       compile=compile, model_id=model_id, threads=threads)
