"""Scoring throughput: the published way and the reference implementation against ours, one run.

CPU section (always), for the full (published) configuration and the embedded default's small
one (``--configs``), random seeded weights: on the same jets (the 100 JetClass-II reference jets,
tiled), timed in interleaved rounds (best of each kept, so load from other work on a shared
machine hits all alike),

- the baseline of the ratios and the reference of ``max|dp|``: the published notebook's loop, one
  onnxruntime call per jet at its own length, on the published graph (weaver-core's network in
  the same shape, exported to ONNX; our own graph when weaver-core is not installed); the same
  at the contract's 128 slots; the plain model on a 128-slot batch;
- ours: onnxruntime on our graph (kinematics once per particle, pair embedding once per unordered
  pair in a pairs-first layout, biases inside each Gemm), one jet per call and
  bucketed, one call at a time or one call per core at once (the default of ``sophon score`` and
  the app on the CPU); :class:`sophon.scorers.TorchScorer` (bucketed by multiplicity, trimmed
  padding) in fp32, with the feed-forward layers in dynamic int8, in bf16 autocast where the CPU
  has bf16 instructions, and compiled with ``--compile-cpu``.

Each row also gives its fraction of the arithmetic limit: the FLOP per jet of the configuration at
these multiplicities (dense layers, pair embedding over n (n + 1) / 2 pairs, QK^T and AV; norms,
activations and softmax not counted) against a plain fp32 matmul on the same threads, same run.

CUDA section (only with a GPU): weaver-core eager (fp32, tf32, bf16 autocast; 128 slots) against
``TorchScorer`` (bucketed, bf16/fp16/fp32, optionally ``--compile``), jets/s and ratio, plus the
largest probability difference from the fp32 reference (target: <= 1e-3) and whether the
250k jets/s target is met. Weights are random (seeded): speed does not depend on their values.

    .venv/bin/python benchmarks/bench_scoring.py [--jets 1000] [--min-particles 45] [--cuda-jets 200000]
"""

from __future__ import annotations

import argparse
import copy
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
from sophon.features import JetInputs, RaggedInputs, ragged_inputs
from sophon.labels import N_CLASSES
from sophon.model import SophonConfig, SophonModel, count_parameters, randomize_weights_
from sophon.oracle import weaver_reference
from sophon.scorers import OnnxScorer, TorchScorer, cpu_has_bf16
from sophon.training import TRAINING_CONFIGS

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


def _chain(widths) -> int:
    """Multiply-adds of a chain of dense layers of these widths, per input vector."""
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def multiply_adds(config: SophonConfig, multiplicity: np.ndarray) -> dict[str, float]:
    """Multiply-adds per jet of each stage, averaged over jets of ``multiplicity`` particles
    (unpadded): dense layers and the attention's QK^T and AV products; norms, activations and
    the softmax left out. The pair embedding runs once per unordered pair, n (n + 1) / 2."""
    n = multiplicity.astype(np.float64)
    d = config.embed_dim
    ffn = d * config.ffn_ratio
    dense = 4 * d * d + 2 * d * ffn  # q, k, v and out projections; the two feed-forward layers
    pairs = n * (n + 1) / 2
    pair_widths = (config.pair_input_dim, *config.pair_embed_dims, config.num_heads)
    head_widths = (d, *(width for width, _ in config.fc_params), config.num_classes)
    return {
        "particle embedding": float(np.mean(n * _chain((config.input_dim, *config.embed_dims)))),
        "pair features + embedding": float(np.mean(pairs * _chain(pair_widths))),
        "particle blocks": float(np.mean(config.num_layers * (n * dense + 2 * n * n * d))),
        # one class token attends to itself and the n particles: keys and values of n + 1
        "class blocks": float(np.mean(config.num_cls_layers * (
            (n + 1) * 2 * d * d + 2 * d * d + 2 * d * ffn + 2 * (n + 1) * d))),
        "head": float(_chain(head_widths)),
    }


def matmul_peak(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a plain fp32 (size x size) matmul on ``threads`` threads, best of ``repeats``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


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


def _first(ragged: RaggedInputs, count: int) -> RaggedInputs:
    end = int(ragged.offsets[count])
    return RaggedInputs(ragged.features[:end], ragged.vectors[:end], ragged.offsets[:count + 1])


def _one_jet_per_call(scorer: OnnxScorer, padded: JetInputs, count: int,
                      own_length: bool = True) -> Callable[[], np.ndarray]:
    """The published notebook's loop: one onnxruntime call per jet, at its own length (or at
    the contract's 128 slots)."""
    def loop() -> np.ndarray:
        outputs = []
        for jet in range(count):
            n = int(padded.multiplicity[jet]) if own_length else padded.pf_features.shape[2]
            feeds = {name: array[jet:jet + 1, :, :n] for name, array in padded.as_dict().items()}
            outputs.append(scorer.session.run([scorer.output_name], feeds)[0][:, :N_CLASSES])
        return np.concatenate(outputs)
    return loop


def _int8_linear_layers(model: SophonModel) -> SophonModel:
    """A copy of ``model`` with the blocks' feed-forward layers in dynamic int8 (fbgemm): the
    quantisable half of the arithmetic (the attention projections are called as functions)."""
    layers = {name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("fc1", "fc2")}
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), layers, dtype=torch.qint8)


def cpu_contenders(model: SophonModel, ragged: RaggedInputs, folder: Path,
                   args: argparse.Namespace) -> list[Contender]:
    """The baseline first (the published graph, one jet per call), then every other way."""
    n_jets = len(ragged)
    loop_jets, slow_jets = min(args.loop_jets, n_jets), min(args.slow_jets, n_jets)
    loop_padded = _first(ragged, loop_jets).padded()
    slow_padded = _first(ragged, slow_jets).padded()
    weaver = weaver_reference(model.state_dict(), model.config)
    # the notebook's session: onnxruntime's operators split across the cores, one call at a time
    published = OnnxScorer(export_onnx(weaver if weaver is not None else model,
                                       folder / "published.onnx"), threads=args.threads,
                           batches_at_once=1)
    ours = OnnxScorer(export_onnx(model, folder / "sophon.onnx"), threads=args.threads,
                      batches_at_once=1)
    graph = "weaver-core's graph" if weaver is not None else "our graph (no weaver-core)"
    contenders = [
        Contender(f"onnxruntime, one jet per call, {graph} (baseline)",
                  _one_jet_per_call(published, loop_padded, loop_jets), loop_jets),
        Contender("onnxruntime, one jet per call, our graph, 128 slots",
                  _one_jet_per_call(ours, slow_padded, slow_jets, own_length=False), slow_jets),
        Contender(f"torch eager fp32, one batch, 128 slots ({slow_jets} jets)",
                  lambda: padded_eager(model, slow_padded, "cpu", slow_jets), slow_jets),
        Contender("onnxruntime, one jet per call, our graph",
                  _one_jet_per_call(ours, loop_padded, loop_jets), loop_jets),
    ]
    for batch_size in args.onnx_batch_sizes:
        for at_once in (1, args.threads):
            scorer = OnnxScorer(ours.path, threads=args.threads, batch_size=batch_size,
                                batches_at_once=at_once)
            how = "one at a time" if at_once == 1 else f"{at_once} at once, a core each"
            contenders.append(Contender(f"ours: onnxruntime, bucketed batches of {batch_size}, {how}",
                                        lambda s=scorer: s.score_ragged(ragged)[0], n_jets))
    ways = [("fp32", model, "", args.cpu_batch_sizes),
            ("fp32", _int8_linear_layers(model), " (feed-forward in int8)", [32])]
    if cpu_has_bf16():  # emulated without AVX512-BF16/AMX: ~100x slower, not worth a row
        ways.append(("bf16", model, "", args.cpu_batch_sizes))
    for precision, network, label, batch_sizes in ways:
        for batch_size in batch_sizes:
            scorer = TorchScorer(network, device="cpu", precision=precision, batch_size=batch_size)
            contenders.append(Contender(
                f"ours: torch {precision}{label}, bucketed batches of {batch_size}",
                lambda s=scorer: s.score_ragged(ragged)[0], n_jets))
    if args.compile_cpu:
        scorer = TorchScorer(model, device="cpu", batch_size=args.cpu_batch_sizes[0], compile=True)
        scorer.score_ragged(_first(ragged, 200))  # compilation (minutes) stays out of the clock
        contenders.append(Contender(f"ours: torch fp32 compiled, batches of {scorer.batch_size}",
                                    lambda: scorer.score_ragged(ragged)[0], n_jets))
    return contenders


def cpu_section(name: str, model: SophonModel, table: pa.Table, peak: float,
                args: argparse.Namespace) -> None:
    """Every contender is timed once per round, rounds interleaved, best kept: a burst of load from
    other work on a shared machine then hurts no method more than another."""
    ragged = ragged_inputs(table)
    multiplicity = ragged.multiplicity
    flop_per_jet = 2 * sum(multiply_adds(model.config, multiplicity).values())
    limit = peak * 1e9 / flop_per_jet
    print(f"\n{name} configuration ({count_parameters(model):,} parameters), CPU, {args.threads} "
          f"threads: {len(ragged)} jets, {multiplicity.mean():.1f} particles on average (max "
          f"{multiplicity.max()}); {flop_per_jet / 1e6:.1f} MFLOP per jet, so a plain matmul's "
          f"{peak:.0f} GFLOP/s would score {limit:,.0f} jets/s; best of {args.rounds} "
          "interleaved rounds")
    with tempfile.TemporaryDirectory() as folder:
        contenders = cpu_contenders(model, ragged, Path(folder), args)
        for _ in range(args.rounds):
            for contender in contenders:
                contender.time()
    baseline = contenders[0]
    reference = baseline.probabilities  # no padding at all, another engine: an independent answer
    print(f"  {'way':<66s} {'jets/s':>8s} {'ratio':>7s} {'of limit':>9s} {'max|dp|':>9s}")
    for contender in contenders:
        overlap = min(len(reference), contender.n_jets)
        difference = np.abs(contender.probabilities[:overlap] - reference[:overlap]).max()
        print(f"  {contender.name:<66s} {contender.rate:>8,.0f} "
              f"x{contender.rate / baseline.rate:6.2f} {contender.rate / limit:>9.1%} "
              f"{difference:>9.1e}")


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
    parser.add_argument("--configs", nargs="+", default=["full", "small"],
                        choices=["full", "small"], help="the published shape, the default's")
    parser.add_argument("--cpu-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--onnx-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--compile-cpu", action="store_true",
                        help="also time torch.compile on the CPU (compiling takes minutes)")
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
        table = reference_table(args.parquet, args.jets, args.min_particles)
        peak = matmul_peak(args.threads)
        features_rate = len(table) / min(_seconds(lambda: ragged_inputs(table)) for _ in range(3))
        print(f"CPU: a plain fp32 matmul reaches {peak:.0f} GFLOP/s on {args.threads} threads; "
              f"model inputs from the columns: {features_rate:,.0f} jets/s on one thread")
        for name in args.configs:
            network = model if name == "full" else randomize_weights_(
                SophonModel(TRAINING_CONFIGS[name]), seed=args.seed).eval()
            cpu_section(name, network, table, peak, args)
    if torch.cuda.is_available() or args.dry_run_gpu_section:
        accelerator_section(model, reference_table(args.parquet, args.cuda_jets, args.min_particles),
                            args, "cuda" if torch.cuda.is_available() else "cpu")
    else:
        print("\nCUDA: not available, GPU section skipped")


if __name__ == "__main__":
    main()
