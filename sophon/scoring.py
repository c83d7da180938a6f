"""Score JetClass-II files with a Sophon model and write a :mod:`sophon.store` dataset.

Two scorers share one interface (:class:`Scorer`): :class:`TorchScorer` runs a
:class:`~sophon.model.SophonModel` checkpoint, :class:`~sophon.export.OnnxScorer` any ONNX file in the
published layout. The torch scorer is the fast path: jets are sorted by constituent multiplicity and
batched so that each batch is padded only to its longest jet (JetClass-II jets fill ~45-60 of the 128
slots, and the attention cost grows with the square of the length), padding is built on the device
from flat particle arrays, and on CUDA the matrix products run under bf16 autocast (optionally
``torch.compile``). Masked padding contributes nothing, so trimming changes no result beyond float
rounding.

Command line::

    sophon score INPUT.parquet... --model sophon.pt -o DATASET [--device auto|cpu|cuda]
                 [--precision auto|fp32|bf16|fp16] [--batch-size N] [--compile] [--overwrite]

writes ``DATASET/part-<input stem>.parquet`` per input (atomically), skipping inputs whose part is
already complete, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sophon.export import N_OUTPUTS, ModelOutputError, OnnxScorer
from sophon.features import (MAX_PARTICLES, REQUIRED_COLUMNS, JetInputs, MissingColumnError,
                             RaggedInputs, ragged_inputs)
from sophon.labels import N_CLASSES
from sophon.model import SophonModel, file_digest, load_checkpoint
from sophon.store import JET_COLUMNS, LATENT_DIM, DatasetMetadata, write_dataset

__all__ = [
    "OPTIONAL_JET_COLUMNS",
    "Scorer",
    "TorchScorer",
    "OnnxScorer",
    "resolve_device",
    "resolve_precision",
    "load_scorer",
    "score_table",
    "score_files",
    "part_path",
    "register_cli",
]

T = TypeVar("T")
# Per-jet columns copied to the dataset when an input has them (truth label, SM-sample bookkeeping).
OPTIONAL_JET_COLUMNS: tuple[str, ...] = ("jet_label", "event_id", "jet_rank", "process", "weight")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Jets read and featurised at once from a file: bounds memory, and is the pool sorted into buckets.
DEFAULT_CHUNK_JETS = 32_768


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
        if model.config.num_classes != N_CLASSES or model.config.embed_dim != LATENT_DIM:
            raise ModelOutputError(
                f"the model outputs {model.config.num_classes} probabilities and a "
                f"{model.config.embed_dim}-d latent ({model.config.num_classes + model.config.embed_dim}"
                f" numbers per jet); a Sophon dataset needs {N_CLASSES} + {LATENT_DIM} = {N_OUTPUTS}")
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


def load_scorer(path: str | os.PathLike, *, device: str = "auto", precision: str = "auto",
                batch_size: int | None = None, compile: bool = False,
                threads: int | None = None) -> Scorer:
    """A scorer for a model file: ``.onnx`` -> onnxruntime, anything else -> torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    model_id = f"{path.name}@sha256:{file_digest(path)}"
    if path.suffix.lower() == ".onnx":
        resolved = resolve_device(device)
        if precision not in ("auto", "fp32"):
            raise ValueError(f"{path}: an ONNX model runs in the precision it was exported in; "
                             "use --precision fp32 or auto")
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if resolved.type == "cuda"
                     else ["CPUExecutionProvider"])
        return OnnxScorer(path, batch_size=batch_size or 64, threads=threads, providers=providers,
                          model_id=model_id)
    try:
        model = load_checkpoint(path)
    except Exception as error:  # torch.load and strict loading raise many types; name the file
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelOutputError(f"{path}: not a loadable Sophon/ParticleTransformer checkpoint "
                               f"({first_line})") from None
    return TorchScorer(model, device=device, precision=precision, batch_size=batch_size,
                       compile=compile, model_id=model_id, threads=threads)


# ---------------------------------------------------------------------------------------------------
# Tables and files


def _carried_columns(names: Iterable[str]) -> list[str]:
    present = set(names)
    return [name for name in (*JET_COLUMNS, *OPTIONAL_JET_COLUMNS) if name in present]


def _check_columns(names: Sequence[str], source: str) -> None:
    present = set(names)
    needed = tuple(dict.fromkeys(REQUIRED_COLUMNS + JET_COLUMNS))
    for name in needed:
        if name not in present:
            raise MissingColumnError(f"{source}: missing column {name!r} (JetClass-II schema; "
                                     f"scoring needs {', '.join(needed)})")


def _check_constituents(inputs: RaggedInputs, source: str, first_row: int = 0) -> None:
    empty = np.flatnonzero(inputs.multiplicity == 0)
    if len(empty):
        raise ValueError(f"{source}: jet at row {first_row + int(empty[0])} has no constituents "
                         f"({len(empty)} such jets); the model needs at least one particle per jet")


def score_table(table: pa.Table | pa.RecordBatch, scorer: Scorer, *,
                source_name: str = "table") -> tuple[dict[str, pa.Array], np.ndarray, np.ndarray]:
    """Score an in-memory JetClass-II table: (jet columns to keep, probabilities, latents)."""
    _check_columns(table.schema.names, source_name)
    if table.num_rows == 0:
        raise ValueError(f"{source_name}: holds no jets")
    inputs = ragged_inputs(table, source_name=source_name)
    _check_constituents(inputs, source_name)
    probabilities, latents = scorer.score_ragged(inputs)
    jets = {name: _as_array(table.column(name)) for name in _carried_columns(table.schema.names)}
    return jets, probabilities, latents


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def part_path(output: Path, source: Path) -> Path:
    """The dataset part written for one input file."""
    return output / f"part-{source.stem}.parquet"


def _existing_part_state(part: Path, source: Path, rows: int, model_id: str) -> str:
    """"complete", "missing" (absent or unusable: rescore), or raise for a different model."""
    if not part.exists():
        return "missing"
    try:
        parquet = pq.ParquetFile(part)
        raw = (parquet.schema_arrow.metadata or {}).get(b"sophon")
        metadata = DatasetMetadata.from_json(raw) if raw else None
    except (OSError, pa.ArrowException, ValueError):
        return "missing"
    if metadata is None or parquet.metadata.num_rows != rows:
        return "missing"
    if metadata.model_id != model_id:
        raise ValueError(f"{part}: already scored with model {metadata.model_id!r}, not {model_id!r}; "
                         "choose a new output directory or pass --overwrite")
    if metadata.extra.get("source_file") not in (None, source.name):
        raise ValueError(f"{part}: holds the scores of {metadata.extra.get('source_file')!r}, not "
                         f"{source.name!r} (two inputs with the same file name?)")
    return "complete"


def _input_metadata_luminosity(schema: pa.Schema) -> float | None:
    raw = (schema.metadata or {}).get(b"sophon")
    if not raw:
        return None
    try:
        return DatasetMetadata.from_json(raw).luminosity_fb
    except ValueError:
        return None


def _featurised_chunks(parquet: pq.ParquetFile, columns: list[str], chunk_jets: int,
                       source: str) -> Iterator[tuple[pa.RecordBatch, RaggedInputs]]:
    for batch in parquet.iter_batches(batch_size=chunk_jets, columns=columns):
        yield batch, ragged_inputs(batch, source_name=source)


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items``, each computed in a worker thread while the caller uses the previous one (reading
    and featurising the next chunk overlaps scoring on the GPU; numpy and pyarrow release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def score_files(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, scorer: Scorer, *,
                overwrite: bool = False, luminosity_fb: float | None = None,
                chunk_jets: int = DEFAULT_CHUNK_JETS, progress: bool = True,
                prefetch: bool | None = None, log=print) -> list[Path]:
    """Score JetClass-II parquet files into the dataset directory ``output``, one part per input.

    Files are streamed in chunks of ``chunk_jets`` jets; each part is written atomically once its
    input is complete, and inputs whose part is already complete (same model, same row count) are
    skipped. ``prefetch`` (default: when scoring on CUDA) featurises the next chunk in a thread.
    Returns the part paths in input order.
    """
    if prefetch is None:
        prefetch = getattr(getattr(scorer, "device", None), "type", "cpu") == "cuda"
    from tqdm.auto import tqdm

    sources = [Path(p) for p in inputs]
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a directory (the dataset is a directory of parts)")
    seen: dict[str, Path] = {}
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such input file")
        if source.stem in seen and seen[source.stem].resolve() != source.resolve():
            raise ValueError(f"{source} and {seen[source.stem]} would both write "
                             f"{part_path(output, source).name}; rename one")
        seen[source.stem] = source

    files: list[tuple[Path, pq.ParquetFile]] = []
    for source in sources:
        try:
            parquet = pq.ParquetFile(source)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{source}: not a readable parquet file ({error})") from None
        _check_columns(parquet.schema_arrow.names, str(source))
        if parquet.metadata.num_rows == 0:
            raise ValueError(f"{source}: holds no jets (empty file)")
        files.append((source, parquet))

    parts: list[Path] = []
    todo: list[tuple[Path, pq.ParquetFile, Path]] = []
    for source, parquet in files:
        part = part_path(output, source)
        parts.append(part)
        state = "missing" if overwrite else _existing_part_state(
            part, source, parquet.metadata.num_rows, scorer.model_id)
        if state == "complete":
            log(f"{source.name}: already scored in {part}, skipped")
        else:
            todo.append((source, parquet, part))

    total = sum(parquet.metadata.num_rows for _, parquet, _ in todo)
    with tqdm(total=total, unit="jet", unit_scale=True, disable=not progress or total == 0,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for source, parquet, part in todo:
            bar.set_description(source.name)
            names = parquet.schema_arrow.names
            columns = list(dict.fromkeys([*REQUIRED_COLUMNS, *_carried_columns(names)]))
            kept: dict[str, list[pa.Array]] = {name: [] for name in _carried_columns(names)}
            scores, latents = [], []
            first_row = 0
            chunks = _featurised_chunks(parquet, columns, chunk_jets, str(source))
            for batch, ragged in (_prefetched(chunks) if prefetch else chunks):
                _check_constituents(ragged, str(source), first_row)
                probabilities, latent = scorer.score_ragged(ragged)
                scores.append(probabilities)
                latents.append(latent)
                for name in kept:
                    kept[name].append(batch.column(name))
                first_row += batch.num_rows
                bar.update(batch.num_rows)
            jets = {name: pa.concat_arrays(chunks) for name, chunks in kept.items()}
            luminosity = luminosity_fb if luminosity_fb is not None else \
                _input_metadata_luminosity(parquet.schema_arrow)
            metadata = DatasetMetadata(
                luminosity_fb=luminosity, model_id=scorer.model_id,
                extra={"source_file": source.name, "source_rows": parquet.metadata.num_rows,
                       "scorer": scorer.description})
            write_dataset(part, jets, scores=np.concatenate(scores), latents=np.concatenate(latents),
                          metadata=metadata)
    return parts


# ---------------------------------------------------------------------------------------------------
# Command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _main(args: argparse.Namespace) -> int:
    scorer = load_scorer(args.model, device=args.device, precision=args.precision,
                         batch_size=args.batch_size, compile=args.compile, threads=args.threads)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    log(f"scoring with {scorer.model_id} ({scorer.description})")
    parts = score_files(args.inputs, args.output, scorer, overwrite=args.overwrite,
                        luminosity_fb=args.luminosity_fb, chunk_jets=args.chunk_jets,
                        progress=not args.quiet, log=log)
    log(f"wrote {len(parts)} part(s) to {args.output}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``sophon score``."""
    parser = subparsers.add_parser(
        "score", help="score JetClass-II parquet files with a Sophon model into a dataset",
        description="Score JetClass-II-schema parquet files (published or generated) with a Sophon "
                    "model (.pt checkpoint or .onnx) and write a dataset directory with one part per "
                    "input: jet columns, the 188 class probabilities and the 128-d latent. Parts are "
                    "written atomically; rerunning skips inputs already scored.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JetClass-II parquet file(s)")
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="model: a PyTorch state dict (published mod.* layout) or an ONNX file")
    parser.add_argument("-o", "--output", required=True, metavar="DATASET",
                        help="output dataset directory (created; one part-<stem>.parquet per input)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the torch model runs (default: cuda if available)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="jets per forward pass (default: 2048 on cuda, 32 on cpu)")
    parser.add_argument("--chunk-jets", type=_positive_int, default=DEFAULT_CHUNK_JETS,
                        help="jets read and sorted by multiplicity at once (memory bound)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads")
    parser.add_argument("--luminosity-fb", type=float, default=None,
                        help="dataset luminosity in fb^-1 (default: taken from the inputs, if any)")
    parser.add_argument("--overwrite", action="store_true", help="rescore inputs already scored")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    parser.set_defaults(handler=_main)
