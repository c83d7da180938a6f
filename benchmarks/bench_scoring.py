"""Scoring throughput: the published way and the reference implementation against ours, one run.

CPU section (always): on the same jets (the 100 JetClass-II reference jets, tiled), timed in
interleaved rounds (best of each kept, so load from other work on a shared machine hits all alike),

- ``onnxruntime, one jet per call``: the published notebook's loop, each jet at its own length (the
  baseline of the ratios, and the reference of ``max|dp|``), and with 128 slots;
- ``torch eager fp32, 128 slots``: the plain model on the contract's padded batch, and weaver-core's
  ParticleTransformer the same way when it is installed;
- ours: :class:`sophon.scorers.TorchScorer` (bucketed by multiplicity, trimmed padding) in fp32 and
  bf16 autocast, and :class:`sophon.scorers.OnnxScorer` bucketed.

CUDA section (only with a GPU): weaver-core eager (fp32, tf32, bf16 autocast; 128 slots) against
``TorchScorer`` (bucketed, bf16/fp16/fp32, optionally ``--compile``), jets/s and ratio, plus the
largest probability difference from the fp32 reference (target: <= 1e-3) and whether the
250k jets/s target is met. Weights are random (seeded): speed does not depend on their values.

    .venv/bin/python benchmarks/bench_scoring.py [--jets 1000] [--min-particles 45] [--cuda-jets 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sophon.export import export_onnx
from sophon.features import RaggedInputs, ragged_inputs
from sophon.oracle import weaver_reference
from sophon.model import SophonModel, randomize_weights_
from sophon.scorers import OnnxScorer, TorchScorer

DEFAULT_PARQUET = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / \
    "JetClassII_example.parquet"
CUDA_TARGET_JETS_PER_SECOND = 250_000


def reference_table(path: Path, n_jets: int, min_particles: int) -> pa.Table:
    """``n_jets`` jets cycled from the reference file (optionally only those with at least
    ``min_particles`` constituents, to emulate a busier sample)."""
    table = pq.read_table(path)
    if min_particles:
        lengths = pa.compute.list_value_length(table["part_px"]).to_numpy()
        table = table.filter(pa.array(lengths >= min_particles))
    if table.num_rows == 0:
        raise SystemExit(f"no jet in {path} has {min_particles} or more particles")
    repeats = -(-n_jets // table.num_rows)
    return pa.concat_tables([table] * repeats).slice(0, n_jets).combine_chunks()


def rate(function, n_jets: int, repeats: int = 1, warm_up=None) -> tuple[float, object]:
    """Best jets/s over ``repeats`` timed calls of ``function`` and its last result; ``warm_up``
    (default: ``function`` itself) runs once first, untimed. Best-of keeps the figure honest on a
    machine shared with other work."""
    (warm_up or function)()
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n_jets / best, result


def padded_eager(network, inputs, device: str, batch_size: int, dtype=None) -> np.ndarray:
    """Probabilities of ``network`` on 128-slot inputs, batch by batch (the reference's way)."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = [torch.from_numpy(a[start:start + batch_size]).to(device)
                     for a in (inputs.pf_features, inputs.pf_vectors, inputs.pf_mask)]
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                probabilities, _ = network(*batch)
            outputs.append(probabilities.float().cpu().numpy())
    return np.concatenate(outputs)


def row(name: str, jets_per_second: float, baseline: float, difference: float | None = None) -> None:
    note = "" if difference is None else f"   max|dp| {difference:.1e}"
    print(f"  {name:<52s} {jets_per_second:>12,.0f} jets/s   x{jets_per_second / baseline:6.2f}{note}")


@dataclass
class Contender:
    """One way of scoring, timed on ``n_jets`` jets (the first ones of the sample)."""

    name: str
    run: Callable[[], np.ndarray]  # -> probabilities (n_jets, 188)
    n_jets: int
    seconds: float = float("inf")
    probabilities: np.ndarray | None = None

    def time(self) -> None:
        start = time.perf_counter()
        probabilities = self.run()
        self.seconds = min(self.seconds, time.perf_counter() - start)
        self.probabilities = probabilities

    @property
    def rate(self) -> float:
        return self.n_jets / self.seconds


def cpu_section(model: SophonModel, table: pa.Table, args: argparse.Namespace) -> None:
    """Every contender is timed once per round, rounds interleaved, best kept: a burst of load from
    other work on a shared machine then hurts no method more than another."""
    torch.set_num_threads(args.threads)
    ragged = ragged_inputs(table)
    padded = ragged.padded()
    multiplicity = ragged.multiplicity
    n_jets = len(ragged)
    loop_jets, slow_jets = min(args.loop_jets, n_jets), min(args.slow_jets, n_jets)
    print(f"CPU, {args.threads} threads: {n_jets} jets, {multiplicity.mean():.1f} particles on "
          f"average (max {multiplicity.max()}); best of {args.rounds} interleaved rounds")

    def first(count: int) -> RaggedInputs:
        end = int(ragged.offsets[count])
        return RaggedInputs(ragged.features[:end], ragged.vectors[:end], ragged.offsets[:count + 1])

    with tempfile.TemporaryDirectory() as folder:
        session = OnnxScorer(export_onnx(model, Path(folder) / "sophon.onnx"), threads=args.threads,
                             batch_size=64)

        def one_jet_per_call(own_length: bool, count: int) -> Callable[[], np.ndarray]:
            def loop() -> np.ndarray:
                outputs = []
                for jet in range(count):
                    n = int(multiplicity[jet]) if own_length else padded.pf_features.shape[2]
                    feeds = {name: array[jet:jet + 1, :, :n] for name, array in padded.as_dict().items()}
                    outputs.append(session.session.run(["softmax"], feeds)[0][:, :188])
                return np.concatenate(outputs)
            return loop

        slow_padded = first(slow_jets).padded()
        baseline = Contender("onnxruntime, one jet per call, own length (baseline)",
                             one_jet_per_call(True, loop_jets), loop_jets)
        contenders = [
            baseline,
            Contender("onnxruntime, one jet per call, 128 slots", one_jet_per_call(False, slow_jets),
                      slow_jets),
            Contender(f"torch eager fp32, one batch, 128 slots ({slow_jets} jets)",
                      lambda: padded_eager(model, slow_padded, "cpu", slow_jets), slow_jets),
        ]
        weaver = weaver_reference(model.state_dict())
        if weaver is not None:
            contenders.append(Contender(
                f"weaver-core eager fp32, one batch, 128 slots ({slow_jets} jets)",
                lambda: padded_eager(weaver, slow_padded, "cpu", slow_jets), slow_jets))
        loop_subset = first(loop_jets)
        contenders.append(Contender("ours: onnxruntime, bucketed batches of 64",
                                    lambda: session.score_ragged(loop_subset)[0], loop_jets))
        for precision in ("fp32", "bf16"):
            for batch_size in args.cpu_batch_sizes:
                scorer = TorchScorer(model, device="cpu", precision=precision, batch_size=batch_size)
                contenders.append(Contender(f"ours: torch {precision}, bucketed batches of {batch_size}",
                                            lambda s=scorer: s.score_ragged(ragged)[0], n_jets))
        for _ in range(args.rounds):
            for contender in contenders:
                contender.time()
    reference = baseline.probabilities  # no padding at all, another engine: an independent answer
    for contender in contenders:
        overlap = min(len(reference), contender.n_jets)
        difference = np.abs(contender.probabilities[:overlap] - reference[:overlap]).max()
        row(contender.name, contender.rate, baseline.rate, difference)
    features_rate = len(table) / min(_seconds(lambda: ragged_inputs(table)) for _ in range(3))
    print(f"  (features from columns: {features_rate:,.0f} jets/s on one thread)")


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def accelerator_section(model: SophonModel, table: pa.Table, args: argparse.Namespace,
                        device: str = "cuda") -> None:
    """weaver-core eager (128 slots) against our bucketed scorer on ``device`` (``cpu`` only to
    dry-run this code path on a machine without a GPU)."""
    cuda = device == "cuda"
    n_jets = min(args.cuda_jets, table.num_rows)
    ragged = ragged_inputs(table.slice(0, n_jets))
    label = torch.cuda.get_device_name() if cuda else "dry run on the CPU"
    print(f"\nCUDA ({label}): {n_jets} jets, {ragged.multiplicity.mean():.1f} particles on average")
    reference_jets = min(args.cuda_reference_jets, n_jets)
    padded = ragged_inputs(table.slice(0, reference_jets)).padded()
    weaver = weaver_reference(model.state_dict())
    if weaver is None:
        print("  (weaver-core not installed: the reference rows run our model at 128 slots)")
        weaver = SophonModel(model.config).eval()
        weaver.load_state_dict(model.state_dict())
        name = "reference"
    else:
        name = "weaver-core"
    baseline_network = weaver.to(device)

    def eager(dtype=None):
        return lambda: padded_eager(baseline_network, padded, device, args.reference_batch, dtype)

    torch.backends.cuda.matmul.allow_tf32 = False
    reference_rate, reference = rate(eager(), reference_jets)
    rows = [(f"{name} eager fp32, batch {args.reference_batch}, 128 slots", reference_rate, None)]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        speed, out = rate(eager(), reference_jets)
        rows.append((f"{name} eager tf32, 128 slots", speed, np.abs(out - reference).max()))
        torch.backends.cuda.matmul.allow_tf32 = False
    speed, out = rate(eager(torch.bfloat16), reference_jets)
    rows.append((f"{name} eager bf16 autocast, 128 slots", speed, np.abs(out - reference).max()))

    precisions = ("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16")
    variants = [(precision, False) for precision in precisions]
    if args.compile:
        variants += [(precision, True) for precision in precisions[1:]]
    best = 0.0
    for precision, compiled in variants:
        scorer = TorchScorer(model, device=device, precision=precision, batch_size=args.cuda_batch,
                             compile=compiled)
        warm_up = ragged_inputs(table.slice(0, min(n_jets, 20_000)))  # compilation, allocator
        speed, (p, _) = rate(lambda s=scorer: s.score_ragged(ragged), n_jets, args.repeats,
                             lambda s=scorer, w=warm_up: s.score_ragged(w))
        best = max(best, speed)
        rows.append((f"ours: {precision}{' compiled' if compiled else ''}, bucketed, batch "
                     f"{args.cuda_batch}", speed, np.abs(p[:reference_jets] - reference).max()))
    for label, speed, difference in rows:
        row(label, speed, reference_rate, difference)
    verdict = "met" if best >= CUDA_TARGET_JETS_PER_SECOND else "NOT met"
    print(f"  best ours {best:,.0f} jets/s = x{best / reference_rate:.1f} the fp32 reference; "
          f"target {CUDA_TARGET_JETS_PER_SECOND:,} jets/s {verdict}; max|dp| should be <= 1e-3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parquet", type=Path, default=DEFAULT_PARQUET, help="JetClass-II jets")
    parser.add_argument("--jets", type=int, default=1000, help="CPU jets (tiled from the file)")
    parser.add_argument("--loop-jets", type=int, default=300,
                        help="jets for the one-jet-per-call and batched onnxruntime rows")
    parser.add_argument("--slow-jets", type=int, default=20, help="jets for the 128-slot rows")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved CPU timing rounds")
    parser.add_argument("--min-particles", type=int, default=0,
                        help="use only reference jets with at least this many particles")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--cpu-batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed CUDA calls per row (best kept)")
    parser.add_argument("--cuda-jets", type=int, default=200_000)
    parser.add_argument("--cuda-reference-jets", type=int, default=20_000)
    parser.add_argument("--cuda-batch", type=int, default=2048)
    parser.add_argument("--reference-batch", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--dry-run-gpu-section", action="store_true",
                        help="without CUDA, run the GPU section's code on the CPU (small --cuda-jets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not args.parquet.is_file():
        raise SystemExit(f"{args.parquet}: not found (pass --parquet)")
    model = randomize_weights_(SophonModel(), seed=args.seed).eval()
    if not args.skip_cpu:
        cpu_section(model, reference_table(args.parquet, args.jets, args.min_particles), args)
    if torch.cuda.is_available() or args.dry_run_gpu_section:
        accelerator_section(model, reference_table(args.parquet, args.cuda_jets, args.min_particles),
                            args, "cuda" if torch.cuda.is_available() else "cpu")
    else:
        print("\nCUDA: not available, GPU section skipped")


if __name__ == "__main__":
    main()
