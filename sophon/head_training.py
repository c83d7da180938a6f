"""Fine-tune a checkpoint's head on its frozen latents (``sophon train-head``).

A dataset of this project stores each jet's 128-d latent and recomputes its 188 scores as the
head applied to it (:func:`sophon.model.head_probabilities`), so a checkpoint whose backbone is
unchanged and whose head is retrained rescores such a dataset exactly, with no jet regenerated or
rescored through the transformer. Training only the head (two linear layers, 81 k parameters in the
``small`` configuration) on latents computed once costs seconds an epoch on two CPU cores, where an
epoch of the whole model costs most of an hour: so the head can see every jet of a large sample
many times, with a learning rate that decays to its end, which the whole model's training could
not afford here.

Recipe, as :mod:`sophon.training` except where said: the published selection, class weights and
flat (pT, mSD) reweighting (:func:`sophon.training.acceptance`), each epoch drawing each jet at
most once; cross-entropy over the 188 classes; RAdam (0.95, 0.999, eps 1e-5); the learning rate
decays exponentially from its start to 1 % over the whole training (the head starts from the
checkpoint's own, already trained); after every epoch the held-out jets' loss, under the same draw
weights, picks the best head, and the starting head is measured the same way first, so the result
is never worse than the input on that measure. The QCD rejections of A1, A2 and A3 are recorded
too, but not used to choose: at 60 % signal efficiency they rest on 10-60 passing QCD jets of the
held-out tenth, and their noise (a third for A2) would pick a lucky epoch, not a better head.

Two options go beyond the published recipe. ``tail_weight`` adds the tracked presets' own
signal-vs-QCD binary cross-entropy (:func:`sophon.training.preset_tail_terms`) to the loss, and
the held-out objective that chooses the head is then that sum; ``with_new_head`` (``--head-widths``)
replaces the checkpoint's head by a fresh one of other widths over the same backbone, trained
from scratch on the same latents.

The latents are computed as ``sophon score`` computes a dataset's (:func:`sophon.scorers.
load_scorer`: on the CPU the checkpoint's exported graph in onnxruntime) and cached per input file
(``--cache``; keyed by the file's path, size and modification time and the checkpoint's sha256),
so a run that is stopped resumes without recomputing them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sophon.atomic import atomic_output
from sophon.model import SophonModel, head_probabilities, load_checkpoint, save_checkpoint
from sophon.scorers import Scorer, load_scorer
from sophon.training import (REWEIGHT_PERCENTILE, acceptance, epoch_jets, load_training_sample,
                             preset_tail_terms, validation_record, validation_split)

__all__ = ["HeadTrainingOptions", "LatentSample", "frozen_latents", "with_new_head", "train_head",
           "register_cli"]


@dataclass(frozen=True)
class HeadTrainingOptions:
    epochs: int = 40
    samples_per_epoch: int = 300_000  # expected jets drawn per epoch
    batch_size: int = 1024
    learning_rate: float = 3e-4  # at the start; decays to 1 % of it by the end
    validation_fraction: float = 0.1
    max_draws_per_jet: float = 20.0  # expected draws of any one jet over the whole training
    reweight_percentile: float = REWEIGHT_PERCENTILE
    tail_weight: float = 0.0  # weight of the presets' binary loss beside the cross-entropy
    tail_focus: float = 0.0  # its QCD terms weighted by D^tail_focus
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "samples_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), not "
                             f"{self.validation_fraction}")
        if not (self.learning_rate >= 0 and self.max_draws_per_jet > 0):
            raise ValueError(f"learning_rate must be >= 0 and max_draws_per_jet > 0, not "
                             f"{self.learning_rate} and {self.max_draws_per_jet}")
        if not (self.tail_weight >= 0 and self.tail_focus >= 0):
            raise ValueError(f"tail_weight and tail_focus must be >= 0, not {self.tail_weight} "
                             f"and {self.tail_focus}")


@dataclass
class LatentSample:
    """Selected labelled jets as the frozen backbone sees them: latents (N, embed_dim) float32,
    labels (N,), jet_pt and jet_sdmass (N,) in GeV."""

    latents: np.ndarray
    labels: np.ndarray
    jet_pt: np.ndarray
    jet_sdmass: np.ndarray
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _file_key(file: Path, model_id: str) -> str:
    stat = file.stat()
    text = json.dumps([str(file.resolve()), stat.st_size, stat.st_mtime_ns, model_id])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def frozen_latents(scorer: Scorer, files: Sequence[str | os.PathLike], *,
                   cache: str | os.PathLike | None = None, log=print) -> LatentSample:
    """The latents that ``scorer`` (:func:`sophon.scorers.load_scorer` of the checkpoint, the
    way ``sophon score`` computes a dataset's latents) gives the selected jets of labelled
    JetClass-II-schema ``files``.

    With ``cache``, each file's arrays are kept there as one ``.npz`` named by the file's path,
    size and modification time and the scorer's ``model_id`` (which holds the checkpoint's
    sha256), and read back on later calls."""
    if not files:
        raise ValueError("no training files given")
    parts = []
    for file in map(Path, files):
        key = _file_key(file, scorer.model_id)
        target = None if cache is None else Path(cache) / f"{key}.npz"
        if target is not None and target.exists():
            with np.load(target) as stored:
                parts.append({name: stored[name] for name in stored.files})
            continue
        started = time.perf_counter()
        sample = load_training_sample([file], feature_dtype=np.float32)  # as sophon score reads
        _, latents = scorer.score_ragged(sample.inputs)
        part = {"latents": latents, "labels": sample.labels, "jet_pt": sample.jet_pt,
                "jet_sdmass": sample.jet_sdmass}
        log(f"{file}: {len(sample):,} jets' latents in {time.perf_counter() - started:.0f} s")
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(target) as temporary:
                with open(temporary, "wb") as handle:
                    np.savez(handle, **part)
        parts.append(part)
    return LatentSample(**{name: np.concatenate([p[name] for p in parts])
                           for name in ("latents", "labels", "jet_pt", "jet_sdmass")},
                        sources=[str(f) for f in files])


def with_new_head(model: SophonModel, widths: Sequence[int], *, seed: int = 0) -> SophonModel:
    """A copy of ``model`` with a freshly initialised head of hidden ``widths`` (each a Linear,
    ReLU and dropout 0.1, as the published head's one layer of 512) and the same backbone,
    weights copied: a wider head than the checkpoint's for :func:`train_head` to train from
    scratch on the latents, which it reads unchanged."""
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"head widths must be positive integers, not {list(widths)}")
    config = replace(model.config, fc_params=tuple((int(w), 0.1) for w in widths))
    torch.manual_seed(seed)
    fresh = SophonModel(config)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("mod.fc.")}
    missing, unexpected = fresh.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith("mod.fc.") for k in missing)
    return fresh


def train_head(model: SophonModel, sample: LatentSample, output: str | os.PathLike,
               options: HeadTrainingOptions = HeadTrainingOptions(), *, log=print) -> dict:
    """Retrain ``model``'s head (``model.mod.fc``, in place) on ``sample``; the best head by the
    validation objective (the loss, with ``tail_weight`` plus the presets' terms), with the
    backbone unchanged, is saved at ``output`` (published checkpoint layout) and the history
    beside it (``.json``). Returns that summary."""
    output = Path(output)
    torch.manual_seed(options.seed)
    validation, training = validation_split(len(sample), options.validation_fraction, options.seed)
    if len(training) == 0:
        raise ValueError(f"only {len(sample)} jets: nothing left to train on after validation")
    cap = min(1.0, options.max_draws_per_jet / max(options.epochs, 1))

    def draw_probabilities(jets: np.ndarray) -> np.ndarray:
        return acceptance(sample.labels[jets], sample.jet_pt[jets], sample.jet_sdmass[jets],
                          options.samples_per_epoch, cap=cap,
                          percentile=options.reweight_percentile)

    draw, validation_weights = draw_probabilities(training), draw_probabilities(validation)
    latents, labels = torch.from_numpy(sample.latents), torch.from_numpy(sample.labels)
    validation_tensor = torch.from_numpy(validation)
    head = model.mod.fc
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.RAdam(head.parameters(), lr=options.learning_rate,
                                  betas=(0.95, 0.999), eps=1e-5)
    total_steps = max(options.epochs * int(draw.sum()) // options.batch_size, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: math.exp(math.log(0.01) * min(step, total_steps) / total_steps))

    def objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each jet's loss, (B,): the cross-entropy, plus the presets' binary terms when
        ``tail_weight`` > 0."""
        loss = F.cross_entropy(logits, targets, reduction="none")
        if options.tail_weight:
            loss = loss + options.tail_weight * preset_tail_terms(logits, targets,
                                                                  focus=options.tail_focus)
        return loss

    def validate(epoch: int, loss: float) -> dict:
        # head_probabilities puts the head in eval mode (no dropout); each epoch sets train()
        probabilities = head_probabilities(model, sample.latents[validation])
        record = {"epoch": epoch, "loss": loss,
                  **validation_record(probabilities, sample.labels[validation],
                                       validation_weights),
                  "learning_rate": scheduler.get_last_lr()[0]}
        if options.tail_weight:
            # the objective trained on, under the same draw weights, is what chooses the head
            with torch.no_grad():
                terms = objective(head(latents[validation_tensor]), labels[validation_tensor])
            record["validation_objective"] = float(
                (terms.numpy() * validation_weights).sum() / validation_weights.sum())
        else:
            record["validation_objective"] = record["validation_loss"]
        rejections = ", ".join(f"{name.split(':')[0]} {entry['60%']['rejection']:.0f}"
                               for name, entry in record["tagging"].items())
        log(f"epoch {epoch}: loss {loss:.4f} (validation {record['validation_loss']:.4f}), "
            f"QCD rejection at 60 %: {rejections}, score {record['selection_score']:.1f}")
        return record

    history = [validate(0, float("nan"))]
    best = history[0]["validation_objective"]
    save_checkpoint(model, output)
    for epoch in range(1, options.epochs + 1):
        rng = np.random.default_rng([options.seed, epoch, 2])
        chosen = training[epoch_jets(draw, options.seed, epoch)]
        chosen = torch.from_numpy(chosen[rng.permutation(len(chosen))])
        head.train()
        total, batches = 0.0, 0
        for batch in chosen.split(options.batch_size):
            loss = objective(head(latents[batch]), labels[batch]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, batches = total + float(loss.detach()), batches + 1
        record = validate(epoch, total / max(batches, 1))
        if record["validation_objective"] < best:
            best = record["validation_objective"]
            record["best"] = True
            save_checkpoint(model, output)
        history.append(record)
    history[0]["best"] = not any(r.get("best") for r in history[1:])
    summary = {"kind": "head fine-tune on frozen latents", "options": asdict(options),
               "training_jets": int(len(training)), "validation_jets": int(len(validation)),
               "expected_draws_per_epoch": float(draw.sum()), "sources": sample.sources,
               "best_epoch": next(r["epoch"] for r in reversed(history) if r.get("best")),
               "history": history}
    with atomic_output(output.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(summary, indent=1))
    return summary


def _main(args: argparse.Namespace) -> int:
    options = HeadTrainingOptions(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                                  validation_fraction=args.validation_fraction,
                                  max_draws_per_jet=args.max_draws_per_jet,
                                  tail_weight=args.tail_weight, tail_focus=args.tail_focus,
                                  seed=args.seed)
    scorer = load_scorer(args.model, device=args.device, precision="fp32")
    sample = frozen_latents(scorer, args.inputs, cache=args.cache)
    torch.set_num_threads(max(os.cpu_count() or 1, 1))  # as in sophon train: a CPU training
    model = load_checkpoint(args.model)
    if args.head_widths:
        model = with_new_head(model, args.head_widths, seed=args.seed)
    summary = train_head(model, sample, args.output, options)
    print(f"best epoch {summary['best_epoch']}; checkpoint {args.output}")
    return 0


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated widths, e.g. 512,256") from None
    if not widths or min(widths) < 1 or max(widths) > 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must lie in 1..4096")
    return widths


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-head", help="retrain a checkpoint's head on its frozen latents of labelled jets")
    parser.add_argument("model", type=Path, help="the checkpoint whose backbone stays (.pt)")
    parser.add_argument("inputs", nargs="+", type=Path, help="JetClass-II-schema parquet files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="checkpoint (.pt)")
    parser.add_argument("--epochs", type=int, default=HeadTrainingOptions.epochs)
    parser.add_argument("--samples-per-epoch", type=int,
                        default=HeadTrainingOptions.samples_per_epoch,
                        help="expected jets drawn per epoch (each jet at most once)")
    parser.add_argument("--batch-size", type=int, default=HeadTrainingOptions.batch_size)
    parser.add_argument("--learning-rate", type=float,
                        default=HeadTrainingOptions.learning_rate,
                        help="starting learning rate, decaying to 1 %% of it")
    parser.add_argument("--validation-fraction", type=float,
                        default=HeadTrainingOptions.validation_fraction)
    parser.add_argument("--max-draws-per-jet", type=float,
                        default=HeadTrainingOptions.max_draws_per_jet,
                        help="expected draws of any jet over the whole training")
    parser.add_argument("--tail-weight", type=float, default=HeadTrainingOptions.tail_weight,
                        help="weight of the presets' binary signal-vs-QCD loss beside the "
                             "cross-entropy (0: cross-entropy alone)")
    parser.add_argument("--tail-focus", type=float, default=HeadTrainingOptions.tail_focus,
                        help="weigh each QCD jet's binary term by D^focus (focal on QCD)")
    parser.add_argument("--head-widths", type=_widths, default=None, metavar="WIDTHS",
                        help="train a new head of these hidden widths from scratch instead of "
                             "the checkpoint's, e.g. 512 (the published head) or 512,256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the latents of each input (reused by later runs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.set_defaults(handler=_main)
