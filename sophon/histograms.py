"""The histograms of an efficiency scan at one level, written to ROOT, ``.npz`` or JSON.

:func:`scan_histograms` gives, for one level of an :class:`~sophon.spectrum.EfficiencyScan`, one
1-d ``hist.Hist`` per process and their sum (key :data:`TOTAL_KEY`): ``Weight`` storage (sum of
weights in expected events, and of squared weights: the variance from simulation statistics),
axis ``mass`` in GeV labelled by the scan, flow bins included. With ``every_level=True`` it adds
the sum at every level of the scan (the spectrum versus efficiency), keys :func:`level_key`
(``total_level_0`` for the loosest cut ...), each named ``total at efficiency E``.
:func:`write_histograms` writes them atomically:

- ``.root`` (uproot): a ``TH1D`` per histogram under its key (the process name with every
  character outside ``[A-Za-z0-9_]`` replaced by ``_``; the title is the process name), and a
  ``TObjString`` :data:`METADATA_KEY` holding the JSON metadata (level, efficiency, threshold,
  keys -> processes, binning, with ``every_level`` ``levels``: key -> level, efficiency,
  threshold and name; and what the caller adds, e.g. the luminosity). This is the layout
  pyhf/cabinetry ntuple-free workflows read (one histogram per sample and region).
- ``.npz``: ``edges`` (bins+1,), ``values`` and ``variances`` (histograms, bins+2) with flow bins,
  ``keys`` and ``processes`` (histograms,), ``metadata`` (the JSON text).
- ``.json``: ``{"metadata": ..., "histograms": {key: {"process", "edges", "values",
  "variances"}}}`` with the same arrays as lists.

:func:`read_histograms` reads any of the three back into the same dictionary of ``hist.Hist``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from sophon import atomic
from sophon.spectrum import EfficiencyScan

__all__ = ["TOTAL_KEY", "METADATA_KEY", "FORMATS", "histogram_key", "level_key",
           "scan_histograms", "scan_metadata", "write_histograms", "read_histograms"]

TOTAL_KEY = "total"
METADATA_KEY = "sophon_metadata"
FORMATS = (".root", ".npz", ".json")
_LEVEL_KEY = re.compile(r"total_level_\d+")


def histogram_key(process: str) -> str:
    """A ROOT-safe key for a process name: ``W+jets`` -> ``W_jets`` (a name that would read as
    :data:`TOTAL_KEY`, :data:`METADATA_KEY` or a :func:`level_key` gets ``process_`` before it)."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", process)
    reserved = key in (TOTAL_KEY, METADATA_KEY) or _LEVEL_KEY.fullmatch(key)
    return key if key and not reserved else f"process_{key}"


def level_key(level: int) -> str:
    """The key of the sum over processes at scan level ``level``: ``total_level_3``."""
    return f"total_level_{int(level)}"


def _level_name(scan: EfficiencyScan, level: int) -> str:
    return f"total at efficiency {float(scan.efficiencies[level]):.3g}"


def _keys(processes) -> list[str]:
    keys, seen = [], set()
    for process in processes:
        key = histogram_key(process)
        while key in seen:  # two names that differ only in replaced characters
            key += "_"
        seen.add(key)
        keys.append(key)
    return keys


def scan_histograms(scan: EfficiencyScan, level: int, *,
                    every_level: bool = False) -> dict[str, object]:
    """Key -> 1-d ``hist.Hist`` over mass (GeV, ``Weight`` storage, flow bins filled) at
    ``level``: one per process of the scan (keys from :func:`histogram_key`, the hist's ``name``
    is the process name) and their sum under :data:`TOTAL_KEY`; with ``every_level``, also the
    sum at each level of the scan (keys :func:`level_key`)."""
    if not 0 <= level < scan.n_levels:
        raise ValueError(f"level {level} is outside the scan's 0..{scan.n_levels - 1}")
    stack = scan.to_hist(level)
    histograms: dict[str, object] = {}
    for key, process in zip(_keys(scan.process_names), scan.process_names):
        one = stack[{"process": process}]
        one.name = process
        histograms[key] = one
    total = scan.spectrum_hist(level)
    total.name = TOTAL_KEY
    histograms[TOTAL_KEY] = total
    if every_level:
        for index in range(scan.n_levels):
            one = scan.spectrum_hist(index)
            one.name = _level_name(scan, index)
            histograms[level_key(index)] = one
    return histograms


def _achieved(scan: EfficiencyScan, level: int) -> float | None:
    achieved = float(scan.achieved_efficiencies[level])
    return None if np.isnan(achieved) else achieved


def scan_metadata(scan: EfficiencyScan, level: int, extra: dict | None = None, *,
                  every_level: bool = False) -> dict:
    """What identifies the histograms of ``level``: efficiency (requested and achieved),
    threshold on the scanned value, processes by key, mass binning (GeV) and label, with
    ``every_level`` the ``levels`` (key -> level, efficiencies, threshold, name), plus ``extra``
    (e.g. ``{"luminosity_fb": 138, "discriminant": "A1: X->cs"}``)."""
    metadata = {
        "level": int(level),
        "efficiency": float(scan.efficiencies[level]),
        "achieved_efficiency": _achieved(scan, level),
        "threshold": float(scan.thresholds[level]),
        "processes": dict(zip(_keys(scan.process_names), scan.process_names)),
        "mass_label": scan.mass_label,
        "binning": {"bins": scan.binning.bins, "low": scan.binning.low, "high": scan.binning.high},
        "units": "values: expected events (sum of weights); variances: sum of squared weights",
    }
    if every_level:
        metadata["levels"] = {
            level_key(index): {"level": index, "efficiency": float(scan.efficiencies[index]),
                               "achieved_efficiency": _achieved(scan, index),
                               "threshold": float(scan.thresholds[index]),
                               "name": _level_name(scan, index)}
            for index in range(scan.n_levels)}
    if extra:
        metadata.update(extra)
    return metadata


def write_histograms(scan: EfficiencyScan, level: int, path: str | os.PathLike, *,
                     metadata: dict | None = None, every_level: bool = False) -> Path:
    """Write the histograms of ``scan`` at ``level`` (:func:`scan_histograms`; with
    ``every_level`` also the sum at every level) to ``path``, in the format of its suffix
    (``.root``, ``.npz`` or ``.json``), atomically. ``metadata`` is added to
    :func:`scan_metadata`'s (it must be JSON-serialisable). Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown histogram format {path.suffix!r}; use one of "
                         f"{', '.join(FORMATS)}")
    histograms = scan_histograms(scan, level, every_level=every_level)
    info = scan_metadata(scan, level, metadata, every_level=every_level)
    with atomic.atomic_output(path) as temporary:
        if suffix == ".root":
            uproot = _import_uproot()
            with uproot.recreate(temporary) as file:
                for key, histogram in histograms.items():
                    file[key] = histogram
                file[METADATA_KEY] = json.dumps(info, sort_keys=True)
        elif suffix == ".npz":
            arrays = _arrays(histograms)
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays, metadata=np.array(json.dumps(info, sort_keys=True)))
        else:
            arrays = _arrays(histograms)
            document = {"metadata": info, "histograms": {
                key: {"process": str(process), "edges": arrays["edges"].tolist(),
                      "values": values.tolist(), "variances": variances.tolist()}
                for key, process, values, variances in zip(arrays["keys"], arrays["processes"],
                                                           arrays["values"], arrays["variances"])}}
            temporary.write_text(json.dumps(document, indent=1, sort_keys=True))
    return path


def _arrays(histograms: dict) -> dict[str, np.ndarray]:
    first = next(iter(histograms.values()))
    return {
        "edges": np.asarray(first.axes[0].edges, dtype=np.float64),
        "keys": np.array(list(histograms)),
        "processes": np.array([h.name for h in histograms.values()]),
        "values": np.stack([h.values(flow=True) for h in histograms.values()]),
        "variances": np.stack([h.variances(flow=True) for h in histograms.values()]),
    }


def _histogram(edges: np.ndarray, values: np.ndarray, variances: np.ndarray, name: str,
               label: str):
    import hist

    histogram = hist.Hist(hist.axis.Variable(edges, name="mass", label=label),
                          storage=hist.storage.Weight())
    view = histogram.view(flow=True)
    view.value[...] = values
    view.variance[...] = variances
    histogram.name = name
    return histogram


def read_histograms(path: str | os.PathLike) -> tuple[dict[str, object], dict]:
    """``(key -> hist.Hist, metadata)`` from a file :func:`write_histograms` wrote (any of the
    three formats); a file that is not one names itself and what is missing."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".root":
        uproot = _import_uproot()
        with uproot.open(path) as file:
            if METADATA_KEY not in file:
                raise ValueError(f"{path}: no {METADATA_KEY!r} (not written by write_histograms)")
            info = json.loads(str(file[METADATA_KEY]))
            names = {**info["processes"], TOTAL_KEY: TOTAL_KEY,
                     **{key: level["name"] for key, level in info.get("levels", {}).items()}}
            histograms = {}
            for key, name in names.items():
                if key not in file:
                    raise ValueError(f"{path}: no histogram {key!r}, which its "
                                     f"{METADATA_KEY!r} lists")
                stored = file[key]
                histograms[key] = _histogram(stored.axis().edges(), stored.values(flow=True),
                                             stored.variances(flow=True), name,
                                             info["mass_label"])
        return histograms, info
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as stored:
            info = json.loads(str(stored["metadata"]))
            return {str(key): _histogram(stored["edges"], values, variances, str(process),
                                         info["mass_label"])
                    for key, process, values, variances in zip(
                        stored["keys"], stored["processes"], stored["values"],
                        stored["variances"])}, info
    if suffix == ".json":
        document = json.loads(path.read_text())
        info = document["metadata"]
        return {key: _histogram(np.asarray(h["edges"]), np.asarray(h["values"]),
                                np.asarray(h["variances"]), h["process"], info["mass_label"])
                for key, h in document["histograms"].items()}, info
    raise ValueError(f"{path}: unknown histogram format {path.suffix!r}; use one of "
                     f"{', '.join(FORMATS)}")


def _import_uproot():
    try:
        import uproot
    except ModuleNotFoundError as error:
        if error.name != "uproot":
            raise
        from sophon.extras import MissingExtraError

        raise MissingExtraError("ROOT histogram files (sophon.histograms)", "root",
                                ("uproot",)) from None
    return uproot
