"""Where the CPU scoring time goes, per stage and batch size, for torch and onnxruntime.

Stages of one forward pass (``sophon.model``): the particle embedding (``mod.embed``), the pair
features and their embedding over the N^2 particle pairs (``mod.pair_embed``), the particle
attention blocks (``mod.blocks``), the class-attention blocks (``mod.cls_blocks``) and the head
(``mod.norm`` and ``mod.fc``); before them, building the model inputs from the parquet columns
(``sophon.features.ragged_inputs``, once per file) and padding a batch (``RaggedInputs.padded``).

Torch: wall time of each stage from forward hooks (eager CPU runs synchronously, so a hook's
clock brackets the stage's work). Onnxruntime: its own profiler's per-node durations, summed by
the module path in each node's name (the exporter names nodes ``/mod/pair_embed/...``).

Jets are the 100 JetClass-II reference jets, tiled, sorted by multiplicity and cut into batches
of each size, each padded to its longest jet (the way :class:`sophon.scorers.TorchScorer`
buckets); random (seeded) weights, fp32. Per configuration the multiply-adds per jet of each
stage (from the configuration and the multiplicities) are printed beside the measured peak of a
plain fp32 matmul on the same threads, so each stage's share of the arithmetic limit shows.

    .venv/bin/python benchmarks/profile_scoring.py [--jets 512] [--batch-sizes 1 8 32 64 128 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
# the same jets, FLOP counts and matmul peak as the throughput rows
from bench_scoring import DEFAULT_PARQUET, matmul_peak, multiply_adds, reference_table

from sophon.export import export_onnx
from sophon.features import RaggedInputs, ragged_inputs
from sophon.model import SophonModel, randomize_weights_
from sophon.training import TRAINING_CONFIGS

STAGES = ("inputs: pad a batch", "particle embedding", "pair features + embedding",
          "particle blocks", "class blocks", "head")
_MODULE_STAGES = (("pair_embed", "pair features + embedding"), ("cls_blocks", "class blocks"),
                  ("blocks", "particle blocks"), ("embed", "particle embedding"),
                  ("fc", "head"), ("norm", "head"))


def batches(ragged: RaggedInputs, batch_size: int) -> list[np.ndarray]:
    """Jet indices of each batch: sorted by multiplicity, ``batch_size`` at a time."""
    order = np.argsort(ragged.multiplicity, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


class StageClock:
    """Forward hooks on the model's stage modules adding each call's wall time to its stage;
    :meth:`remove` takes them off again (a later clock on the same model must time alone)."""

    def __init__(self, model: SophonModel):
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[int, float] = {}
        self._handles = []
        mod = model.mod
        modules = [(mod.embed, "particle embedding"), (mod.pair_embed, "pair features + embedding"),
                   (mod.norm, "head"), (mod.fc, "head")]
        modules += [(block, "particle blocks") for block in mod.blocks]
        modules += [(block, "class blocks") for block in mod.cls_blocks]
        for module, stage in modules:
            self._handles.append(module.register_forward_pre_hook(self._start))
            self._handles.append(module.register_forward_hook(
                lambda m, i, o, stage=stage: self._stop(m, stage)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _start(self, module, inputs) -> None:
        self._started[id(module)] = time.perf_counter()

    def _stop(self, module, stage: str) -> None:
        self.seconds[stage] += time.perf_counter() - self._started.pop(id(module))


def torch_profile(model: SophonModel, ragged: RaggedInputs, batch_size: int) -> dict[str, float]:
    """Seconds per jet of each stage, and of the whole pass ("total"), at ``batch_size``."""
    clock = StageClock(model)
    total = 0.0
    try:
        with torch.inference_mode():
            for jets in batches(ragged, batch_size):
                start = time.perf_counter()
                inputs = ragged.padded(jets, int(ragged.multiplicity[jets].max()))
                padded = time.perf_counter()
                model(torch.from_numpy(inputs.pf_features), torch.from_numpy(inputs.pf_vectors),
                      torch.from_numpy(inputs.pf_mask))
                total += time.perf_counter() - start
                clock.seconds["inputs: pad a batch"] += padded - start
    finally:
        clock.remove()
    n_jets = len(ragged)
    result = {stage: clock.seconds[stage] / n_jets for stage in STAGES}
    result["total"] = total / n_jets
    return result


def onnx_profile(path: Path, ragged: RaggedInputs, batch_size: int, threads: int
                 ) -> dict[str, float]:
    """Seconds per jet of each stage from onnxruntime's profiler, and of the whole pass."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix("")) + f"-{batch_size}"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    stages: dict[str, float] = defaultdict(float)
    total = 0.0
    for jets in batches(ragged, batch_size):
        start = time.perf_counter()
        inputs = ragged.padded(jets, int(ragged.multiplicity[jets].max()))
        padded = time.perf_counter()
        session.run(None, inputs.as_dict())
        total += time.perf_counter() - start
        stages["inputs: pad a batch"] += padded - start
    trace = json.loads(Path(session.end_profiling()).read_text())
    kernels = sorted((event for event in trace if event.get("cat") == "Node"
                      and event["name"].endswith("_kernel_time")), key=lambda event: event["ts"])
    stage = "other"
    for event in kernels:
        name = event["name"]
        if name.startswith("/"):  # the exporter's module path
            stage = next((label for key, label in _MODULE_STAGES if f"/{key}" in name), "other")
        # else a node onnxruntime made by fusing (``Gelu_token_12``): it runs where the nodes it
        # replaced ran, so it belongs to the stage of the node before it
        stages[stage] += event["dur"] * 1e-6
    n_jets = len(ragged)
    result = {stage: stages[stage] / n_jets for stage in STAGES + ("other",)}
    result["total"] = total / n_jets
    return result


def table(title: str, rows: dict[int, dict[str, float]], flops: dict[str, float] | None,
          peak: float) -> None:
    stages = [stage for stage in STAGES + ("other",) if any(stage in r for r in rows.values())]
    print(f"\n{title}: microseconds per jet (share of the pass)")
    print(f"  {'stage':28s}" + "".join(f"{f'batch {size}':>18s}" for size in rows))
    for stage in stages + ["total"]:
        cells = []
        for profile in rows.values():
            value = profile.get(stage, 0.0)
            share = f" ({value / profile['total']:4.0%})" if stage != "total" else ""
            cells.append(f"{value * 1e6:11.0f}{share:>7s}")
        print(f"  {stage:28s}" + "".join(f"{cell:>18s}" for cell in cells))
    print(f"  {'jets/s':28s}" + "".join(f"{1 / p['total']:18,.0f}" for p in rows.values()))
    if flops:
        best = min(rows.values(), key=lambda p: p["total"])
        print(f"  arithmetic at the best batch size, against a plain matmul's {peak:.0f} GFLOP/s:")
        for stage, macs in flops.items():
            seconds = best.get(stage, 0.0)
            rate = 2 * macs / seconds / 1e9 if seconds else float("nan")
            print(f"    {stage:28s} {2 * macs / 1e6:8.1f} MFLOP/jet  {rate:6.1f} GFLOP/s "
                  f"({rate / peak:4.0%} of the matmul)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parquet", type=Path, default=DEFAULT_PARQUET, help="JetClass-II jets")
    parser.add_argument("--jets", type=int, default=512, help="jets (tiled from the file)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--configs", nargs="+", default=["full", "small"],
                        choices=["full", "small"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.parquet.is_file():
        raise SystemExit(f"{args.parquet}: the JetClass-II reference jets are not here")
    torch.set_num_threads(args.threads)
    source = reference_table(args.parquet, args.jets, min_particles=0)
    start = time.perf_counter()
    ragged = ragged_inputs(source)
    features = (time.perf_counter() - start) / len(ragged)
    peak = matmul_peak(args.threads)
    print(f"{len(ragged)} jets, {ragged.multiplicity.mean():.1f} particles on average (max "
          f"{ragged.multiplicity.max()}), {args.threads} threads; model inputs from the columns "
          f"{features * 1e6:.0f} us/jet (once per file); plain fp32 matmul {peak:.0f} GFLOP/s")
    for name in args.configs:
        model = SophonModel(TRAINING_CONFIGS["small"] if name == "small" else None)
        model = randomize_weights_(model, seed=args.seed).eval()
        flops = multiply_adds(model.config, ragged.multiplicity)
        torch_rows = {size: torch_profile(model, ragged, size) for size in args.batch_sizes}
        table(f"{name}, torch eager fp32", torch_rows, flops, peak)
        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(model, Path(folder) / "sophon.onnx")
            onnx_rows = {size: onnx_profile(path, ragged, size, args.threads)
                         for size in args.batch_sizes}
        table(f"{name}, onnxruntime (all graph optimisations)", onnx_rows, flops, peak)


if __name__ == "__main__":
    main()
