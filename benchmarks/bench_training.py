"""Training throughput: the training step of an earlier commit against today's, side by side.

Both run on the same jets (JetClass-II-schema parquet files given with ``--data``, default the 100
reference jets tiled), the same configuration, batch size and precision, in interleaved rounds
(best round kept, so load from other work hits both alike):

- ``baseline``: the model and training step as they were at ``--baseline`` (default 8b06cd4, the
  commit before the recipe rework), read with ``git show``: BatchNorm batch statistics over every
  slot, the pair embedding through its module path, batches padded synchronously;
- ``ours``: :mod:`sophon.training` as it trains after its BatchNorm warm-up: frozen statistics
  (the pair embedding's BatchNorms folded into its 1x1 convolutions, one matrix product per
  layer), batches prepared by a background thread while the step runs; optionally with
  ``--compile`` (torch.compile of forward and loss).

Also printed: the plain matmul rate of these cores (fp32 and bf16) for scale.

    .venv/bin/python benchmarks/bench_training.py --data build/pilot/*.parquet --steps 12
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sophon import training
from sophon.model import SophonModel, freeze_batch_norms
from sophon.scoring import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "JetClassII_example.parquet"


def baseline_model_class(commit: str):
    """``SophonModel`` as it was at ``commit`` (sophon/model.py read from git)."""
    source = subprocess.run(["git", "show", f"{commit}:sophon/model.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_model.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_model"] = module
    spec.loader.exec_module(module)
    return module.SophonModel


def matmul_rate(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def plan(sample, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    jets = rng.choice(len(sample), size=batch_size * steps * 2, replace=True)
    return training.bucketed(jets, sample.inputs.multiplicity, batch_size, rng,
                             drop_last=True)[:steps]


def baseline_steps(model, optimizer, sample, batches, precision) -> float:
    """The earlier loop: pad, forward with batch statistics, backward, step; seconds taken."""
    model.train()
    start = time.perf_counter()
    for chosen in batches:
        features, vectors, mask, labels = training._batch_tensors(sample, chosen)
        with torch.autocast("cpu", dtype=precision, enabled=precision != torch.float32):
            logits, _ = model.logits_and_latent(features, vectors, mask)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def our_steps(step, sample, batches) -> float:
    start = time.perf_counter()
    for features, vectors, mask, labels in training._prefetched(
            lambda b: training._batch_tensors(sample, b), batches):
        step(features, vectors, mask, labels)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="*", type=Path, default=[REFERENCE])
    parser.add_argument("--config", default="small", choices=sorted(training.TRAINING_CONFIGS))
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--baseline", default="8b06cd4")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = torch.bfloat16 if args.precision == "bf16" else torch.float32
    sample = training.load_training_sample(args.data)
    multiplicity = sample.inputs.multiplicity
    print(f"{len(sample)} jets, mean multiplicity {multiplicity.mean():.1f}; config "
          f"{args.config}, batch {args.batch_size}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    bf16 = (f"bf16 {matmul_rate(torch.bfloat16):.0f} GFLOP/s" if cpu_has_bf16()
            else "bf16 emulated (no AVX512-BF16/AMX on this CPU)")
    print(f"plain 1024^3 matmul: fp32 {matmul_rate(torch.float32):.0f} GFLOP/s, {bf16}",
          flush=True)
    config = training.TRAINING_CONFIGS[args.config]

    torch.manual_seed(0)
    baseline = baseline_model_class(args.baseline)(config)
    baseline_optimizer = torch.optim.RAdam(baseline.parameters(), lr=1e-4)
    torch.manual_seed(0)
    ours = SophonModel(config)
    options = training.TrainingOptions(config=args.config, batch_size=args.batch_size,
                                       precision=args.precision, compile=args.compile,
                                       device="cpu", epochs=1, samples_per_epoch=args.batch_size)
    run = training._Run(options, sample, torch.device("cpu"))
    run.model = ours
    run.optimizer = torch.optim.RAdam(ours.parameters(), lr=1e-4)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
    ours.train()
    freeze_batch_norms(ours)
    step = training._step_function(run, precision, torch.device("cpu"))

    warm = plan(sample, args.batch_size, 2, seed=99)
    baseline_steps(baseline, baseline_optimizer, sample, warm, precision)
    our_steps(step, sample, warm)
    if args.compile:  # compile every padded length once before timing
        lengths = {training._padded_length(int(multiplicity[b].max())): b
                   for b in plan(sample, args.batch_size, 200, seed=98)}
        our_steps(step, sample, list(lengths.values()))
    best = {"baseline": float("inf"), "ours": float("inf")}
    for round_ in range(args.rounds):
        batches = plan(sample, args.batch_size, args.steps, seed=round_)
        best["baseline"] = min(best["baseline"], baseline_steps(baseline, baseline_optimizer,
                                                                sample, batches, precision))
        best["ours"] = min(best["ours"], our_steps(step, sample, batches))
    jets = args.batch_size * args.steps
    for name, seconds in best.items():
        print(f"{name:>9}: {jets / seconds:7.0f} jets/s  ({seconds / args.steps * 1e3:.0f} ms/step)",
              flush=True)
    print(f"ratio ours / baseline: {best['baseline'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
