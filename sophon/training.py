"""Train the Sophon architecture on generated JetClass-II-format jets (``sophon train``).

The recipe follows the published one where it matters (arXiv:2405.12972 appendix B.1):

- selection 200 < jet_pt < 2500 GeV and 20 < jet_sdmass < 500 GeV;
- each epoch samples jets with weights that flatten the (jet_pt, jet_sdmass) distribution within
  each of the 30 reweighting groups and give every group present the same total weight;
- cross-entropy over the 188 classes, batches of 512, RAdam(beta1=0.95, beta2=0.999, eps=1e-5) at
  5e-4, constant for 70% of the steps then exponential decay to 1%; bf16 autocast (default on
  CUDA, ``--precision bf16`` on CPUs with bf16 instructions);
- the checkpoint with the best validation accuracy is kept, in the published ``mod.*`` layout.

Batches are bucketed by constituent multiplicity: each epoch's sampled jets are sorted by
multiplicity, cut into batches, and the batch order shuffled, so a batch is padded only to about
its own jets' length (rounded up to a multiple of 16 so that the CPU kernels see few shapes).

Named configurations (one per size, all with the 128-d latent the store and the app expect):
``sophon`` (the published one, 2,304,688 parameters), ``compact`` (3 narrower blocks) and
``small`` (3 blocks of width 128 with 2x feed-forward and no attention dropout, which is a third
of the CPU step time; the embedded default model, trainable on two CPU cores in under an hour).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from sophon.atomic import atomic_output
from sophon.features import REQUIRED_COLUMNS, RaggedInputs, ragged_inputs
from sophon.labels import CONTENTS, N_CLASSES, REWEIGHT_GROUPS, index_of
from sophon.model import SophonConfig, SophonModel, count_parameters, save_checkpoint, sophon_config
from sophon.scoring import resolve_device, resolve_precision

__all__ = ["TRAINING_CONFIGS", "TrainingOptions", "TrainingSample", "load_training_sample",
           "flattening_weights", "bucketed", "train", "evaluate", "evaluate_model",
           "background_rejection", "register_cli"]

TRAINING_CONFIGS: dict[str, SophonConfig] = {
    "sophon": sophon_config(),
    "compact": sophon_config(embed_dims=(128, 256, 128), pair_embed_dims=(32, 32, 32),
                             num_layers=3, num_cls_layers=1, fc_params=((256, 0.1),)),
    "small": sophon_config(embed_dims=(64, 128), pair_embed_dims=(16, 16), num_layers=3,
                           num_cls_layers=1, fc_params=((256, 0.1),), ffn_ratio=2,
                           attn_dropout=0.0, activation_dropout=0.0),
}
PAD_MULTIPLE = 16  # batches are padded to a multiple of this many particles
PT_RANGE = (200.0, 2500.0)  # GeV
SDMASS_RANGE = (20.0, 500.0)  # GeV
_GROUP_NAMES = tuple(REWEIGHT_GROUPS)
_GROUP_OF_CLASS = np.array([_GROUP_NAMES.index(c.reweight_group) for c in CONTENTS])


@dataclass(frozen=True)
class TrainingOptions:
    config: str = "compact"
    epochs: int = 10
    samples_per_epoch: int = 100_000
    batch_size: int = 512
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    seed: int = 0


@dataclass
class TrainingSample:
    """Selected training jets: flat model inputs, labels (N,), and jet_pt, jet_sdmass (GeV)."""

    inputs: RaggedInputs
    labels: np.ndarray
    jet_pt: np.ndarray
    jet_sdmass: np.ndarray
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def load_training_sample(files: Sequence[str | os.PathLike]) -> TrainingSample:
    """Read JetClass-II-schema parquet files and apply the training selection."""
    columns = [*REQUIRED_COLUMNS, "jet_label", "jet_sdmass"]
    tables = []
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{file}: unreadable parquet file ({error})") from None
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{file}: missing column(s) {missing} needed for training")
        tables.append(pq.read_table(file, columns=list(dict.fromkeys(columns))))
    if not tables:
        raise ValueError("no training files given")
    table = pa.concat_tables(tables)
    pt = table["jet_pt"].to_numpy().astype(np.float64)
    sdmass = table["jet_sdmass"].to_numpy().astype(np.float64)
    labels = table["jet_label"].to_numpy().astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"jet_label outside 0..{N_CLASSES - 1} in {list(map(str, files))}")
    selected = ((pt > PT_RANGE[0]) & (pt < PT_RANGE[1]) & (sdmass > SDMASS_RANGE[0])
                & (sdmass < SDMASS_RANGE[1]))
    table = table.filter(pa.array(selected))
    if table.num_rows == 0:
        raise ValueError("no jet passes 200 < pT < 2500 GeV and 20 < mSD < 500 GeV")
    return TrainingSample(inputs=ragged_inputs(table), labels=labels[selected],
                          jet_pt=pt[selected], jet_sdmass=sdmass[selected],
                          sources=[str(f) for f in files])


def flattening_weights(labels: np.ndarray, jet_pt: np.ndarray, jet_sdmass: np.ndarray, *,
                       pt_bins: int = 10, sdmass_bins: int = 12) -> np.ndarray:
    """Per-jet sampling weights, (N,) float64 summing to 1: flat in (log pT, mSD) within each
    reweighting group, and equal total weight for every group present."""
    groups = _GROUP_OF_CLASS[labels]
    pt_edges = np.geomspace(*PT_RANGE, pt_bins + 1)
    sdmass_edges = np.linspace(*SDMASS_RANGE, sdmass_bins + 1)
    pt_bin = np.clip(np.searchsorted(pt_edges, jet_pt, side="right") - 1, 0, pt_bins - 1)
    sdmass_bin = np.clip(np.searchsorted(sdmass_edges, jet_sdmass, side="right") - 1, 0,
                         sdmass_bins - 1)
    cell = (groups * pt_bins + pt_bin) * sdmass_bins + sdmass_bin
    cell_counts = np.bincount(cell, minlength=len(_GROUP_NAMES) * pt_bins * sdmass_bins)
    weights = 1.0 / cell_counts[cell]
    group_totals = np.bincount(groups, weights=weights, minlength=len(_GROUP_NAMES))
    weights = weights / group_totals[groups]
    return weights / weights.sum()


def bucketed(jets: np.ndarray, multiplicity: np.ndarray, batch_size: int,
             rng: np.random.Generator) -> list[np.ndarray]:
    """``jets`` cut into batches of similar constituent multiplicity, in random batch order."""
    ordered = jets[np.argsort(multiplicity[jets], kind="stable")]
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batches(sample: TrainingSample, batches: Sequence[np.ndarray], device: torch.device):
    """(features, vectors, mask, labels) per batch, padded only to about the batch's longest jet."""
    for chosen in batches:
        longest = max(int(sample.inputs.multiplicity[chosen].max(initial=1)), 1)
        length = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, 128)
        padded = sample.inputs.padded(chosen, length=max(length, longest))
        yield (torch.from_numpy(padded.pf_features).to(device),
               torch.from_numpy(padded.pf_vectors).to(device),
               torch.from_numpy(padded.pf_mask).to(device),
               torch.from_numpy(sample.labels[chosen]).to(device))


@torch.no_grad()
def evaluate(model: SophonModel, sample: TrainingSample, jets: np.ndarray, *,
             batch_size: int = 1024, device: torch.device | str = "cpu",
             precision: torch.dtype | None = None) -> np.ndarray:
    """Probabilities (len(jets), 188) of ``model`` on the jets ``jets`` of ``sample``.

    Jets are scored in multiplicity order (little padding) and returned in the order given.
    ``precision``: autocast dtype (default bf16 on CUDA, fp32 elsewhere)."""
    device = torch.device(device)
    precision = precision or resolve_precision("auto", device)
    model.eval()
    order = np.argsort(sample.inputs.multiplicity[jets], kind="stable")
    ordered = np.asarray(jets)[order]
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    outputs = []
    for features, vectors, mask, _ in _batches(sample, batches, device):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            probabilities, _ = model(features, vectors, mask)
        outputs.append(probabilities.float().cpu().numpy())
    if not outputs:
        return np.zeros((0, N_CLASSES), np.float32)
    result = np.empty((len(ordered), N_CLASSES), np.float32)
    result[order] = np.concatenate(outputs)
    return result


def _group_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    result = {"all classes": float((predicted == labels).mean())}
    kinds = {"two_prong": lambda c: c.resonant and c.prongs == 2,
             "three_four_prong": lambda c: c.resonant and c.prongs > 2,
             "QCD": lambda c: not c.resonant}
    for name, predicate in kinds.items():
        members = np.array([predicate(CONTENTS[label]) for label in range(N_CLASSES)])[labels]
        if members.any():
            result[name] = float((predicted[members] == labels[members]).mean())
    # the coarser question: is the jet put into its right reweighting group
    result["reweighting group"] = float((_GROUP_OF_CLASS[predicted] == _GROUP_OF_CLASS[labels]).mean())
    return result


def train(sample: TrainingSample, output: str | os.PathLike,
          options: TrainingOptions = TrainingOptions(), *, log=print) -> dict:
    """Train, keep the best-validation checkpoint at ``output`` and a JSON summary beside it."""
    output = Path(output)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = resolve_device(options.device)
    if device.type == "cpu":
        torch.set_num_threads(max(os.cpu_count() or 1, 1))
    order = rng.permutation(len(sample))
    n_validation = max(int(len(sample) * options.validation_fraction), 1)
    validation, training = np.sort(order[:n_validation]), order[n_validation:]
    if len(training) == 0:
        raise ValueError(f"only {len(sample)} jets: nothing left to train on after validation")
    weights = flattening_weights(sample.labels[training], sample.jet_pt[training],
                                 sample.jet_sdmass[training])
    config = TRAINING_CONFIGS[options.config]
    precision = resolve_precision(options.precision, device)
    model = SophonModel(config).to(device)
    optimizer = torch.optim.RAdam(model.parameters(), lr=options.learning_rate,
                                  betas=(0.95, 0.999), eps=1e-5)
    steps_per_epoch = math.ceil(options.samples_per_epoch / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    flat_steps = int(0.7 * total_steps)
    decay = math.log(0.01) / max(total_steps - flat_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < flat_steps else math.exp(decay * (step - flat_steps)))
    history, best_accuracy = [], -1.0
    log(f"training {options.config} ({count_parameters(model):,} parameters) on {len(training)} "
        f"jets, validating on {len(validation)}, device {device}")
    for epoch in range(options.epochs):
        model.train()
        start = time.perf_counter()
        chosen = training[rng.choice(len(training), options.samples_per_epoch, p=weights)]
        batches = bucketed(chosen, sample.inputs.multiplicity, options.batch_size, rng)
        total_loss, n_batches = 0.0, 0
        for features, vectors, mask, labels in _batches(sample, batches, device):
            with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
                logits, _ = model.logits_and_latent(features, vectors, mask)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
            n_batches += 1
        seconds = time.perf_counter() - start
        probabilities = evaluate(model, sample, validation, device=device, precision=precision)
        accuracy = _group_accuracy(probabilities, sample.labels[validation])
        record = {"epoch": epoch + 1, "loss": total_loss / max(n_batches, 1),
                  "validation_accuracy": accuracy, "seconds": seconds,
                  "jets_per_second": options.samples_per_epoch / seconds}
        history.append(record)
        log(f"epoch {epoch + 1}: loss {record['loss']:.3f}, validation accuracy "
            f"{accuracy['all classes']:.3f} (group {accuracy['reweighting group']:.3f}), "
            f"{record['jets_per_second']:.0f} jets/s")
        if accuracy["all classes"] > best_accuracy:
            best_accuracy = accuracy["all classes"]
            save_checkpoint(model.cpu(), output)
            model.to(device)
        # the summary is rewritten every epoch, so an interrupted run still documents its best
        summary = {"options": asdict(options), "config": config.to_dict(),
                   "parameters": count_parameters(model), "training_jets": int(len(training)),
                   "validation_jets": int(len(validation)), "sources": sample.sources,
                   "best_validation_accuracy": best_accuracy, "history": history}
        with atomic_output(output.with_suffix(".json")) as temporary:
            temporary.write_text(json.dumps(summary, indent=1))
    return summary


def background_rejection(signal: np.ndarray, background: np.ndarray,
                         signal_efficiency: float) -> float:
    """1 / (background efficiency) at the cut on a discriminant that keeps ``signal_efficiency``
    of the ``signal`` values (jets pass with value >= cut); inf when no background passes."""
    if len(signal) == 0 or len(background) == 0:
        return float("nan")
    cut = np.quantile(signal, 1.0 - signal_efficiency, method="higher")
    passing = float(np.mean(background >= cut))
    return float("inf") if passing == 0 else 1.0 / passing


def evaluate_model(checkpoint: str | os.PathLike, files: Sequence[str | os.PathLike], *,
                   device: str = "auto", precision: str = "auto") -> dict:
    """Model-card figures on labelled jets (after the training selection): accuracy over the 188
    classes, per class kind and per reweighting group, and the X->bb vs QCD background rejection
    at 60 % and 30 % signal efficiency (discriminant g_Xbb / (g_Xbb + sum of the 27 QCD g))."""
    from sophon.discriminant import PRESETS
    from sophon.model import load_checkpoint

    sample = load_training_sample(files)
    torch_device = resolve_device(device)
    model = load_checkpoint(checkpoint).to(torch_device)
    probabilities = evaluate(model, sample, np.arange(len(sample)), device=torch_device,
                             precision=resolve_precision(precision, torch_device))
    discriminant = PRESETS["X->bb vs QCD"].evaluate(probabilities)
    is_qcd = np.array([not c.resonant for c in CONTENTS])[sample.labels]
    is_xbb = sample.labels == index_of("X_bb")
    return {"checkpoint": str(checkpoint), "jets": int(len(sample)),
            "accuracy": _group_accuracy(probabilities, sample.labels),
            "xbb_vs_qcd_rejection": {
                f"{int(100 * eff)}% signal efficiency": background_rejection(
                    discriminant[is_xbb], discriminant[is_qcd], eff) for eff in (0.6, 0.3)},
            "xbb_jets": int(is_xbb.sum()), "qcd_jets": int(is_qcd.sum())}


def _main(args: argparse.Namespace) -> int:
    options = TrainingOptions(config=args.config, epochs=args.epochs,
                              samples_per_epoch=args.samples_per_epoch,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              validation_fraction=args.validation_fraction, device=args.device,
                              precision=args.precision, seed=args.seed)
    summary = train(load_training_sample(args.inputs), args.output, options)
    print(f"best validation accuracy {summary['best_validation_accuracy']:.3f}; "
          f"checkpoint {args.output}")
    return 0


def _evaluate_main(args: argparse.Namespace) -> int:
    figures = evaluate_model(args.model, args.inputs, device=args.device, precision=args.precision)
    text = json.dumps(figures, indent=1)
    if args.output:
        with atomic_output(args.output) as temporary:
            temporary.write_text(text)
    print(text)
    return 0


def register_cli(subparsers) -> None:
    evaluation = subparsers.add_parser(
        "evaluate", help="model-card figures of a checkpoint on labelled (training-format) jets")
    evaluation.add_argument("model", type=Path, help="checkpoint (.pt)")
    evaluation.add_argument("inputs", nargs="+", type=Path, help="JetClass-II-schema parquet files")
    evaluation.add_argument("-o", "--output", type=Path, default=None, help="write the JSON here")
    evaluation.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluation.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    evaluation.set_defaults(handler=_evaluate_main)
    parser = subparsers.add_parser("train", help="train the Sophon architecture on generated jets")
    parser.add_argument("inputs", nargs="+", type=Path, help="JetClass-II-schema parquet files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="checkpoint (.pt)")
    parser.add_argument("--config", choices=sorted(TRAINING_CONFIGS), default="compact")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples-per-epoch", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="autocast precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_main)
