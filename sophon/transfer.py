"""Transfer learning on frozen latents (``sophon transfer``): a small head trained on the 128-d
latent of two jet sets, for a signature that no output class covers (arXiv:2405.12972 sec. III,
Fig. 2: X->bs).

The recipe follows the paper's:

- the two sets are named by the user (:class:`JetSet`): a physics process (``process``
  column), a class query on the true class (``jet_label``, the language of
  :mod:`sophon.labels`), explicit dataset rows (a latent-space selection), or every jet of a
  labelled file (a scored dataset of the same model, e.g. X->bs jets);
- the head is a two-layer MLP, Linear(128, H) -> ReLU -> Dropout -> Linear(H, 2), whose first
  layer is preloaded from the first layer of the model head that scored the dataset (H = 512 for
  the published Sophon, 256 for the ``small`` configuration) and trained further with the new
  second layer (:func:`preloaded_head`);
- training weights flatten each set in the published (pT, mSD) cells
  (:func:`sophon.training.flattening_factors`, the pre-training's mass decorrelation) and give
  both sets the same total weight (class balancing, :func:`training_weights`);
- each set is split at random into a training half and an independent held-out half; 20 % of the
  training half chooses the best epoch (weighted validation loss), the held-out half is only
  evaluated. Weighted cross-entropy, minibatch Adam, all seeded.

Evaluation on the held-out half, each jet counting its dataset weight (expected events): the ROC
curve (:func:`sophon.tagging.weighted_roc`) and the background rejection at 30 % and 50 % signal
efficiency, beside those of the best discriminant D = g_A / (g_A + g_B) built from the output
nodes: every single class and every named class group as A against the denominator B (default
the QCD classes), the one with the highest rejection at 50 % on the *training* half
(:func:`best_node_discriminant`).

The trained head is a new per-jet score: :attr:`TransferResult.values` holds, for every jet of
the dataset, ln(p_signal / p_background) of the head (float32, the order of D without its
saturation at tight cuts, as :meth:`sophon.discriminant.Discriminant.log_odds`), and
:func:`write_score_column` writes it as the column ``transfer_<name>`` of a copy of the dataset.
The training half's jets carry values the head was fitted on; only the held-out half's figures
are unbiased.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from sophon.atomic import DATASET_METADATA_KEY, write_table_atomic
from sophon.cli import report_json
from sophon.discriminant import Discriminant, DiscriminantError, Term
from sophon.labels import GROUPS, LABELS, mask as class_mask
from sophon.manifest import verify_listed
from sophon.model import SophonModel, load_checkpoint_file
from sophon.store import LATENT_DIM, SCORE_HEAD_KEY, DatasetError, JetDataset, read_metadata
from sophon.tagging import RocCurve, weighted_roc
from sophon.training import REWEIGHT_PERCENTILE, flattening_factors

__all__ = ["SET_KINDS", "REPORTED_EFFICIENCIES", "COLUMN_PREFIX", "JetSet", "TransferOptions",
           "TransferHead", "Rejection", "TransferResult", "preloaded_head", "training_weights",
           "node_discriminants", "best_node_discriminant", "fit_transfer", "write_score_column",
           "register_cli"]

#: How a jet set is named: see :class:`JetSet`.
SET_KINDS = ("process", "classes", "rows", "file")
#: Signal efficiencies at which the held-out background rejection is reported.
REPORTED_EFFICIENCIES = (0.3, 0.5)
#: Columns written by :func:`write_score_column` are named ``transfer_<name>``.
COLUMN_PREFIX = "transfer_"
#: Fewest jets a set may hold (a few for each of the training, validation and held-out parts).
MIN_JETS_PER_SET = 20
MAX_EPOCHS = 10_000
#: Heads an ensemble holds at most (each costs one training).
MAX_ENSEMBLE = 20
MAX_BATCH_SIZE = 1 << 16
MAX_SET_TEXT = 4100  # a class query's limit (sophon.labels.MAX_QUERY_LENGTH) and its prefix
_NAME = re.compile(r"[A-Za-z0-9_]{1,48}")
#: a progress report: (epochs done, epochs); raise from it to cancel
Progress = Callable[[int, int], None]


def _shown(value, limit: int = 80) -> str:
    """``value`` for a message: quoted text or a repr, shortened."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit - 1] + "…")
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


class JetSet:
    """One of the two jet sets, by ``kind``:

    - ``"process"``: the jets whose ``process`` is ``value`` (e.g. ``"Higgs"``);
    - ``"classes"``: the jets whose true class (``jet_label``) is in the class query ``value``
      (e.g. ``"X_bb | X_cc"``);
    - ``"rows"``: the dataset rows ``value`` (indices, e.g. a latent-space selection);
    - ``"file"``: every jet of the scored dataset at ``value``, scored by the same model.

    :meth:`parse` reads the command line's ``KIND:VALUE`` (a bare name is a process).
    """

    def __init__(self, kind: str, value: str | Sequence[int] | np.ndarray | os.PathLike):
        if kind not in SET_KINDS:
            raise ValueError(f"unknown jet-set kind {_shown(kind)}; kinds are {SET_KINDS}")
        if kind == "rows":
            rows = np.asarray(value)
            if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
                raise ValueError(f"a row selection must be a 1-d list of integer row numbers, "
                                 f"got {rows.dtype} of shape {rows.shape}")
            value = rows.astype(np.int64)
        else:
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"a {kind} set needs a non-empty text value, got "
                                 f"{_shown(value)}")
            if len(value) > MAX_SET_TEXT:
                raise ValueError(f"the {kind} set's value is {len(value):,} characters long; at "
                                 f"most {MAX_SET_TEXT:,}")
        self.kind = kind
        self.value = value

    @classmethod
    def parse(cls, text: str) -> JetSet:
        """``process:NAME``, ``classes:QUERY``, ``rows:FILE`` (a .csv or .parquet with a ``jet``
        column, as the latent view downloads a selection, or a text file of row numbers) or
        ``file:PATH``; text without one of these prefixes names a process."""
        if not isinstance(text, str) or len(text) > MAX_SET_TEXT:
            raise ValueError(f"a jet set is text of at most {MAX_SET_TEXT:,} characters")
        kind, separator, value = text.partition(":")
        if not separator or kind.strip() not in SET_KINDS:
            return cls("process", text)
        kind = kind.strip()
        if kind == "rows":
            return cls("rows", _read_rows(Path(value.strip())))
        return cls(kind, value.strip())

    def describe(self) -> str:
        if self.kind == "rows":
            return f"rows:{len(self.value)} jets"
        return f"{self.kind}:{self.value}"

    def __repr__(self) -> str:
        return f"JetSet({self.describe()!r})"


def _read_rows(path: Path) -> np.ndarray:
    """Row numbers from a selection file: a ``jet`` column of a .csv or .parquet file, else one
    integer per line."""
    if not path.is_file():
        raise ValueError(f"{path}: no such row-selection file")
    try:
        if path.suffix in (".csv", ".parquet"):
            frame = pl.read_parquet(path, columns=["jet"]) if path.suffix == ".parquet" else \
                pl.read_csv(path, columns=["jet"])
            rows = frame["jet"].to_numpy()
        else:
            rows = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a row selection (a 'jet' column of row numbers, or one "
                         f"integer per line): {error}") from None
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{path}: row numbers must be integers, got {rows.dtype}")
    return rows


@dataclass(frozen=True)
class TransferOptions:
    """``epochs`` of minibatch Adam (``batch_size`` jets, ``learning_rate``) with ``dropout``
    after the hidden layer; ``test_fraction`` of each set held out, ``validation_fraction`` of
    the rest choosing the best epoch; at most ``max_jets_per_set`` jets of a set (a random
    subset beyond); ``flatten``: the flat (pT, mSD) reweighting of each set (off: each set keeps
    its own spectrum, the sets are only balanced), with reference ``reweight_percentile`` (see
    :func:`sophon.training.flattening_factors`); the node discriminants' denominator class query
    and the signal efficiency at which the best one is chosen; ``ensemble`` heads trained on the
    same jets from different initial second layers, dropout masks and minibatch orders, their
    ln(p_s/p_b) averaged (the few hundred signal jets of a rare process train one head noisily:
    the average varies less from one training to the next)."""

    epochs: int = 40
    batch_size: int = 512
    learning_rate: float = 1e-3
    dropout: float = 0.1
    test_fraction: float = 0.5
    validation_fraction: float = 0.2
    max_jets_per_set: int = 200_000
    flatten: bool = True
    reweight_percentile: float = REWEIGHT_PERCENTILE
    denominator: str = "QCD"
    selection_efficiency: float = 0.5
    seed: int = 0
    ensemble: int = 1

    def __post_init__(self):
        checks = (
            ("epochs", isinstance(self.epochs, int) and 1 <= self.epochs <= MAX_EPOCHS,
             f"an integer from 1 to {MAX_EPOCHS:,}"),
            ("batch_size", isinstance(self.batch_size, int)
             and 1 <= self.batch_size <= MAX_BATCH_SIZE,
             f"an integer from 1 to {MAX_BATCH_SIZE:,}"),
            ("learning_rate", _number(self.learning_rate) and 0 < self.learning_rate <= 1,
             "a number in (0, 1]"),
            ("dropout", _number(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)"),
            ("test_fraction", _number(self.test_fraction) and 0 < self.test_fraction < 1,
             "a number in (0, 1)"),
            ("validation_fraction", _number(self.validation_fraction)
             and 0 < self.validation_fraction <= 0.5, "a number in (0, 0.5]"),
            ("max_jets_per_set", isinstance(self.max_jets_per_set, int)
             and self.max_jets_per_set >= MIN_JETS_PER_SET,
             f"an integer of at least {MIN_JETS_PER_SET}"),
            ("flatten", isinstance(self.flatten, bool), "true or false"),
            ("reweight_percentile", _number(self.reweight_percentile)
             and 0 <= self.reweight_percentile <= 100, "a number from 0 to 100"),
            ("selection_efficiency", _number(self.selection_efficiency)
             and 0 < self.selection_efficiency < 1, "a number in (0, 1)"),
            ("seed", isinstance(self.seed, int) and 0 <= self.seed < 2**63,
             "a non-negative integer"),
            ("ensemble", isinstance(self.ensemble, int) and 1 <= self.ensemble <= MAX_ENSEMBLE,
             f"an integer from 1 to {MAX_ENSEMBLE}"),
        )
        for name, good, rule in checks:
            if not good:
                raise ValueError(f"transfer option {name} must be {rule}, got "
                                 f"{_shown(getattr(self, name))}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- the head -----------------------------------------------------------------------------------


class TransferHead(nn.Module):
    """(N, 128) latents -> (N, 2) logits (background, signal): Linear(128, hidden) -> ReLU ->
    Dropout -> Linear(hidden, 2), the shape of the paper's (512, 2) head."""

    def __init__(self, hidden: int, dropout: float = 0.1, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.first = nn.Linear(latent_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.second = nn.Linear(hidden, 2)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.second(self.dropout(torch.relu(self.first(latents))))

    @property
    def hidden(self) -> int:
        return self.first.out_features

    @torch.no_grad()
    def log_odds(self, latents: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """ln(p_signal / p_background), (N,) float32, for (N, 128) ``latents`` (eval mode)."""
        latents = np.asarray(latents, dtype=np.float32)
        if latents.ndim != 2 or latents.shape[1] != self.first.in_features:
            raise ValueError(f"latents must have shape (N, {self.first.in_features}), "
                             f"got {latents.shape}")
        was_training = self.training
        self.eval()
        values = np.empty(len(latents), dtype=np.float32)
        for start in range(0, len(latents), batch_size):
            # torch.tensor copies: a dataset's latents are read-only
            logits = self(torch.tensor(latents[start:start + batch_size]))
            values[start:start + len(logits)] = (logits[:, 1] - logits[:, 0]).numpy()
        self.train(was_training)
        return values


class HeadEnsemble(nn.Module):
    """Several :class:`TransferHead` of one shape whose ln(p_signal / p_background) is the
    members' mean."""

    def __init__(self, members: Sequence[TransferHead]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def hidden(self) -> int:
        return self.members[0].hidden

    def log_odds(self, latents: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """The members' mean ln(p_signal / p_background), (N,) float32."""
        total = np.zeros(len(latents), dtype=np.float64)
        for member in self.members:
            total += member.log_odds(latents, batch_size)
        return (total / len(self.members)).astype(np.float32)


def preloaded_head(model: SophonModel, *, dropout: float = 0.1, seed: int = 0) -> TransferHead:
    """A :class:`TransferHead` whose first layer is a copy of the first linear layer of
    ``model``'s head (its width is the head's hidden width; a head without a hidden layer gives
    its 188 logits) and whose second layer is new (Xavier-uniform, zero bias, seeded)."""
    first = next(m for m in model.mod.fc.modules() if isinstance(m, nn.Linear))
    if first.in_features != LATENT_DIM:
        raise ValueError(f"the model head reads {first.in_features}-d latents; the dataset's "
                         f"are {LATENT_DIM}-d")
    head = TransferHead(first.out_features, dropout)
    with torch.no_grad():
        head.first.weight.copy_(first.weight)
        head.first.bias.copy_(first.bias)
        nn.init.xavier_uniform_(head.second.weight, generator=torch.Generator().manual_seed(seed))
        nn.init.zeros_(head.second.bias)
    return head


# --- the two sets' jets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Jets:
    """One set's jets: latents (n, 128), scores (n, 188), jet_pt and jet_sdmass (n,) in GeV,
    weights (n,) in expected events, rows (n,) in the dataset (None for a labelled file)."""

    latents: np.ndarray
    scores: np.ndarray
    jet_pt: np.ndarray
    jet_sdmass: np.ndarray
    weights: np.ndarray
    rows: np.ndarray | None

    def take(self, chosen: np.ndarray) -> _Jets:
        return _Jets(self.latents[chosen], self.scores[chosen], self.jet_pt[chosen],
                     self.jet_sdmass[chosen], self.weights[chosen],
                     None if self.rows is None else self.rows[chosen])

    def __len__(self) -> int:
        return len(self.weights)


def _members(dataset: JetDataset, jet_set: JetSet) -> np.ndarray:
    """The dataset rows of a process, class or row set, sorted."""
    if jet_set.kind == "process":
        if not dataset.has("process"):
            raise ValueError(f"{dataset.path}: the dataset has no 'process' column, so no "
                             f"process {_shown(jet_set.value)}")
        names = list(dataset.process_names)
        if jet_set.value not in names:
            raise ValueError(f"unknown process {_shown(jet_set.value)}; the processes of "
                             f"{dataset.path} are {names}")
        return np.flatnonzero(dataset.process_codes == names.index(jet_set.value))
    if jet_set.kind == "classes":
        if not dataset.has("jet_label"):
            raise ValueError(f"{dataset.path}: the class query {_shown(jet_set.value)} needs "
                             "the true class of each jet (column 'jet_label'), which the "
                             "dataset lacks")
        labels = dataset.column("jet_label")
        chosen = class_mask(jet_set.value)
        return np.flatnonzero((labels >= 0) & chosen[np.clip(labels, 0, None)])
    rows = jet_set.value
    outside = (rows < 0) | (rows >= dataset.n_jets)
    if outside.any():
        raise ValueError(f"row {int(rows[np.argmax(outside)])} of the selection is not a jet of "
                         f"{dataset.path} (rows 0 to {dataset.n_jets - 1})")
    unique = np.unique(rows)
    if len(unique) != len(rows):
        raise ValueError(f"the row selection names {len(rows) - len(unique)} jets more than once")
    return unique


def _latents(dataset: JetDataset) -> np.ndarray:
    if not dataset.has("latent"):
        raise DatasetError(f"{dataset.path}: transfer learning trains on the 128-d latents, and "
                           "the dataset has no 'latent' column (rescore it with a model)")
    return dataset.latents


def _set_jets(dataset: JetDataset, jet_set: JetSet, role: str) -> _Jets:
    if jet_set.kind == "file":
        source = JetDataset(jet_set.value)
        if source.metadata.model_id != dataset.metadata.model_id:
            raise ValueError(f"the {role} file {jet_set.value} was scored by "
                             f"{source.metadata.model_id!r}, the dataset by "
                             f"{dataset.metadata.model_id!r}: latents of different models do not "
                             "share one space")
        rows, latents = np.arange(source.n_jets), _latents(source)
    else:
        source, rows, latents = dataset, _members(dataset, jet_set), _latents(dataset)
    if len(rows) == 0:
        raise ValueError(f"the {role} set {_shown(jet_set.describe())} holds no jets")
    if len(rows) < MIN_JETS_PER_SET:
        raise ValueError(f"the {role} set {_shown(jet_set.describe())} holds {len(rows)} jets; "
                         f"at least {MIN_JETS_PER_SET} are needed")
    return _Jets(latents[rows], np.asarray(source.scores[rows]),
                 source.column("jet_pt")[rows].astype(np.float64),
                 source.column("jet_sdmass")[rows].astype(np.float64), source.weights[rows],
                 None if jet_set.kind == "file" else rows)


def _check_disjoint(signal: _Jets, background: _Jets, names: tuple[str, str]) -> None:
    if signal.rows is None or background.rows is None:
        return
    shared = np.intersect1d(signal.rows, background.rows)
    if len(shared):
        raise ValueError(f"the signal set {_shown(names[0])} and the background set "
                         f"{_shown(names[1])} share {len(shared)} jets (e.g. row {shared[0]}); "
                         "a jet can belong to one set only")


def training_weights(jet_pt: np.ndarray, jet_sdmass: np.ndarray, is_signal: np.ndarray, *,
                     flatten: bool = True, percentile: float = REWEIGHT_PERCENTILE) -> np.ndarray:
    """Per-jet training weights (N,) with mean 1: within each set, the pre-training's flat
    reweighting in the published (pT, mSD) cells (``jet_pt``, ``jet_sdmass`` in GeV;
    :func:`sophon.training.flattening_factors` with reference ``percentile``; ``flatten`` off:
    every jet of a set alike), then both sets scaled to the same total weight (class
    balancing). ``is_signal`` (N,) bool; each set must hold a jet."""
    is_signal = np.asarray(is_signal, bool)
    weights = np.empty(len(is_signal), dtype=np.float64)
    for members in (is_signal, ~is_signal):
        if not members.any():
            raise ValueError("training weights need jets of both sets")
        if flatten:
            # one set is one flattening group: one class index for every jet puts them there
            factors = flattening_factors(np.zeros(int(members.sum()), dtype=np.int64),
                                         np.asarray(jet_pt)[members],
                                         np.asarray(jet_sdmass)[members], percentile=percentile)
        else:
            factors = np.ones(int(members.sum()))
        weights[members] = factors / factors.sum()
    return weights * (len(weights) / 2)


# --- the node discriminants -----------------------------------------------------------------------


def node_discriminants(denominator: str = "QCD") -> list[Discriminant]:
    """The candidates D = g_A / (g_A + g_B) from the output nodes: A every single class and every
    named group of :data:`sophon.labels.GROUPS` (families, reweighting groups) but ``all``, B
    ``denominator``; a numerator that leaves B empty is skipped, a repeated class set kept once."""
    candidates, seen = [], set()
    for query in (*LABELS, *(name for name in GROUPS if name != "all")):
        classes = tuple(np.flatnonzero(class_mask(query)))
        if classes in seen:
            continue
        seen.add(classes)
        try:
            candidates.append(Discriminant(name=f"{query} vs {denominator}",
                                           numerator=(Term(query, 1.0, query),),
                                           denominator=denominator))
        except DiscriminantError:
            continue
    if not candidates:
        raise ValueError(f"no class or class group leaves the denominator "
                         f"{_shown(denominator)} non-empty")
    return candidates


def best_node_discriminant(scores: np.ndarray, weights: np.ndarray, is_signal: np.ndarray,
                           candidates: Sequence[Discriminant], efficiency: float = 0.5
                           ) -> tuple[Discriminant, float]:
    """The candidate with the highest background rejection at signal ``efficiency`` (ties: the
    larger area under the ROC curve) on jets with ``scores`` (N, 188), ``weights`` (N,) and
    ``is_signal`` (N,) bool (the rest is background), and that rejection."""
    is_signal = np.asarray(is_signal, bool)
    scores = np.asfortranarray(scores)
    cache: dict = {}
    best, best_key = None, None
    for candidate in candidates:
        roc = weighted_roc(candidate.log_odds(scores, cache), weights, is_signal, ~is_signal)
        key = (Rejection.at(roc, efficiency).rejection, roc.auc)
        if best_key is None or key > best_key:
            best, best_key = candidate, key
    return best, best_key[0]


# --- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """At the tightest cut keeping at least the asked signal efficiency: the signal efficiency
    reached, the background rejection 1 / efficiency (inf when no background passes), its MC
    error, and the effective number of background jets passing it rests on."""

    signal_efficiency: float
    rejection: float
    error: float
    effective_jets: float

    @classmethod
    def at(cls, roc: RocCurve, efficiency: float) -> Rejection:
        index = roc.at_signal_efficiency(efficiency)
        background = float(roc.background_efficiency[index])
        if background <= 0:
            return cls(float(roc.signal_efficiency[index]), math.inf, math.inf, 0.0)
        return cls(float(roc.signal_efficiency[index]), 1.0 / background,
                   float(roc.background_error[index]) / background**2,
                   float(roc.background_effective_jets[index]))


def _figures(roc: RocCurve) -> dict:
    entry = {f"{round(100 * e)}%": asdict(Rejection.at(roc, e)) for e in REPORTED_EFFICIENCIES}
    return {**entry, "auc": roc.auc}


@dataclass(frozen=True, eq=False)
class TransferResult:
    """A trained head and its held-out figures.

    ``head``: the trained :class:`TransferHead` (eval mode), preloaded from ``model``;
    ``node_discriminant``: the best node discriminant (chosen on the training half);
    ``head_roc`` and ``node_roc``: their weighted ROC curves on the held-out half; ``jets``: per
    set, its jets (``in_set``) and those trained on, validated on and held out (a set larger
    than ``max_jets_per_set`` is subsampled first); ``history``: per epoch the weighted
    training and validation loss; ``values``: the head's ln(p_signal / p_background) (N,) float32
    for every jet of the dataset; ``seconds``: wall time."""

    signal: str
    background: str
    head: TransferHead | HeadEnsemble
    model: Path
    node_discriminant: Discriminant
    head_roc: RocCurve
    node_roc: RocCurve
    jets: dict
    history: tuple[dict, ...]
    best_epoch: int
    values: np.ndarray
    options: TransferOptions
    seconds: float = 0.0

    def rejection(self, efficiency: float, *, nodes: bool = False) -> Rejection:
        """The held-out rejection at signal ``efficiency`` of the head (or of the best node
        discriminant)."""
        return Rejection.at(self.node_roc if nodes else self.head_roc, efficiency)

    def summary(self) -> dict:
        """The figures as JSON-ready data (what ``sophon transfer`` prints)."""
        efficiency = self.options.selection_efficiency
        node = self.node_discriminant
        return {
            "signal": self.signal, "background": self.background, "jets": self.jets,
            "head": {"preloaded_from": str(self.model), "hidden": self.head.hidden,
                     "epochs": self.options.epochs, "best_epoch": self.best_epoch,
                     "ensemble": self.options.ensemble},
            "held_out": {
                "head": _figures(self.head_roc),
                "best_node_discriminant": {
                    "name": node.name, "numerator": node.numerator[0].classes,
                    "denominator": node.denominator,
                    "chosen_on": f"the training half, at {efficiency:.0%} signal efficiency",
                    **_figures(self.node_roc)}},
            f"head_beats_nodes_at_{efficiency:.0%}": bool(
                self.rejection(efficiency).rejection
                > self.rejection(efficiency, nodes=True).rejection),
            "options": asdict(self.options), "seconds": round(self.seconds, 2)}


# --- the fit --------------------------------------------------------------------------------------


def _model_path(dataset: JetDataset, model: str | os.PathLike | None) -> Path:
    if model is not None:
        return Path(model)
    if dataset.score_head is None:
        raise ValueError(f"{dataset.path}: the dataset names no model head (metadata "
                         f"'{SCORE_HEAD_KEY}'); give the checkpoint that scored it (model=..., "
                         "sophon transfer --model)")
    return dataset.score_head


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """range(n) cut at random into (the rest, a part of ``fraction`` x n), each part holding at
    least one index."""
    order = rng.permutation(n)
    size = min(max(round(fraction * n), 1), n - 1)
    return np.sort(order[size:]), np.sort(order[:size])


def _concatenate(signal: _Jets, background: _Jets) -> tuple[_Jets, np.ndarray]:
    """Both sets' jets in one, signal first, and the (N,) bool signal mask."""
    joined = _Jets(*(np.concatenate([getattr(signal, name), getattr(background, name)])
                     for name in ("latents", "scores", "jet_pt", "jet_sdmass", "weights")),
                   rows=None)
    return joined, np.concatenate([np.ones(len(signal), bool), np.zeros(len(background), bool)])


def _weighted_loss(head: TransferHead, latents: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    losses = F.cross_entropy(head(latents), labels, reduction="none")
    return (losses * weights).sum() / weights.sum()


def _train(head: TransferHead, fit: tuple[torch.Tensor, ...], validation: tuple[torch.Tensor, ...],
           options: TransferOptions, rng: np.random.Generator,
           progress: Progress | None = None) -> tuple[list[dict], int]:
    """Minibatch Adam on ``fit`` (latents, labels, weights); the head ends with the weights of
    the epoch of lowest validation loss. Returns the history and that epoch (1-based).
    ``progress(epoch, epochs)`` is called after each epoch."""
    optimizer = torch.optim.Adam(head.parameters(), lr=options.learning_rate)
    latents, labels, weights = fit
    history, best_loss, best_epoch, best_state = [], math.inf, 0, None
    for epoch in range(1, options.epochs + 1):
        head.train()
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = order[start:start + options.batch_size]
            loss = _weighted_loss(head, latents[batch], labels[batch], weights[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * float(weights[batch].sum())
        head.eval()
        with torch.no_grad():
            validation_loss = float(_weighted_loss(head, *validation))
        history.append({"epoch": epoch, "loss": total / float(weights.sum()),
                        "validation_loss": validation_loss})
        if validation_loss < best_loss:
            best_loss, best_epoch = validation_loss, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        if progress is not None:
            progress(epoch, options.epochs)
    head.load_state_dict(best_state)
    head.eval()
    return history, best_epoch


def _member_progress(progress: Progress | None, member: int,
                     options: TransferOptions) -> Progress | None:
    """``progress`` over all members' epochs, for member ``member``'s training."""
    if progress is None:
        return None
    total = options.epochs * options.ensemble
    return lambda epoch, epochs: progress(member * options.epochs + epoch, total)


def fit_transfer(dataset: JetDataset | str | os.PathLike, signal: JetSet | str,
                 background: JetSet | str = "process:QCD", *,
                 model: str | os.PathLike | None = None,
                 options: TransferOptions = TransferOptions(),
                 progress: Progress | None = None) -> TransferResult:
    """Train a head on the latents of ``signal`` against ``background`` jets (:class:`JetSet`,
    or its text for :meth:`JetSet.parse`) of ``dataset``, preloaded from the head of ``model``
    (default: the checkpoint the dataset names for its scores), and evaluate it on the held-out
    half beside the best node discriminant. ``progress`` is called with (epochs done, epochs)
    after each epoch, and may raise to cancel the fit."""
    started = time.perf_counter()
    dataset = dataset if isinstance(dataset, JetDataset) else JetDataset(dataset)
    signal = signal if isinstance(signal, JetSet) else JetSet.parse(signal)
    background = background if isinstance(background, JetSet) else JetSet.parse(background)
    names = (signal.describe(), background.describe())
    model_path = _model_path(dataset, model)
    candidates = node_discriminants(options.denominator)
    sets = [_set_jets(dataset, signal, "signal"), _set_jets(dataset, background, "background")]
    _check_disjoint(*sets, names)
    rng = np.random.default_rng([options.seed, 17])
    trained, held_out, fit_rows, validation_rows, jets = [], [], [], [], {}
    for role, jets_of_set in zip(("signal", "background"), sets):
        in_set = len(jets_of_set)
        if in_set > options.max_jets_per_set:
            jets_of_set = jets_of_set.take(np.sort(rng.choice(
                len(jets_of_set), options.max_jets_per_set, replace=False)))
        training, test = _split(len(jets_of_set), options.test_fraction, rng)
        fit_part, validation_part = _split(len(training), options.validation_fraction, rng)
        offset = len(trained[0]) if trained else 0  # background rows follow the signal's
        trained.append(jets_of_set.take(training))
        held_out.append(jets_of_set.take(test))
        fit_rows.append(offset + fit_part)
        validation_rows.append(offset + validation_part)
        jets[role] = {"in_set": in_set, "train": len(fit_part),
                      "validation": len(validation_part), "held_out": len(test)}
    training_jets, training_signal = _concatenate(*trained)
    test_jets, test_signal = _concatenate(*held_out)
    # the node discriminant is chosen on all the jets the head learns from
    node, _ = best_node_discriminant(training_jets.scores, training_jets.weights, training_signal,
                                     candidates, options.selection_efficiency)

    latents = torch.tensor(training_jets.latents)
    labels = torch.from_numpy(training_signal.astype(np.int64))
    weights = torch.from_numpy(training_weights(
        training_jets.jet_pt, training_jets.jet_sdmass, training_signal,
        flatten=options.flatten, percentile=options.reweight_percentile).astype(np.float32))
    fit, validation = (torch.from_numpy(np.concatenate(rows)) for rows in (fit_rows,
                                                                           validation_rows))
    model = load_checkpoint_file(model_path)
    members, history, best_epoch = [], [], 0
    for member in range(options.ensemble):
        # the first member is the single head's training exactly; the others' seeds follow
        seed = options.seed if member == 0 else options.seed + 7919 * member
        torch.manual_seed(seed)  # dropout masks
        head = preloaded_head(model, dropout=options.dropout, seed=seed)
        member_history, member_best = _train(
            head, (latents[fit], labels[fit], weights[fit]),
            (latents[validation], labels[validation], weights[validation]), options,
            rng if member == 0 else np.random.default_rng([options.seed, 29, member]),
            _member_progress(progress, member, options))
        members.append(head)
        if member == 0:
            history, best_epoch = member_history, member_best
    head = members[0] if options.ensemble == 1 else HeadEnsemble(members)
    head_roc = weighted_roc(head.log_odds(test_jets.latents), test_jets.weights, test_signal,
                            ~test_signal)
    node_roc = weighted_roc(node.log_odds(np.asfortranarray(test_jets.scores)), test_jets.weights,
                            test_signal, ~test_signal)
    values = head.log_odds(_latents(dataset))
    return TransferResult(signal=names[0], background=names[1], head=head, model=model_path,
                          node_discriminant=node, head_roc=head_roc, node_roc=node_roc, jets=jets,
                          history=tuple(history), best_epoch=best_epoch, values=values,
                          options=options, seconds=time.perf_counter() - started)


# --- the new score as a column --------------------------------------------------------------------


def write_score_column(dataset: JetDataset, values: np.ndarray, output: str | os.PathLike, *,
                       name: str, description: str = "") -> list[Path]:
    """Write a copy of ``dataset`` with the per-jet ``values`` (N,) as the float32 column
    ``transfer_<name>`` (replacing one of that name), atomically. ``output``: the file for a
    one-file dataset, a directory (files keep their names) for a directory dataset; a shipped
    file (listed in data_manifest.yaml) is never overwritten. A compact dataset's score head is
    named again relative to the new file, so the copy must lie where the store accepts that head
    (inside the folder above the copy's folder: e.g. ``data/transfer/`` beside ``data/default/``).
    ``description`` is kept in the metadata (``extra["transfer"]``). Returns the files written."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a transfer column name is 1 to 48 letters, digits or '_', got "
                         f"{_shown(name)}")
    column = COLUMN_PREFIX + name
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (dataset.n_jets,):
        raise ValueError(f"{column}: {values.shape} values for the {dataset.n_jets} jets of "
                         f"{dataset.path}")
    output = Path(output)
    files = dataset.files
    targets = ([output] if len(files) == 1 and output.suffix == ".parquet"
               else [output / file.name for file in files])
    written, offset = [], 0
    for file, target in zip(files, targets):
        if target.exists() and verify_listed(target):
            raise ValueError(f"{target} is a shipped file (data_manifest.yaml); write the column "
                             "to a copy elsewhere")
        parquet = pq.ParquetFile(file)
        rows = parquet.metadata.num_rows
        table = parquet.read()
        if column in table.column_names:
            table = table.drop_columns([column])
        table = table.append_column(column, pa.array(values[offset:offset + rows]))
        metadata = read_metadata(table.schema, source=str(file))
        if metadata is not None:
            extra = dict(metadata.extra)
            extra["transfer"] = {**extra.get("transfer", {}), column: description}
            if dataset.score_head is not None:
                extra[SCORE_HEAD_KEY] = _score_head_from(dataset.score_head, target)
            table = table.replace_schema_metadata({
                **table.schema.metadata, DATASET_METADATA_KEY:
                    type(metadata)(**{**asdict(metadata), "extra": extra}).to_json()})
        group_rows = parquet.metadata.row_group(0).num_rows if parquet.num_row_groups else None
        written.append(write_table_atomic(table, target, row_group_size=group_rows))
        offset += rows
    return written


def _score_head_from(head: Path, target: Path) -> str:
    """``head`` relative to ``target``'s folder, refused where the store would refuse it."""
    folder = target.parent.resolve()
    if folder.parent not in head.resolve().parents:
        raise ValueError(f"{target}: the dataset's scores come from {head}, which a file there "
                         f"could not name (the store reads score heads inside {folder.parent} "
                         "only); write the copy to a folder beside the dataset's")
    return os.path.relpath(head.resolve(), folder)


# --- the command line ----------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:
    options = TransferOptions(epochs=args.epochs, batch_size=args.batch_size,
                              learning_rate=args.learning_rate, dropout=args.dropout,
                              test_fraction=args.test_fraction,
                              max_jets_per_set=args.max_jets_per_set,
                              flatten=not args.no_flatten,
                              denominator=args.denominator, seed=args.seed,
                              ensemble=args.ensemble)
    if (args.column is None) != (args.write is None):
        raise ValueError("--column and --write go together: the column's name and the copy of "
                         "the dataset that gets it")
    dataset = JetDataset(args.dataset)
    result = fit_transfer(dataset, args.signal, args.background, model=args.model,
                          options=options)
    summary = result.summary()
    if args.write is not None:
        written = write_score_column(
            dataset, result.values, args.write, name=args.column,
            description=f"ln(p_signal / p_background) of a head trained on {result.signal} "
                        f"against {result.background}")
        summary["written"] = {"column": COLUMN_PREFIX + args.column,
                              "files": [str(p) for p in written]}
    return report_json(summary, args.output)


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer", help="train a head on the latents of two jet sets; held-out rejection "
                         "against the best node discriminant")
    parser.add_argument("dataset", type=Path, help="scored dataset with latents (file or folder)")
    parser.add_argument("--signal", required=True,
                        help="process:NAME, classes:QUERY, rows:FILE or file:PATH (a bare name "
                             "is a process)")
    parser.add_argument("--background", default="process:QCD", help="as --signal")
    parser.add_argument("--model", type=Path, default=None,
                        help="the checkpoint whose head preloads the first layer (default: the "
                             "one the dataset names for its scores)")
    parser.add_argument("--epochs", type=int, default=TransferOptions.epochs)
    parser.add_argument("--batch-size", type=int, default=TransferOptions.batch_size)
    parser.add_argument("--learning-rate", type=float, default=TransferOptions.learning_rate)
    parser.add_argument("--dropout", type=float, default=TransferOptions.dropout)
    parser.add_argument("--test-fraction", type=float, default=TransferOptions.test_fraction,
                        help="share of each set held out for the figures")
    parser.add_argument("--max-jets-per-set", type=int, default=TransferOptions.max_jets_per_set)
    parser.add_argument("--no-flatten", action="store_true",
                        help="no flat (pT, mSD) reweighting: the sets are only balanced")
    parser.add_argument("--denominator", default=TransferOptions.denominator,
                        help="class query of the node discriminants' g_B")
    parser.add_argument("--seed", type=int, default=TransferOptions.seed)
    parser.add_argument("--ensemble", type=int, default=TransferOptions.ensemble, metavar="K",
                        help="train K heads on the same jets and average their ln(p_s/p_b)")
    parser.add_argument("--column", default=None, metavar="NAME",
                        help="write the head's per-jet value as column transfer_NAME ...")
    parser.add_argument("--write", type=Path, default=None, metavar="PATH",
                        help="... into this copy of the dataset (a file, or a folder for a "
                             "folder dataset)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the JSON here")
    parser.set_defaults(handler=_main)
