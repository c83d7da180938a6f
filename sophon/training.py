"""Train the Sophon architecture on generated JetClass-II-format jets (``sophon train``).

The recipe follows the published one (arXiv:2405.12972 appendix B.1 and the public data
configuration ``JetClassII_full.yaml``):

- selection 200 < jet_pt < 2500 GeV and 20 < jet_sdmass < 500 GeV;
- each epoch draws jets *without replacement* by rejection sampling, as weaver-core does: a jet is
  taken with probability p = (flattening factor of its (pT, mSD) cell within its reweighting group)
  x (the group's published class weight, :data:`CLASS_WEIGHTS`), scaled so that an epoch holds
  about ``samples_per_epoch`` jets; the flattening uses the published 14 pT bins and 48 mSD bins
  and caps the factor at 1 for the sparsest cells (weaver-core's ``reweight_threshold``; its 10th
  percentile suits 10^8 jets, on 2 M generated jets it would leave 99 % of the QCD jets unused,
  so the reference here is the 70th percentile of the cell counts, ``reweight_percentile``);
  p is also capped so that over the whole training no jet is expected more than
  ``max_draws_per_jet`` times. A group too small to fill its share is drawn whole each epoch;
- cross-entropy over the 188 classes, batches of 512 bucketed by multiplicity, RAdam(beta1 = 0.95,
  beta2 = 0.999, eps = 1e-5), constant for 70 % of the steps then exponential decay to 1 %; bf16
  autocast (default on CUDA, ``--precision bf16`` on CPUs with bf16 instructions);
- BatchNorm statistics are taken over real particles and pairs only (:func:`sophon.model.
  masked_batch_norm`) during the first ``batch_norm_warmup`` of the steps, then frozen, so that
  the rest of training computes exactly what evaluation computes;
- the checkpoint with the best validation tagging score (geometric mean of the QCD rejections of
  A1, A2 and A3 at 60 % signal efficiency, :func:`sophon.tagging.selection_score`) is kept, in the
  published ``mod.*`` layout. The softmax therefore carries the training priors of the class
  weights (QCD is about 14 % of the draws).

Training is resumable: a state file (model, optimizer, scheduler, position in the epoch, history)
is written atomically every ``checkpoint_minutes`` and at every epoch end; ``--resume STATE``
continues from it, and ``--max-minutes`` ends a run cleanly at a batch boundary. Each epoch's jets
and batch order derive from (seed, epoch) alone, so a resumed run sees exactly the jets the
uninterrupted one would have.

Named configurations (one per size, all with the 128-d latent the store and the app expect):
``sophon`` (the published one, 2,304,688 parameters), ``compact`` (3 narrower blocks) and
``small`` (3 blocks of width 128 with 2x feed-forward and no attention dropout, which is a third
of the CPU step time; the embedded default model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from sophon.atomic import atomic_output
from sophon.cli import report_json
from sophon.discriminant import PRESETS
from sophon.features import REQUIRED_COLUMNS, RaggedInputs, ragged_inputs
from sophon.labels import N_CLASSES, REWEIGHT_GROUP_OF_CLASS, REWEIGHT_GROUPS
from sophon.model import (SophonConfig, SophonModel, count_parameters, freeze_batch_norms,
                          load_checkpoint, load_checkpoint_file, save_checkpoint, sophon_config)
from sophon.scoring import resolve_device, resolve_precision
from sophon.tagging import (TAGGING_PRESETS, class_accuracies, selection_score,
                            tagging_figures)

__all__ = ["TRAINING_CONFIGS", "CLASS_WEIGHTS", "PT_EDGES", "SDMASS_EDGES", "TrainingOptions",
           "TrainingSample", "load_training_sample", "cached_training_sample", "flattening_factors", "acceptance",
           "epoch_jets", "bucketed", "validation_split", "validation_record", "train", "evaluate",
           "evaluate_with_latents", "evaluate_model", "preset_tail_terms", "register_cli"]

TRAINING_CONFIGS: dict[str, SophonConfig] = {
    "sophon": sophon_config(),
    "compact": sophon_config(embed_dims=(128, 256, 128), pair_embed_dims=(32, 32, 32),
                             num_layers=3, num_cls_layers=1, fc_params=((256, 0.1),)),
    "small": sophon_config(embed_dims=(64, 128), pair_embed_dims=(16, 16), num_layers=3,
                           num_cls_layers=1, fc_params=((256, 0.1),), ffn_ratio=2,
                           attn_dropout=0.0, activation_dropout=0.0),
}
#: The published class weights per reweighting group (``JetClassII_full.yaml``, ``weights:``).
CLASS_WEIGHTS: dict[str, float] = {
    "X_QQ": 0.4, "X_gg": 0.05, "X_ll": 0.08, "X_tauhtaul": 0.01, "X_tauhtauh": 0.015,
    "X_YY_QQQQ": 0.32, "X_YY_QQgg": 0.06, "X_YY_gggg": 0.0075, "X_YY_QQQ": 0.05,
    "X_YY_QQg": 0.005, "X_YY_Qgg": 0.005, "X_YY_ggg": 0.0015, "X_YY_QQll": 0.16,
    "X_YY_QQl": 0.01, "X_YY_Qll": 0.012, "X_YY_QQtauhtaul": 0.04, "X_YY_QQtauhtauh": 0.04,
    "X_YY_Qtauhtaul": 0.0018, "X_YY_Qtauhtauh": 0.0024, "X_YY_ggll": 0.04, "X_YY_ggl": 0.0025,
    "X_YY_gll": 0.003, "X_YY_ggtauhtaul": 0.01, "X_YY_ggtauhtauh": 0.01,
    "X_YY_gtauhtaul": 0.00045, "X_YY_gtauhtauh": 0.0006, "X_YY_QQlv": 0.08,
    "X_YY_QQtaulv": 0.015, "X_YY_QQtauhv": 0.05, "QCD": 0.25,
}
#: The published flattening bins: 14 in pT and 48 of 10 GeV in mSD (GeV).
PT_EDGES = np.array([200, 240, 287, 344, 412, 493, 590, 707, 847, 1014, 1215, 1455, 1743, 2087,
                     2500], dtype=np.float64)
SDMASS_EDGES = np.linspace(20.0, 500.0, 49)
PT_RANGE = (float(PT_EDGES[0]), float(PT_EDGES[-1]))  # GeV
SDMASS_RANGE = (float(SDMASS_EDGES[0]), float(SDMASS_EDGES[-1]))  # GeV
REWEIGHT_PERCENTILE = 70.0  # see the module docstring
PAD_MULTIPLE = 16  # batches are padded to a multiple of this many particles
_GROUP_NAMES = tuple(REWEIGHT_GROUPS)
_GROUP_WEIGHTS = np.array([CLASS_WEIGHTS[name] for name in _GROUP_NAMES])


@dataclass(frozen=True)
class TrainingOptions:
    config: str = "small"
    epochs: int = 10
    samples_per_epoch: int = 100_000
    batch_size: int = 512
    learning_rate: float = 1e-3
    validation_fraction: float = 0.05
    max_draws_per_jet: float = 3.0  # expected draws of any one jet over the whole training
    reweight_percentile: float = REWEIGHT_PERCENTILE  # flattening reference, percentile of cells
    batch_norm_warmup: float = 0.05  # share of the steps with batch statistics, then frozen
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the training step
    seed: int = 0
    init: str | None = None  # start from this checkpoint's weights (fine-tuning, annealing)
    tail_weight: float = 0.0  # weight of the presets' binary loss (preset_tail_terms)
    tail_focus: float = 0.0  # its QCD terms weighted by D^tail_focus


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


def _selected(pt: np.ndarray, sdmass: np.ndarray) -> np.ndarray:
    return ((pt > PT_RANGE[0]) & (pt < PT_RANGE[1]) & (sdmass > SDMASS_RANGE[0])
            & (sdmass < SDMASS_RANGE[1]))


def load_training_sample(files: Sequence[str | os.PathLike], *, rows_per_read: int = 50_000,
                         feature_dtype: type = np.float16) -> TrainingSample:
    """Read JetClass-II-schema parquet files and apply the training selection.

    Files are read ``rows_per_read`` jets at a time and their particle features kept as
    ``feature_dtype`` (float16 by default: the transformed features are O(1), and 2 M jets then
    fit in about 5 GB); four-vectors stay float32 because pair masses need the precision."""
    columns = list(dict.fromkeys([*REQUIRED_COLUMNS, "jet_label", "jet_sdmass"]))
    if not files:
        raise ValueError("no training files given")
    features, vectors, counts, labels, pts, masses = [], [], [], [], [], []
    for file in files:
        try:
            source = pq.ParquetFile(file)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{file}: unreadable parquet file ({error})") from None
        missing = [c for c in columns if c not in source.schema_arrow.names]
        if missing:
            raise ValueError(f"{file}: missing column(s) {missing} needed for training")
        for batch in source.iter_batches(batch_size=rows_per_read, columns=columns):
            pt = batch["jet_pt"].to_numpy().astype(np.float64)
            sdmass = batch["jet_sdmass"].to_numpy().astype(np.float64)
            label = batch["jet_label"].to_numpy().astype(np.int64)
            if len(label) and (label.min() < 0 or label.max() >= N_CLASSES):
                raise ValueError(f"{file}: jet_label outside 0..{N_CLASSES - 1}")
            keep = _selected(pt, sdmass)
            if not keep.any():
                continue
            ragged = ragged_inputs(batch.filter(pa.array(keep)), source_name=str(file))
            features.append(ragged.features.astype(feature_dtype))
            vectors.append(ragged.vectors)
            counts.append(ragged.multiplicity)
            labels.append(label[keep])
            pts.append(pt[keep])
            masses.append(sdmass[keep])
    if not labels:
        raise ValueError("no jet passes 200 < pT < 2500 GeV and 20 < mSD < 500 GeV")
    offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=offsets[1:])
    inputs = RaggedInputs(features=np.concatenate(features), vectors=np.concatenate(vectors),
                          offsets=offsets)
    return TrainingSample(inputs=inputs, labels=np.concatenate(labels), jet_pt=np.concatenate(pts),
                          jet_sdmass=np.concatenate(masses), sources=[str(f) for f in files])


_SAMPLE_ARRAYS = ("features", "vectors", "offsets", "labels", "jet_pt", "jet_sdmass")


def _source_stamp(files: Sequence[str | os.PathLike]) -> list[list]:
    return [[str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]


def cached_training_sample(files: Sequence[str | os.PathLike],
                           cache: str | os.PathLike | None) -> TrainingSample:
    """:func:`load_training_sample`, kept as .npy files in the folder ``cache`` and memory-mapped
    from there on later calls with the same files (same paths, sizes and modification times):
    reading 2 M jets' constituents takes minutes, a resumed training should not pay it again."""
    if cache is None:
        return load_training_sample(files)
    cache = Path(cache)
    stamp = _source_stamp(files)
    try:
        if json.loads((cache / "sources.json").read_text()) == stamp:
            arrays = {name: np.load(cache / f"{name}.npy", mmap_mode="r")
                      for name in _SAMPLE_ARRAYS}
            return TrainingSample(
                inputs=RaggedInputs(features=arrays["features"], vectors=arrays["vectors"],
                                    offsets=np.asarray(arrays["offsets"])),
                labels=np.asarray(arrays["labels"]), jet_pt=np.asarray(arrays["jet_pt"]),
                jet_sdmass=np.asarray(arrays["jet_sdmass"]), sources=[str(f) for f in files])
    except (OSError, ValueError):
        pass  # no cache yet, or an unreadable one: rebuild it
    sample = load_training_sample(files)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "sources.json").unlink(missing_ok=True)  # the arrays below are not valid until it is back
    arrays = {"features": sample.inputs.features, "vectors": sample.inputs.vectors,
              "offsets": sample.inputs.offsets, "labels": sample.labels,
              "jet_pt": sample.jet_pt, "jet_sdmass": sample.jet_sdmass}
    for name, array in arrays.items():
        with atomic_output(cache / f"{name}.npy") as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, array)
    with atomic_output(cache / "sources.json") as temporary:
        temporary.write_text(json.dumps(stamp))
    return sample


# --- which jets an epoch draws ------------------------------------------------------------------


def flattening_factors(labels: np.ndarray, jet_pt: np.ndarray, jet_sdmass: np.ndarray, *,
                       percentile: float = REWEIGHT_PERCENTILE) -> np.ndarray:
    """Per jet, (N,) in (0, 1]: weaver-core's "flat" reweighting within the jet's group, i.e.
    min(1, reference / count of its (pT, mSD) cell), the reference being the ``percentile``-th
    percentile of the group's populated cells (cells below 1 % of the median count are ignored
    for it)."""
    groups = REWEIGHT_GROUP_OF_CLASS[labels]
    n_pt, n_mass = len(PT_EDGES) - 1, len(SDMASS_EDGES) - 1
    pt_bin = np.clip(np.searchsorted(PT_EDGES, jet_pt, side="right") - 1, 0, n_pt - 1)
    mass_bin = np.clip(np.searchsorted(SDMASS_EDGES, jet_sdmass, side="right") - 1, 0, n_mass - 1)
    cell = (groups * n_pt + pt_bin) * n_mass + mass_bin
    counts = np.bincount(cell, minlength=len(_GROUP_NAMES) * n_pt * n_mass).astype(np.float64)
    per_group = counts.reshape(len(_GROUP_NAMES), -1)
    reference = np.zeros(len(_GROUP_NAMES))
    for group, cells in enumerate(per_group):
        populated = cells[cells > 0]
        if len(populated):
            populated = populated[populated > 0.01 * np.median(populated)]
            reference[group] = np.percentile(populated, percentile)
    return np.minimum(1.0, reference[groups] / counts[cell])


def acceptance(labels: np.ndarray, jet_pt: np.ndarray, jet_sdmass: np.ndarray,
               samples_per_epoch: float, *, cap: float = 1.0,
               percentile: float = REWEIGHT_PERCENTILE) -> np.ndarray:
    """Per-jet probability (N,) of being drawn in one epoch: flattening factor x the group's class
    weight, scaled so that the expected draws sum to ``samples_per_epoch`` (shared among the groups
    present in proportion to :data:`CLASS_WEIGHTS`), and capped at ``cap``. A group whose jets
    cannot fill its share at that cap is drawn at the cap, and its shortfall is not redistributed:
    the class priors then deviate from the published ones by that group's shortfall."""
    factors = flattening_factors(labels, jet_pt, jet_sdmass, percentile=percentile)
    groups = REWEIGHT_GROUP_OF_CLASS[labels]
    present = np.bincount(groups, minlength=len(_GROUP_NAMES)) > 0
    shares = np.where(present, _GROUP_WEIGHTS, 0.0)
    shares = shares / shares.sum()
    totals = np.bincount(groups, weights=factors, minlength=len(_GROUP_NAMES))
    scale = np.divide(shares * samples_per_epoch, totals, out=np.zeros_like(totals),
                      where=totals > 0)
    return np.minimum(cap, factors * scale[groups])


def epoch_jets(probabilities: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Indices of the jets drawn in ``epoch``: each jet at most once, with its own probability."""
    rng = np.random.default_rng([seed, epoch, 0])
    return np.flatnonzero(rng.random(len(probabilities)) < probabilities)


def bucketed(jets: np.ndarray, multiplicity: np.ndarray, batch_size: int,
             rng: np.random.Generator, *, drop_last: bool = False) -> list[np.ndarray]:
    """``jets`` cut into batches of similar constituent multiplicity, in random batch order.

    Jets are shuffled before the stable sort so that jets of equal multiplicity land in random
    batches; ``drop_last`` drops the one incomplete batch (fewer shapes to compile)."""
    shuffled = np.asarray(jets)[rng.permutation(len(jets))]
    ordered = shuffled[np.argsort(multiplicity[shuffled], kind="stable")]
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return [batches[i] for i in rng.permutation(len(batches))]


def _padded_length(longest: int) -> int:
    return max(min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, 128), longest, 1)


def _batch_tensors(sample: TrainingSample, chosen: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(features, vectors, mask, labels) of one batch, padded to about its longest jet."""
    padded = sample.inputs.padded(
        chosen, length=_padded_length(int(sample.inputs.multiplicity[chosen].max(initial=1))))
    return (torch.from_numpy(padded.pf_features), torch.from_numpy(padded.pf_vectors),
            torch.from_numpy(padded.pf_mask), torch.from_numpy(sample.labels[chosen]))


def _prefetched(make: Callable[[np.ndarray], tuple], batches: Sequence[np.ndarray],
                depth: int = 3) -> Iterator[tuple]:
    """``make(batch)`` for each batch, prepared by a background thread ``depth`` batches ahead
    (numpy's gathers release the GIL, so padding overlaps the training step)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                slots.put(make(batch))
        except BaseException as error:  # handed to the consumer, never lost
            slots.put(error)
        slots.put(None)

    worker = threading.Thread(target=produce, daemon=True, name="batch-prefetch")
    worker.start()
    try:
        while (item := slots.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # drain so the producer can see the stop flag
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(model: SophonModel, sample: TrainingSample, jets: np.ndarray, *,
             batch_size: int = 1024, device: torch.device | str = "cpu",
             precision: torch.dtype | None = None) -> np.ndarray:
    """Probabilities (len(jets), 188) of ``model`` on the jets ``jets`` of ``sample``
    (:func:`evaluate_with_latents` without the latents)."""
    return evaluate_with_latents(model, sample, jets, batch_size=batch_size, device=device,
                                 precision=precision)[0]


@torch.no_grad()
def evaluate_with_latents(model: SophonModel, sample: TrainingSample, jets: np.ndarray, *,
                          batch_size: int = 1024, device: torch.device | str = "cpu",
                          precision: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (len(jets), 188) and latents (len(jets), embed_dim) of ``model`` on the jets
    ``jets`` of ``sample``, float32.

    Jets are scored in multiplicity order (little padding) and returned in the order given.
    ``precision``: autocast dtype (default bf16 on CUDA, fp32 elsewhere)."""
    device = torch.device(device)
    precision = precision or resolve_precision("auto", device)
    model.eval()
    order = np.argsort(sample.inputs.multiplicity[jets], kind="stable")
    ordered = np.asarray(jets)[order]
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    probabilities = np.empty((len(ordered), model.config.num_classes), np.float32)
    latents = np.empty((len(ordered), model.config.embed_dim), np.float32)
    start = 0
    for features, vectors, mask, _ in _prefetched(lambda b: _batch_tensors(sample, b), batches):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            batch_probabilities, batch_latents = model(features.to(device), vectors.to(device),
                                                       mask.to(device))
        rows = order[start:start + len(batch_latents)]
        probabilities[rows] = batch_probabilities.float().cpu().numpy()
        latents[rows] = batch_latents.float().cpu().numpy()
        start += len(batch_latents)
    return probabilities, latents


def validation_record(probabilities: np.ndarray, labels: np.ndarray,
                       weights: np.ndarray) -> dict:
    """Validation figures: loss and accuracy under the training draw weights (so they compare with
    the training loss), and the unweighted tagging figures of the presets."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)
    loss = float(np.sum(weights * -np.log(picked)) / np.sum(weights))
    figures = tagging_figures(probabilities, labels)
    return {"validation_loss": loss,
            "validation_accuracy": class_accuracies(probabilities, labels, weights),
            "tagging": figures, "selection_score": selection_score(figures)}


def preset_tail_terms(logits: torch.Tensor, labels: torch.Tensor, *, focus: float = 0.0,
                      presets: Sequence[str] = TAGGING_PRESETS) -> torch.Tensor:
    """The tracked presets' own question, as a loss beside the 188-class cross-entropy.

    For each preset, D = g_A / (g_A + g_B) has log-odds z = log g_A - log g_B (computed from the
    logits with the preset's own class weights and denominator, so it never saturates); the jets
    of its numerator classes are its signal (target 1), the jets of its denominator classes (the
    27 QCD classes for every tracked preset) its background (target 0), other jets do not enter.
    Each background jet's term is weighted by D^focus (a focal loss on the background alone,
    detached from the gradient): with ``focus`` > 0 the QCD jets that already look like signal,
    those that pass the tight cuts, dominate, which is the tail the summed spectra at
    eps ~ 1e-4 rest on. Returns each jet's sum over presets of its binary cross-entropy terms,
    (B,), for ``logits`` (B, 188) and ``labels`` (B,); the mean over a batch is the loss."""
    total = logits.new_zeros(len(labels))
    log_denominators: dict[bytes, torch.Tensor] = {}  # presets sharing g_B (all: QCD) share it
    for name in presets:
        preset = PRESETS[name]
        weights = torch.from_numpy(preset.numerator_weights).to(logits)
        mask = preset.denominator_mask
        denominator, key = torch.from_numpy(mask).to(logits.device), mask.tobytes()
        if key not in log_denominators:
            log_denominators[key] = logits.masked_fill(~denominator, -math.inf).logsumexp(dim=1)
        # log(sum_i w_i g_i) - log(sum_j g_j); log 0 = -inf drops the classes outside each sum
        z = (logits + weights.log()).logsumexp(dim=1) - log_denominators[key]
        signal, background = (weights > 0)[labels], denominator[labels]
        weight = torch.sigmoid(z.detach()).pow(focus) if focus else torch.ones_like(z)
        terms = torch.where(signal, F.softplus(-z), torch.where(background, weight * F.softplus(z),
                                                                 torch.zeros_like(z)))
        total = total + terms
    return total


# --- the training loop ------------------------------------------------------------------------------


def validation_split(n_jets: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) jet indices, each sorted: a seeded ``fraction`` of ``n_jets`` held
    out (at least one jet)."""
    order = np.random.default_rng([seed, 1 << 20]).permutation(n_jets)
    n_validation = max(int(n_jets * fraction), 1)
    return np.sort(order[:n_validation]), np.sort(order[n_validation:])


def _schedule(total_steps: int) -> Callable[[int], float]:
    flat_steps = int(0.7 * total_steps)
    decay = math.log(0.01) / max(total_steps - flat_steps, 1)
    return lambda step: 1.0 if step < flat_steps else math.exp(decay * (step - flat_steps))


class _Run:
    """One training run's mutable state: what the state file holds."""

    def __init__(self, options: TrainingOptions, sample: TrainingSample, device: torch.device):
        self.options = options
        self.model = _initial_model(options).to(device)
        self.optimizer = torch.optim.RAdam(self.model.parameters(), lr=options.learning_rate,
                                           betas=(0.95, 0.999), eps=1e-5)
        self.total_steps = options.epochs * max(options.samples_per_epoch // options.batch_size, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           _schedule(self.total_steps))
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.epoch_loss, self.epoch_batches, self.epoch_seconds = 0.0, 0, 0.0
        self.history: list[dict] = []
        self.best_key: tuple[float, float] | None = None  # see _end_epoch
        self.fingerprint = {"jets": len(sample), "sources": sample.sources}

    def state(self) -> dict:
        return {"options": asdict(self.options), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "epoch_loss": self.epoch_loss, "epoch_batches": self.epoch_batches,
                "epoch_seconds": self.epoch_seconds, "history": self.history,
                "best_key": self.best_key, "fingerprint": self.fingerprint,
                "torch_rng": torch.get_rng_state()}

    def restore(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"the resume state was made on other training data "
                             f"({state['fingerprint']['jets']} jets from "
                             f"{state['fingerprint']['sources']}), not on these "
                             f"{self.fingerprint['jets']} jets")
        saved = {k: v for k, v in state["options"].items() if k not in ("device", "compile")}
        current = {k: v for k, v in asdict(self.options).items() if k not in ("device", "compile")}
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            raise ValueError(f"the resume state was made with other options: {changed}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for name in ("epoch", "batch_in_epoch", "step", "epoch_loss", "epoch_batches",
                     "epoch_seconds", "history", "best_key"):
            setattr(self, name, state[name])
        torch.set_rng_state(state["torch_rng"])

    def save(self, path: Path | None) -> None:
        if path is not None:
            with atomic_output(path) as temporary:
                torch.save(self.state(), temporary)


def _initial_model(options: TrainingOptions) -> SophonModel:
    """A new model of ``options.config``, or one with the weights of the checkpoint
    ``options.init``, which must have that configuration's shape (the error names the file)."""
    model = SophonModel(TRAINING_CONFIGS[options.config])
    if options.init is not None:
        weights = load_checkpoint_file(options.init).state_dict()  # names an unloadable file
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as mismatch:
            reason = " ".join(str(mismatch).split())[:300]
            raise ValueError(f"{options.init}: not a network of the {options.config!r} "
                             f"configuration ({reason})") from None
    return model


def _warmup_steps(run: _Run) -> int:
    """Steps with BatchNorm batch statistics: the warm-up share, and for a new model at least 20
    (or all) steps so that the running statistics have converged when they are frozen (a model
    from ``init`` brings converged ones, so a warm-up of 0 keeps them frozen from the start)."""
    floor = 0 if run.options.init is not None else min(run.total_steps, 20)
    return max(math.ceil(run.options.batch_norm_warmup * run.total_steps), floor)


def _train_mode(run: _Run) -> None:
    run.model.train()
    if run.step >= _warmup_steps(run):
        freeze_batch_norms(run.model)


def train(sample: TrainingSample, output: str | os.PathLike,
          options: TrainingOptions = TrainingOptions(), *, state_path: str | os.PathLike | None = None,
          resume: bool = False, max_minutes: float | None = None, log=print) -> dict:
    """Train, keep the best checkpoint at ``output`` and a JSON summary beside it.

    ``state_path``: the resumable state file (written every 10 minutes and at every epoch end);
    with ``resume`` the run continues from it. ``max_minutes``: stop cleanly after that long (the
    state is saved; the summary says ``finished: false``)."""
    output = Path(output)
    state_path = None if state_path is None else Path(state_path)
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    device = resolve_device(options.device)
    if device.type == "cpu":
        torch.set_num_threads(max(os.cpu_count() or 1, 1))
    validation, training = validation_split(len(sample), options.validation_fraction, options.seed)
    if len(training) == 0:
        raise ValueError(f"only {len(sample)} jets: nothing left to train on after validation")
    cap = min(1.0, options.max_draws_per_jet / max(options.epochs, 1))
    draw = acceptance(sample.labels[training], sample.jet_pt[training],
                      sample.jet_sdmass[training], options.samples_per_epoch, cap=cap,
                      percentile=options.reweight_percentile)
    validation_weights = acceptance(sample.labels[validation], sample.jet_pt[validation],
                                    sample.jet_sdmass[validation], options.samples_per_epoch,
                                    cap=cap, percentile=options.reweight_percentile)
    precision = resolve_precision(options.precision, device)
    run = _Run(options, sample, device)
    if resume:
        if state_path is None or not state_path.exists():
            raise ValueError(f"--resume: no state file at {state_path}")
        run.restore(torch.load(state_path, map_location=device, weights_only=False))
        log(f"resumed from {state_path}: epoch {run.epoch + 1}, batch {run.batch_in_epoch}")
    elif state_path is not None and state_path.exists():
        raise ValueError(f"{state_path}: a training state exists already; resume it (--resume "
                         f"{state_path}) or delete it to start over")
    step_function = _step_function(run, precision, device)
    log(f"training {options.config} ({count_parameters(run.model):,} parameters) on "
        f"{len(training):,} jets ({draw.sum():,.0f} expected per epoch), validating on "
        f"{len(validation):,}, device {device}")
    last_save = time.perf_counter()
    finished = True
    while run.epoch < options.epochs:
        rng = np.random.default_rng([options.seed, run.epoch, 1])
        chosen = training[epoch_jets(draw, options.seed, run.epoch)]
        batches = bucketed(chosen, sample.inputs.multiplicity, options.batch_size, rng,
                           drop_last=True)
        _train_mode(run)
        start = time.perf_counter()
        remaining = batches[run.batch_in_epoch:]
        for features, vectors, mask, labels in _prefetched(lambda b: _batch_tensors(sample, b),
                                                           remaining):
            if run.step == _warmup_steps(run):
                freeze_batch_norms(run.model)
            loss = step_function(features.to(device), vectors.to(device), mask.to(device),
                                 labels.to(device))
            run.epoch_loss += loss
            run.epoch_batches += 1
            run.batch_in_epoch += 1
            run.step += 1
            now = time.perf_counter()
            if max_minutes is not None and now - started > 60 * max_minutes:
                finished = False
                break
            if now - last_save > 600:
                run.epoch_seconds += now - start
                start = now
                run.save(state_path)
                last_save = now
        run.epoch_seconds += time.perf_counter() - start
        if not finished:
            run.save(state_path)
            log(f"stopped after {max_minutes} minutes in epoch {run.epoch + 1} "
                f"(batch {run.batch_in_epoch} of {len(batches)}); state {state_path}")
            break
        record = _end_epoch(run, sample, validation, validation_weights, len(batches), device,
                            precision, output, log)
        run.history.append(record)
        run.epoch += 1
        run.batch_in_epoch = run.epoch_batches = 0
        run.epoch_loss = run.epoch_seconds = 0.0
        run.save(state_path)
        last_save = time.perf_counter()
        _write_summary(run, output, len(training), len(validation), draw, finished=False)
    return _write_summary(run, output, len(training), len(validation), draw,
                          finished=run.epoch >= options.epochs)


def _step_function(run: _Run, precision: torch.dtype, device: torch.device):
    """One optimisation step on a batch; returns the batch's loss. ``compile`` wraps the forward
    and loss in torch.compile (lengths come in multiples of 16, so few graphs)."""
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler

    def forward_loss(features, vectors, mask, labels):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            logits, _ = model.logits_and_latent(features, vectors, mask)
        loss = F.cross_entropy(logits.float(), labels)
        if run.options.tail_weight:
            loss = loss + run.options.tail_weight * preset_tail_terms(
                logits.float(), labels, focus=run.options.tail_focus).mean()
        return loss

    if run.options.compile:
        forward_loss = torch.compile(forward_loss, dynamic=False)

    def step(features, vectors, mask, labels) -> float:
        loss = forward_loss(features, vectors, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    return step


def _end_epoch(run: _Run, sample: TrainingSample, validation: np.ndarray,
               validation_weights: np.ndarray, n_batches: int, device: torch.device,
               precision: torch.dtype, output: Path, log) -> dict:
    probabilities = evaluate(run.model, sample, validation, device=device, precision=precision)
    record = {"epoch": run.epoch + 1, "step": run.step,
              "loss": run.epoch_loss / max(run.epoch_batches, 1),
              **validation_record(probabilities, sample.labels[validation], validation_weights),
              "jets": n_batches * run.options.batch_size, "seconds": run.epoch_seconds,
              "jets_per_second": n_batches * run.options.batch_size / max(run.epoch_seconds, 1e-9),
              "learning_rate": run.scheduler.get_last_lr()[0]}
    rejections = ", ".join(f"{name.split(':')[0]} {entry['60%']['rejection']:.0f}"
                           for name, entry in record["tagging"].items())
    log(f"epoch {record['epoch']}: loss {record['loss']:.3f} (validation "
        f"{record['validation_loss']:.3f}), accuracy "
        f"{record['validation_accuracy']['all classes']:.3f}, QCD rejection at 60 %: "
        f"{rejections}, {record['jets_per_second']:.0f} jets/s")
    # by the tagging score; by the validation loss where the validation jets hold no signal or
    # no QCD for any preset (tiny samples), and a score always beats no score
    score = record["selection_score"]
    key = (1.0, score) if math.isfinite(score) else (0.0, -record["validation_loss"])
    if run.best_key is None or key > tuple(run.best_key):
        run.best_key = key
        record["best"] = True
        save_checkpoint(run.model, output)
    return record


def _write_summary(run: _Run, output: Path, n_training: int, n_validation: int,
                   draw: np.ndarray, *, finished: bool) -> dict:
    """The JSON beside the checkpoint: options, data, the learning curves (per epoch: training
    and validation loss under the same draw weights, accuracies, tagging figures)."""
    summary = {"options": asdict(run.options),
               "config": TRAINING_CONFIGS[run.options.config].to_dict(),
               "parameters": count_parameters(run.model), "training_jets": n_training,
               "validation_jets": n_validation, "expected_draws_per_epoch": float(draw.sum()),
               "largest_draw_probability": float(draw.max(initial=0.0)),
               "sources": run.fingerprint["sources"],
               "best_epoch": next((r["epoch"] for r in reversed(run.history) if r.get("best")),
                                  None),
               "finished": finished, "history": run.history}
    if run.history:
        with atomic_output(output.with_suffix(".json")) as temporary:
            temporary.write_text(json.dumps(summary, indent=1))
    return summary


def evaluate_model(checkpoint: str | os.PathLike, files: Sequence[str | os.PathLike], *,
                   device: str = "auto", precision: str = "auto") -> dict:
    """Model-card figures on labelled jets (after the training selection, natural class mix):
    accuracy over the 188 classes, per class kind and per reweighting group, and for the presets
    A1, A2 and A3 the QCD efficiency and rejection at 30, 50 and 60 % signal efficiency."""
    sample = load_training_sample(files)
    torch_device = resolve_device(device)
    model = load_checkpoint(checkpoint).to(torch_device)
    probabilities = evaluate(model, sample, np.arange(len(sample)), device=torch_device,
                             precision=resolve_precision(precision, torch_device))
    return {"checkpoint": str(checkpoint), "jets": int(len(sample)),
            "accuracy": class_accuracies(probabilities, sample.labels),
            "tagging": tagging_figures(probabilities, sample.labels),
            "tagging_presets_order": "signal = true class among the numerator classes; "
                                     "background = the 27 QCD classes"}


def _main(args: argparse.Namespace) -> int:
    options = TrainingOptions(config=args.config, epochs=args.epochs,
                              samples_per_epoch=args.samples_per_epoch,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              validation_fraction=args.validation_fraction,
                              max_draws_per_jet=args.max_draws_per_jet,
                              reweight_percentile=args.reweight_percentile,
                              batch_norm_warmup=args.batch_norm_warmup, device=args.device,
                              precision=args.precision, compile=args.compile, seed=args.seed,
                              init=None if args.init is None else str(args.init),
                              tail_weight=args.tail_weight, tail_focus=args.tail_focus)
    state = args.resume or args.state or Path("build") / "train-state" / (args.output.stem + ".pt")
    sample = cached_training_sample(args.inputs, Path(state).with_suffix(".sample"))
    summary = train(sample, args.output, options, state_path=state,
                    resume=args.resume is not None, max_minutes=args.max_minutes)
    print(f"best epoch {summary['best_epoch']}; checkpoint {args.output}; "
          f"{'finished' if summary['finished'] else 'resumable from ' + str(state)}")
    return 0


def _evaluate_main(args: argparse.Namespace) -> int:
    figures = evaluate_model(args.model, args.inputs, device=args.device, precision=args.precision)
    if args.learning_curves:
        from sophon.figures import learning_curves_figure, save_figure

        history_file = args.model.with_suffix(".json")
        history = json.loads(history_file.read_text())["history"] if history_file.exists() else []
        if not history:
            raise SystemExit(f"{history_file}: no training history beside the checkpoint")
        save_figure(learning_curves_figure(history), args.learning_curves,
                    title=f"learning curves of {args.model.name}")
    return report_json(figures, args.output)


def register_cli(subparsers) -> None:
    evaluation = subparsers.add_parser(
        "evaluate", help="model-card figures of a checkpoint on labelled (training-format) jets")
    evaluation.add_argument("model", type=Path, help="checkpoint (.pt)")
    evaluation.add_argument("inputs", nargs="+", type=Path, help="JetClass-II-schema parquet files")
    evaluation.add_argument("-o", "--output", type=Path, default=None, help="write the JSON here")
    evaluation.add_argument("--learning-curves", type=Path, default=None, metavar="FIGURE",
                            help="also draw the checkpoint's learning curves (from the .json "
                            "beside it) to this PDF, PNG or SVG")
    evaluation.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluation.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    evaluation.set_defaults(handler=_evaluate_main)
    parser = subparsers.add_parser("train", help="train the Sophon architecture on generated jets")
    parser.add_argument("inputs", nargs="+", type=Path, help="JetClass-II-schema parquet files")
    parser.add_argument("-o", "--output", required=True, type=Path, help="checkpoint (.pt)")
    parser.add_argument("--config", choices=sorted(TRAINING_CONFIGS), default="small")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples-per-epoch", type=int, default=100_000,
                        help="expected jets drawn per epoch (each jet at most once)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--validation-fraction", type=float, default=0.05)
    parser.add_argument("--max-draws-per-jet", type=float, default=3.0,
                        help="expected draws of any jet over the whole training (default 3)")
    parser.add_argument("--reweight-percentile", type=float, default=REWEIGHT_PERCENTILE,
                        help="flattening reference: this percentile of a group's cell counts")
    parser.add_argument("--batch-norm-warmup", type=float, default=0.05,
                        help="share of the steps with BatchNorm batch statistics, then frozen")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="autocast precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state", type=Path, default=None,
                        help="resumable state file (default build/train-state/<output>.pt)")
    parser.add_argument("--resume", type=Path, default=None, metavar="STATE",
                        help="continue from this state file (and keep writing it)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly after this many minutes; resume later with --resume")
    parser.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint's weights (same --config), e.g. to "
                             "anneal a model further on new jets; with --batch-norm-warmup 0 "
                             "its BatchNorm statistics stay frozen")
    parser.add_argument("--tail-weight", type=float, default=0.0,
                        help="add the presets' binary signal-vs-QCD loss with this weight to the "
                             "cross-entropy (0: cross-entropy alone)")
    parser.add_argument("--tail-focus", type=float, default=0.0,
                        help="weigh each QCD jet's binary term by D^focus (focal on QCD)")
    parser.set_defaults(handler=_main)
