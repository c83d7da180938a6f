"""Pack a scored dataset into a compact file for shipping (``sophon package``).

The embedded default must fit a few tens of MB, so the packed file keeps what the app and the
notebooks need and drops what can be recomputed:

- the jets inside the model's training phase space only (by default 20 < mSD < 500 GeV, as the
  training selection; pT is already 200-2500 GeV in the SM sample): outside it the scores are
  extrapolations, and a handful of very light QCD jets (mSD of a few GeV) would otherwise take
  the tightest cuts;
- jet kinematics, ``event_id``/``jet_rank``, ``process``, ``weight``, ``umap_x``/``umap_y``;
- ``latent`` with its float32 mantissa rounded to ``latent_bits`` bits (7 bits: bfloat16
  precision, a relative error below 0.4 %) so that zstd compresses it; the column stays float32;
  or, with ``latent_codes``, as per-dimension 8-bit codes (:func:`sophon.store.encode_latents`,
  1 byte a dimension before compression);
- no score columns: the scores are the model head's softmax of the latent, recomputed at load
  time from the checkpoint named in the metadata (:mod:`sophon.store`, "scores from latents");
- the constituents (``part_*`` list columns, from the generated source file) of a random subset
  of ``constituent_jets`` jets, so rescoring and the jet view work; other jets hold empty lists;
- optionally *thinned* events (``thin_keep`` < 1): events none of whose jets is protected are
  kept with probability ``thin_keep`` and their weight divided by it; events with a protected
  jet are kept as they are. A jet is protected by either rule given: ``thin_qcd``, it has g_QCD
  (the summed probability of the 27 QCD classes) below that value; ``protect_efficiency``, it
  passes, for any of :data:`PROTECTING_DISCRIMINANTS`, the cut that keeps that fraction of all
  the weight (so every jet that those discriminants select at that efficiency or tighter is
  kept with its own weight; the generic "any resonance" one, (1 - g_QCD), bounds every
  discriminant with the QCD denominator since D <= 1 - g_QCD). Every weighted spectrum stays unbiased, and the sample can start
  from several times more QCD events in the same bytes: the jets that tight cuts select (for
  any discriminant with the QCD classes in the denominator, D <= 1 - g_QCD) are all kept, with
  their small weights, so that an efficiency of 1e-4 holds many jets rather than a few heavy
  ones. Only loose cuts see the heavier, thinned QCD-like jets.

Before writing, the scores recomputed from the rounded latents are compared with the stored ones
and the largest difference is reported (and refused above ``max_score_difference``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon.atomic import DATASET_METADATA_KEY
from sophon.discriminant import PRESETS, Discriminant, Term
from sophon.features import REQUIRED_COLUMNS
from sophon.labels import mask as class_mask
from sophon.manifest import sha256_file
from sophon.model import head_probabilities, load_checkpoint, load_checkpoint_file
from sophon.spectrum import thresholds_for_efficiencies
from sophon.store import (LATENT_CODES_KEY, SCORE_COLUMNS, SCORE_HEAD_KEY, DatasetError,
                          DatasetMetadata, JetDataset, dataset_files, decode_latents,
                          encode_latents, write_table_atomic)

__all__ = ["PackReport", "round_mantissa", "subset_lists", "thin_events",
           "PROTECTING_DISCRIMINANTS", "protected_by_discriminants", "cut_side_changes",
           "package_dataset", "rehead_dataset", "register_cli"]

CONSTITUENT_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c.startswith("part_"))


@dataclass(frozen=True)
class PackReport:
    path: Path
    n_jets: int
    constituent_jets: int
    bytes: int
    max_score_difference: float
    #: {preset: {efficiency: jets}} the jets inside the mass selection that pass the cut at that
    #: efficiency with the stored scores but not with the recomputed ones, or the reverse
    cut_side_changes: dict[str, dict[float, int]]


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 ``values`` rounded (to nearest) to ``bits`` mantissa bits, still float32.

    The dropped low bits become zeros, which is what lets a general-purpose compressor shrink the
    column; ``bits = 23`` returns the values unchanged.
    """
    if not 0 < bits <= 23:
        raise ValueError(f"mantissa bits must be in 1..23, not {bits}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if bits == 23:
        return values.copy()
    dropped = 23 - bits
    raw = values.view(np.uint32).astype(np.uint64)
    rounded = ((raw + (1 << (dropped - 1))) >> dropped) << dropped
    # a carry into the exponent is the correct rounding; only inf/nan inputs could overflow
    return rounded.astype(np.uint32).view(np.float32).reshape(values.shape)


def subset_lists(column: pa.Array | pa.ChunkedArray, keep: np.ndarray) -> pa.ListArray:
    """``column`` (a list column) with rows not in ``keep`` (bool, per row) made empty lists."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    new_lengths = np.where(keep, lengths, 0)
    new_offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)
    first = offsets[0]
    values = column.values.slice(first, offsets[-1] - first)
    particle_keep = np.repeat(keep, lengths)
    return pa.ListArray.from_arrays(pa.array(new_offsets), values.filter(pa.array(particle_keep)))


def thin_events(event_ids: np.ndarray, kept_as_is: np.ndarray, keep_probability: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-jet ``(keep, weight_factor)`` for thinning by event.

    ``event_ids`` (N,) event of each jet; ``kept_as_is`` (N,) bool: jets whose event must be kept
    unchanged. Other events are kept with probability ``keep_probability`` (one draw per event,
    so both jets of an event share it) and their weight multiplied by 1 / ``keep_probability``.
    """
    if not 0 < keep_probability <= 1:
        raise ValueError(f"keep probability must be in (0, 1], not {keep_probability}")
    _, event = np.unique(event_ids, return_inverse=True)
    n_events = int(event.max()) + 1 if len(event) else 0
    protected = np.bincount(event, weights=kept_as_is.astype(np.float64), minlength=n_events) > 0
    lucky = rng.random(n_events) < keep_probability
    keep_event = protected | lucky
    factor = np.where(protected, 1.0, 1.0 / keep_probability)
    return keep_event[event], factor[event]


#: The discriminants whose tight cuts thinning must not touch: the paper's presets and "any
#: resonance against QCD" (g_resonant / (g_resonant + g_QCD) = 1 - g_QCD).
PROTECTING_DISCRIMINANTS: tuple[Discriminant, ...] = (
    *(PRESETS[name] for name in ("X->bb vs QCD", "A1: X->cs", "A2: X->bb", "A3: X->b q q")),
    Discriminant("any resonance vs QCD", (Term("resonant", 1.0, "resonant"),)),
)


def protected_by_discriminants(scores: np.ndarray, weights: np.ndarray, efficiency: float,
                               discriminants: tuple[Discriminant, ...] = PROTECTING_DISCRIMINANTS
                               ) -> np.ndarray:
    """(N,) bool: the jets that pass, for at least one of ``discriminants``, the cut keeping the
    fraction ``efficiency`` of the total weight (``scores`` (N, 188), ``weights`` (N,))."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"protection efficiency must be in (0, 1], not {efficiency}")
    protected = np.zeros(len(weights), dtype=bool)
    for discriminant in discriminants:
        values = discriminant.log_odds(scores)
        cut = thresholds_for_efficiencies(values, weights, [efficiency])[0]
        protected |= values >= cut
    return protected


#: The cuts whose jets the quantisation of the latents is checked on (PackReport.cut_side_changes).
CHECKED_PRESETS = ("A1: X->cs", "A2: X->bb", "A3: X->b q q")
CHECKED_EFFICIENCIES = (1e-3, 1e-4)


def cut_side_changes(stored: np.ndarray, recomputed: np.ndarray, weights: np.ndarray,
                     presets: tuple[str, ...] = CHECKED_PRESETS,
                     efficiencies: tuple[float, ...] = CHECKED_EFFICIENCIES
                     ) -> dict[str, dict[float, int]]:
    """``{preset: {efficiency: n}}``: how many jets change side of the cut that keeps the fraction
    ``efficiency`` of the weight when the scores ``stored`` (N, 188) are replaced by
    ``recomputed`` (N, 188); each set of scores has its own threshold, as the app computes it
    from the file it reads."""
    changes: dict[str, dict[float, int]] = {}
    for name in presets:
        passing = []
        for scores in (stored, recomputed):
            values = PRESETS[name].log_odds(scores)
            cuts = thresholds_for_efficiencies(values, weights, list(efficiencies))
            passing.append([values >= cut for cut in cuts])
        changes[name] = {float(eps): int((before != after).sum())
                         for eps, before, after in zip(efficiencies, *passing)}
    return changes


def package_dataset(scored: str | os.PathLike, output: str | os.PathLike, *,
                    checkpoint: str | os.PathLike, constituents: str | os.PathLike | None = None,
                    constituent_jets: int = 2000, latent_bits: int = 7,
                    latent_codes: bool = False, seed: int = 0,
                    sdmass_range: tuple[float, float] | None = (20.0, 500.0),
                    thin_keep: float = 1.0, thin_qcd: float | None = 0.9,
                    protect_efficiency: float | None = None,
                    max_score_difference: float = 0.02, log=print) -> PackReport:
    """Write the packed file ``output`` from the scored dataset ``scored`` (see module docstring).

    ``constituents``: the JetClass-II-schema file(s) the dataset was scored from, row for row
    (checked on ``jet_pt``). ``checkpoint``: the model that scored it. ``sdmass_range``: keep
    jets with low < jet_sdmass < high (GeV); None keeps all. ``thin_keep``, ``thin_qcd``,
    ``protect_efficiency``: see the module docstring (``thin_keep`` 1.0: no thinning; a rule set
    to None is not used).
    """
    output, checkpoint = Path(output), Path(checkpoint)
    dataset = JetDataset(scored)
    if not dataset.has("latent"):
        raise DatasetError(f"{scored}: no 'latent' column to pack")
    model = load_checkpoint(checkpoint)
    codes = quantisation = None
    if latent_codes:
        codes, quantisation = encode_latents(dataset.latents)
        latents = decode_latents(codes, quantisation)
        encoding = "8-bit per-dimension codes of the latents"
    else:
        latents = round_mantissa(dataset.latents, latent_bits)
        encoding = f"{latent_bits}-bit latents"
    recomputed = head_probabilities(model, latents)
    difference = float(np.abs(recomputed - dataset.scores).max())
    log(f"scores from the {encoding} through {checkpoint.name}'s head differ from "
        f"the stored ones by at most {difference:.2e}")
    if difference > max_score_difference:
        raise DatasetError(f"{scored}: scores recomputed from the latents differ by {difference:.3g}"
                           f" (> {max_score_difference}); was it scored by {checkpoint}?")

    selected = np.ones(len(dataset), dtype=bool)
    if sdmass_range is not None:
        sdmass = dataset.column("jet_sdmass")
        selected = (sdmass > sdmass_range[0]) & (sdmass < sdmass_range[1])
        log(f"{int(selected.sum())} of {len(dataset)} jets have {sdmass_range[0]:g} < mSD < "
            f"{sdmass_range[1]:g} GeV")
    changes = cut_side_changes(dataset.scores[selected], recomputed[selected],
                               dataset.weights[selected])
    log("jets changing side of the cut with the recomputed scores: " + "; ".join(
        f"{name} " + ", ".join(f"{n} at {eps:g}" for eps, n in counts.items())
        for name, counts in changes.items()))
    rng = np.random.default_rng(seed)
    weight_factor = np.ones(len(dataset))
    if thin_keep < 1:
        inside = np.flatnonzero(selected)
        protected = np.zeros(len(inside), dtype=bool)
        rules = []
        if thin_qcd is not None:
            protected |= recomputed[inside][:, class_mask("QCD")].sum(axis=1) < thin_qcd
            rules.append(f"g_QCD < {thin_qcd:g}")
        if protect_efficiency is not None:
            protected |= protected_by_discriminants(recomputed[inside], dataset.weights[inside],
                                                    protect_efficiency)
            rules.append(f"passing eps = {protect_efficiency:g} of a protecting discriminant")
        if not rules:
            raise ValueError("thinning needs a protection rule (thin_qcd or protect_efficiency)")
        event_ids = (dataset.column("event_id") if dataset.has("event_id")
                     else np.arange(len(dataset)))
        keep, factor = thin_events(event_ids[inside], protected, thin_keep, rng)
        selected[inside[~keep]] = False
        weight_factor[inside] = factor
        log(f"thinning: events without a protected jet ({' or '.join(rules)}; "
            f"{int(protected.sum())} jets) kept with probability {thin_keep:g}: "
            f"{int(selected.sum())} jets left")
    kept = [c for c in dataset.columns if c not in set(SCORE_COLUMNS) and c != "latent"]
    table = pa.concat_tables([pq.read_table(f, columns=kept) for f in dataset_files(scored)])
    if thin_keep < 1:
        position = table.schema.get_field_index("weight")
        if position < 0:
            raise DatasetError(f"{scored}: thinning needs a 'weight' column")
        table = table.set_column(position, "weight",
                                 pa.array(table["weight"].to_numpy() * weight_factor))
    stored = latents if codes is None else codes
    table = table.append_column("latent", pa.FixedSizeListArray.from_arrays(
        pa.array(stored.reshape(-1)), stored.shape[1]))

    chosen = 0
    if constituents is not None and constituent_jets > 0:
        sources = [Path(constituents)] if Path(constituents).is_file() else dataset_files(constituents)
        source = pa.concat_tables([pq.read_table(f, columns=[*CONSTITUENT_COLUMNS, "jet_pt"])
                                   for f in sources])
        if source.num_rows != len(dataset) or not np.array_equal(
                source["jet_pt"].to_numpy(), dataset.column("jet_pt")):
            raise DatasetError(f"{constituents}: not the jets of {scored} row for row "
                               f"({source.num_rows} rows, jet_pt differs)")
        candidates = np.flatnonzero(selected)
        keep = np.zeros(len(dataset), dtype=bool)
        keep[rng.choice(candidates, min(constituent_jets, len(candidates)), replace=False)] = True
        chosen = int(keep.sum())
        for name in CONSTITUENT_COLUMNS:
            table = table.append_column(name, subset_lists(source[name], keep))
    table = table.filter(pa.array(selected))

    extra = {**dataset.metadata.extra, SCORE_HEAD_KEY: os.path.relpath(
        checkpoint.resolve(), output.resolve().parent), "score_head_sha256": sha256_file(checkpoint),
        "constituent_jets": chosen,
        "selection": (f"{sdmass_range[0]:g} < jet_sdmass < {sdmass_range[1]:g} GeV"
                      if sdmass_range is not None else "none"),
        "thinning": ({"protected_below_qcd_probability": thin_qcd,
                      "protected_at_efficiency": protect_efficiency,
                      "protecting_discriminants": [d.name for d in PROTECTING_DISCRIMINANTS],
                      "keep_probability": thin_keep, "seed": seed} if thin_keep < 1 else None)}
    if quantisation is None:
        extra["latent_mantissa_bits"] = latent_bits
    else:
        extra[LATENT_CODES_KEY] = quantisation
    extra.pop("source_file", None)
    metadata = DatasetMetadata(luminosity_fb=dataset.metadata.luminosity_fb,
                               model_id=dataset.metadata.model_id, extra=extra)
    table = table.replace_schema_metadata({DATASET_METADATA_KEY: metadata.to_json()})
    output.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(table, output, compression_level=19, row_group_size=16384)
    report = PackReport(output, table.num_rows, chosen, output.stat().st_size, difference, changes)
    log(f"wrote {output}: {report.n_jets} jets ({chosen} with constituents), "
        f"{report.bytes / 1e6:.1f} MB")
    return report


def _backbone_differences(before: dict, after: dict) -> list[str]:
    """Names of the tensors outside the head (``mod.fc.*``) that differ between two state
    dicts."""
    names = sorted(k for k in before.keys() | after.keys() if not k.startswith("mod.fc."))
    return [k for k in names if k not in before or k not in after
            or before[k].shape != after[k].shape or not bool((before[k] == after[k]).all())]


def rehead_dataset(packed: str | os.PathLike, checkpoint: str | os.PathLike,
                   output: str | os.PathLike | None = None, *, log=print) -> dict:
    """Point a packed dataset (scores from latents) at another checkpoint's head.

    The latents came from the backbone of the checkpoint the file names; they stay valid for a
    checkpoint with the same backbone and another head (``sophon train-head``), and then the new
    head's softmax of them is exactly what that checkpoint gives for those jets. So only the
    metadata changes (``score_head``, its sha256 and ``model_id``); the jets, weights and latents
    are written back unchanged (to ``output``, default in place, atomically). Refused when any
    tensor outside the head differs. Returns ``{preset: {efficiency: jets changing side}}``
    between the old and the new scores, each with its own cut (:func:`cut_side_changes`)."""
    packed, checkpoint = Path(packed), Path(checkpoint)
    output = packed if output is None else Path(output)
    dataset = JetDataset(packed)
    if dataset.score_head is None:
        raise DatasetError(f"{packed}: its scores are stored, not computed from latents by a "
                           f"head; rescore it instead")
    old = load_checkpoint_file(dataset.score_head, error=DatasetError)
    new = load_checkpoint_file(checkpoint, error=DatasetError)
    differing = _backbone_differences(old.state_dict(), new.state_dict())
    if differing:
        raise DatasetError(f"{checkpoint}: its backbone is not the one that made the latents of "
                           f"{packed} ({dataset.score_head.name}): {len(differing)} tensors "
                           f"differ, first {differing[0]}")
    # each checkpoint loaded once: the file's scores are the old head's softmax of its latents
    before = head_probabilities(old, dataset.latents)
    after = head_probabilities(new, dataset.latents)
    changes = cut_side_changes(before, after, dataset.weights)
    table = pq.read_table(packed)
    digest = sha256_file(checkpoint)
    extra = {**dataset.metadata.extra, "score_head_sha256": digest,
             SCORE_HEAD_KEY: os.path.relpath(checkpoint.resolve(), output.resolve().parent)}
    metadata = DatasetMetadata(luminosity_fb=dataset.metadata.luminosity_fb,
                               model_id=f"{checkpoint.name}@sha256:{digest[:12]}", extra=extra)
    table = table.replace_schema_metadata({DATASET_METADATA_KEY: metadata.to_json()})
    write_table_atomic(table, output, compression_level=19, row_group_size=16384)
    log(f"{output}: scores now from {checkpoint.name}'s head; jets changing side of the cut: "
        + "; ".join(f"{name} " + ", ".join(f"{n} at {eps:g}" for eps, n in counts.items())
                    for name, counts in changes.items()))
    return changes


def _main(args: argparse.Namespace) -> int:
    package_dataset(args.scored, args.output, checkpoint=args.model,
                    constituents=args.constituents, constituent_jets=args.constituent_jets,
                    latent_bits=args.latent_bits, latent_codes=args.latent_codes, seed=args.seed,
                    sdmass_range=None if args.all_masses else (args.min_sdmass, args.max_sdmass),
                    thin_keep=args.thin_keep, thin_qcd=args.thin_qcd,
                    protect_efficiency=args.protect_efficiency)
    return 0


def _rehead_main(args: argparse.Namespace) -> int:
    rehead_dataset(args.packed, args.model, args.output)
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "package", help="pack a scored dataset compactly (scores recomputed from the latents)")
    parser.add_argument("scored", type=Path, help="scored dataset (file or directory)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="packed parquet file")
    parser.add_argument("--model", required=True, type=Path,
                        help="the checkpoint that scored it (its head recomputes the scores)")
    parser.add_argument("--constituents", type=Path, default=None,
                        help="the JetClass-II-schema file(s) that were scored, for part_* columns")
    parser.add_argument("--constituent-jets", type=int, default=2000,
                        help="how many random jets keep their constituents")
    parser.add_argument("--latent-bits", type=int, default=7, help="latent mantissa bits kept")
    parser.add_argument("--latent-codes", action="store_true",
                        help="store the latents as per-dimension 8-bit codes instead")
    parser.add_argument("--min-sdmass", type=float, default=20.0, help="GeV (training selection)")
    parser.add_argument("--max-sdmass", type=float, default=500.0, help="GeV (training selection)")
    parser.add_argument("--all-masses", action="store_true", help="keep every jet")
    parser.add_argument("--thin-keep", type=float, default=1.0,
                        help="keep QCD-like events with this probability, weight x 1/p")
    parser.add_argument("--thin-qcd", type=float, default=None,
                        help="protect jets with g_QCD below this from thinning")
    parser.add_argument("--protect-efficiency", type=float, default=None,
                        help="protect jets passing this efficiency of any protecting "
                             "discriminant (the presets and 'any resonance vs QCD')")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_main)
    rehead = subparsers.add_parser(
        "rehead", help="point a packed dataset at a retrained head over the same backbone")
    rehead.add_argument("packed", type=Path, help="packed dataset file (scores from latents)")
    rehead.add_argument("--model", required=True, type=Path,
                        help="checkpoint with the same backbone and the new head")
    rehead.add_argument("-o", "--output", type=Path, default=None,
                        help="write here instead of in place")
    rehead.set_defaults(handler=_rehead_main)
