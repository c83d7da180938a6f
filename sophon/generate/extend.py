"""Extend an SM sample with more events of some processes above a higher pTHat (``sophon
extend-sm``).

The statistics of tight cuts on QCD come from QCD events that reach the trigger (pT sum of the
two leading jets above 800 GeV), and most QCD events generated from pTHat 200 GeV never do. An
*extension* sample of the same processes generated from a higher ``pTHatMin`` b (same bias power
k, luminosity, collision energy, MPI and selection) spends its events where the jets are. The
two are combined without bias:

- below b only the base sample has events: they keep their weights;
- above b both estimate the same cross-section. An event generated at pTHat p would weigh
  ``w_base(p) = C_base (a / p)^k`` in the base sample (pTHatMin a) and
  ``w_ext(p) = C_ext (b / p)^k`` in the extension, where C is the file's
  ``weight_per_unit_event_weight`` of that process. The generated densities are
  L dsigma/dp / w(p), so the minimum-variance combination gives every event in the overlap,
  of either sample, the weight ``1 / (1 / w_base(p) + 1 / w_ext(p))``. The ratio
  ``R = w_ext(p) / w_base(p) = (C_ext / C_base) (b / a)^k`` does not depend on p: base events
  above b are scaled by ``R / (1 + R)``, extension events by ``1 / (1 + R)``.

A base event's pTHat follows from its weight, ``p = a (C_base / w)^(1 / k)`` (the Pythia event
weight is ``(pTHatMin / pTHat)^k``), so the combination needs a biased base sample (k > 0).
Extension events get event ids after the base's. The output is written atomically, row group by
row group (the files carry constituents and are GB-sized). With ``sdmass_range`` only the jets
with low < mSD < high GeV are written (``sophon package`` keeps no other, so scoring them would
be wasted; about half the jets of the default's samples lie outside 20-500 GeV); weights are
per event, so a jet's weight does not depend on which of its event's jets are kept.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon.atomic import publish, temporary_beside
from sophon.generate.writer import read_generation_metadata, with_metadata

__all__ = ["ExtensionReport", "process_pt_hat_min", "overlap_scale", "extend_sm", "register_cli"]

#: what base and extension must share for their weights to describe the same collisions
_SAME = ("luminosity_fb", "bias_power", "ecm_gev", "mpi", "selection", "trigger")


@dataclass(frozen=True)
class ExtensionReport:
    path: Path
    base_jets: int
    extension_jets: int
    #: per extended process: R = w_ext(p) / w_base(p) (base events above b scaled by R/(1+R))
    ratios: dict[str, float]


def process_pt_hat_min(metadata: dict, process: str) -> float:
    """The pTHat cut (GeV) ``process`` was generated from: its own entry in the generation
    metadata, else the sample's (files written before per-process cuts have only that)."""
    return float(metadata["processes"][process].get("pt_hat_min_gev", metadata["pt_hat_min_gev"]))


def overlap_scale(base: dict, extension: dict, process: str) -> float:
    """R = w_ext(p) / w_base(p) for ``process`` from the two files' generation metadata."""
    power = float(base["bias_power"])
    c_base = base["processes"][process]["weight_per_unit_event_weight"]
    c_ext = extension["processes"][process]["weight_per_unit_event_weight"]
    return (c_ext / c_base) * (process_pt_hat_min(extension, process)
                               / process_pt_hat_min(base, process)) ** power


def _check_compatible(base_path: Path, base: dict, extension_path: Path, extension: dict) -> None:
    for key in _SAME:
        if base.get(key) != extension.get(key):
            raise ValueError(f"{extension_path}: {key} {extension.get(key)!r} differs from "
                             f"{base.get(key)!r} in {base_path}")
    if not float(base["bias_power"]) > 0:
        raise ValueError(f"{base_path}: unbiased (bias power 0): an event's pTHat cannot be read "
                         f"from its weight")
    unknown = set(extension["processes"]) - set(base["processes"])
    if unknown:
        raise ValueError(f"{extension_path}: processes {sorted(unknown)} are not in {base_path}")
    for process in extension["processes"]:
        low, high = process_pt_hat_min(base, process), process_pt_hat_min(extension, process)
        if not high > low:
            raise ValueError(f"{extension_path}: {process} pTHatMin {high:g} GeV must be above "
                             f"the base's {low:g} GeV")


def _scaled(batch: pa.RecordBatch, factors: dict[str, np.ndarray]) -> pa.RecordBatch:
    """``batch`` with its weights multiplied by ``factors[process]`` (a function of weight)."""
    process = batch.column(batch.schema.get_field_index("process")).to_numpy(zero_copy_only=False)
    weight = batch.column(batch.schema.get_field_index("weight")).to_numpy()
    scale = np.ones(len(weight))
    for name, factor in factors.items():
        members = process == name
        scale[members] = factor(weight[members])
    position = batch.schema.get_field_index("weight")
    return batch.set_column(position, batch.schema.field(position), pa.array(weight * scale))


def _inside(batch: pa.RecordBatch, sdmass_range: tuple[float, float] | None) -> pa.RecordBatch:
    """The rows of ``batch`` with low < jet_sdmass < high (GeV); all when ``sdmass_range`` is None."""
    if sdmass_range is None:
        return batch
    sdmass = batch.column(batch.schema.get_field_index("jet_sdmass")).to_numpy()
    return batch.filter(pa.array((sdmass > sdmass_range[0]) & (sdmass < sdmass_range[1])))


def extend_sm(base_path: str | os.PathLike, extension_path: str | os.PathLike,
              output: str | os.PathLike, *, batch_rows: int = 20_000,
              sdmass_range: tuple[float, float] | None = None) -> ExtensionReport:
    """Write ``output``: the SM sample ``base_path`` combined with the extension sample
    ``extension_path`` (see the module docstring for the weights), only the jets with
    low < mSD < high GeV when ``sdmass_range`` is given. The report counts the jets written."""
    base_path, extension_path, output = Path(base_path), Path(extension_path), Path(output)
    base, extension = read_generation_metadata(base_path), read_generation_metadata(extension_path)
    _check_compatible(base_path, base, extension_path, extension)
    power = float(base["bias_power"])
    ratios = {name: overlap_scale(base, extension, name) for name in extension["processes"]}

    def base_factor(name: str):
        c_base, ratio = base["processes"][name]["weight_per_unit_event_weight"], ratios[name]
        low, high = process_pt_hat_min(base, name), process_pt_hat_min(extension, name)

        def factor(weight: np.ndarray) -> np.ndarray:
            pt_hat = low * (c_base / weight) ** (1.0 / power)
            return np.where(pt_hat >= high, ratio / (1.0 + ratio), 1.0)
        return factor

    base_factors = {name: base_factor(name) for name in ratios}
    extension_factors = {name: (lambda weight, r=ratios[name]: np.full(len(weight), 1 / (1 + r)))
                         for name in ratios}
    base_file, extension_file = pq.ParquetFile(base_path), pq.ParquetFile(extension_path)
    if extension_file.schema_arrow.remove_metadata() != base_file.schema_arrow.remove_metadata():
        raise ValueError(f"{extension_path}: columns differ from {base_path}")
    if sdmass_range is not None and "jet_sdmass" not in base_file.schema_arrow.names:
        raise ValueError(f"{base_path}: no 'jet_sdmass' column for the mSD window")
    event_offset = int(pq.read_table(base_path, columns=["event_id"])["event_id"]
                       .to_numpy().max(initial=-1)) + 1
    metadata = {**base, "extension": {
        "file": extension_path.name, "seed": extension["seed"],
        "pt_hat_min_gev": {name: process_pt_hat_min(extension, name) for name in ratios},
        "n_events": extension["n_events"], "processes": extension["processes"],
        "event_id_offset": event_offset, "overlap_ratio": ratios,
        "chunks": extension["chunks"], "weight": "above the extension's pTHatMin, every event "
        "of an extended process weighs 1 / (1 / w_base(pTHat) + 1 / w_ext(pTHat))",
        "sdmass_window_gev": None if sdmass_range is None else list(sdmass_range)}}
    schema = with_metadata(base_file.schema_arrow.empty_table(), metadata,
                           luminosity_fb=base["luminosity_fb"]).schema
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(output)
    writer = pq.ParquetWriter(temporary, schema, compression="zstd",
                              use_compliant_nested_type=False)  # keep "item"
    written = {"base": 0, "extension": 0}
    try:
        for batch in base_file.iter_batches(batch_size=batch_rows):
            batch = _inside(batch, sdmass_range)
            writer.write_batch(_scaled(batch, base_factors).cast(schema))
            written["base"] += batch.num_rows
        for batch in extension_file.iter_batches(batch_size=batch_rows):
            batch = _scaled(_inside(batch, sdmass_range), extension_factors)
            written["extension"] += batch.num_rows
            position = batch.schema.get_field_index("event_id")
            ids = batch.column(position).to_numpy() + event_offset
            batch = batch.set_column(position, batch.schema.field(position), pa.array(ids))
            writer.write_batch(batch.cast(schema))
        writer.close()
        publish(temporary, output)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return ExtensionReport(output, written["base"], written["extension"], ratios)


def _main(args: argparse.Namespace) -> int:
    window = None if args.sdmass_window is None else tuple(args.sdmass_window)
    if window is not None and not window[0] < window[1]:
        raise ValueError(f"--sdmass-window {window[0]:g} {window[1]:g}: the low edge must be "
                         "below the high one")
    report = extend_sm(args.base, args.extension, args.output, sdmass_range=window)
    print(f"wrote {report.path}: {report.base_jets} jets of {args.base} and "
          f"{report.extension_jets} of {args.extension}; base events above the extension's "
          "pTHatMin scaled by " + ", ".join(f"{name} {ratio / (1 + ratio):.4f}"
                                            for name, ratio in report.ratios.items()))
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "extend-sm", help="combine an SM sample with an extension sample generated from a "
                          "higher pTHat (unbiased weights; see sophon.generate.extend)")
    parser.add_argument("base", type=Path, help="the SM sample (SM.parquet)")
    parser.add_argument("extension", type=Path,
                        help="SM.parquet of the same settings from a higher --pt-hat-min")
    parser.add_argument("-o", "--output", required=True, type=Path, help="combined SM.parquet")
    parser.add_argument("--sdmass-window", type=float, nargs=2, default=None,
                        metavar=("LOW", "HIGH"), help="write only jets with LOW < mSD < HIGH GeV "
                        "(sophon package keeps 20-500 GeV: the others need no scoring)")
    parser.set_defaults(handler=_main)
