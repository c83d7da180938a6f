"""Benchmark of the exact Dask scan (sophon.dask_scan) on SYNTHETIC jets, against the in-memory
scan (sophon.analysis.DatasetAnalysis) side by side in the same run.

For each size it writes (once; kept for the next run) a dataset of parquet parts of ``--part-jets``
synthetic jets each (no latents: 188 score columns and the jet columns, about 0.8 kB per jet),
then times, for the A1 X->cs discriminant at the nine default efficiencies:

- ``dask``: :meth:`DaskScanner.jet_scan` (all jets, then QCD as reference) and
  :meth:`DaskScanner.event_scan` on a LocalCluster of ``--workers`` one-thread processes, with
  the driver's peak memory above its baseline while the scans run;
- ``memory``: in a fresh process, loading the dataset and the same scans with
  :class:`DatasetAnalysis` (the cold path: the columns read once), then a warm repeat, and that
  process's peak memory (a warm change: A2 X->bb on the loaded scores); skipped above ``--in-memory-max-jets`` (its scores alone take 0.75 GB
  per million jets);

checks that both give the same thresholds and jet counts, and projects the Dask scan to 100M
jets on a few cluster sizes from a fit of time = a + b * jets / workers over the sizes run.

    .venv/bin/python benchmarks/bench_dask.py --jets 1000000 10000000 30000000
    .venv/bin/python benchmarks/bench_dask.py --jets 1000000 --workers 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

from sophon.discriminant import PRESETS
from sophon.store import DatasetMetadata, write_dataset
from sophon.synthetic import make_synthetic

DISCRIMINANT = PRESETS["A1: X->cs"]
EVENT_DISCRIMINANT = PRESETS["W'->WWW triboson"]
PROJECTED_JETS = 100_000_000
PROJECTED_WORKERS = (8, 32, 128)


def write_parts(folder: Path, n_jets: int, part_jets: int) -> Path:
    """A synthetic dataset of ``n_jets`` in parts of ``part_jets`` (event ids unique across
    parts); reused when its marker says it is complete."""
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == f"{n_jets} {part_jets}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    metadata = DatasetMetadata(luminosity_fb=100.0, model_id="synthetic",
                               extra={"synthetic": True})
    events = 0
    for number, start in enumerate(range(0, n_jets, part_jets)):
        sample = make_synthetic(min(part_jets, n_jets - start), seed=1000 + number,
                                with_latents=False)
        sample.columns["event_id"] = sample.columns["event_id"] + events
        events += len(sample.columns["event_id"]) // 2
        write_dataset(folder / f"part-{number:05d}.parquet", sample.columns,
                      scores=sample.scores, metadata=metadata)
        del sample
    marker.write_text(f"{n_jets} {part_jets}")
    return folder


class PeakMemory:
    """The peak resident memory of this process above its value at entry (bytes), sampled
    every 5 ms in a thread while the block runs."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.peak = 0

    def __enter__(self):
        self._baseline = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss - self._baseline)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss - self._baseline)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def dask_scans(folder: Path, client) -> dict:
    from sophon.dask_scan import DaskScanner

    scanner = DaskScanner(folder, client=client)
    with PeakMemory() as memory:
        jet_time, scan = timed(lambda: scanner.jet_scan(DISCRIMINANT))
        report = scanner.last_report
        qcd_time, qcd_scan = timed(lambda: scanner.jet_scan(DISCRIMINANT, reference="QCD"))
        event_time, event_scan = timed(lambda: scanner.event_scan(EVENT_DISCRIMINANT))
    return {"jet_s": jet_time, "jet_qcd_s": qcd_time, "event_s": event_time,
            "driver_peak_mb": memory.peak / 1e6, "partitions": len(scanner.partitions),
            "candidates": report.candidates, "passes": report.passes,
            "thresholds": scan.thresholds.tolist(), "jet_counts": scan.jet_counts.tolist(),
            "qcd_thresholds": qcd_scan.thresholds.tolist(),
            "event_thresholds": event_scan.thresholds.tolist()}


def _in_memory(folder: str, queue) -> None:
    from sophon.analysis import DatasetAnalysis
    from sophon.store import JetDataset

    load_time, analysis = timed(lambda: DatasetAnalysis(JetDataset(folder, validate=False)))
    cold_time, scan = timed(lambda: analysis.jet_scan(DISCRIMINANT))
    qcd_time, qcd_scan = timed(lambda: analysis.jet_scan(DISCRIMINANT, reference="QCD"))
    event_time, event_scan = timed(lambda: analysis.event_scan(EVENT_DISCRIMINANT))
    # another discriminant on the scores already loaded: a change in the app
    warm_time, _ = timed(lambda: analysis.jet_scan(PRESETS["A2: X->bb"]))
    queue.put({"load_s": load_time, "jet_s": cold_time, "jet_qcd_s": qcd_time,
               "event_s": event_time, "warm_jet_s": warm_time,
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
               "thresholds": scan.thresholds.tolist(), "jet_counts": scan.jet_counts.tolist(),
               "qcd_thresholds": qcd_scan.thresholds.tolist(),
               "event_thresholds": event_scan.thresholds.tolist()})


def in_memory_scans(folder: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_in_memory, args=(str(folder), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def projection(rows: list[dict], workers: int) -> list[str]:
    """time = a + b * jets / workers fitted to the Dask jet scans; 100M jets on a few sizes."""
    jets = np.array([row["jets"] for row in rows], dtype=np.float64)
    seconds = np.array([row["dask"]["jet_s"] for row in rows])
    if len(rows) >= 2:
        b, a = np.polyfit(jets / workers, seconds, 1)
        a = max(a, 0.0)
    else:
        a, b = 0.0, seconds[0] / (jets[0] / workers)
    lines = [f"projection (time = {a:.2f} s + {b * 1e6:.3f} s per million jets per worker, "
             f"fitted on {len(rows)} size(s) with {workers} worker(s)):"]
    candidates = max(row["dask"]["candidates"] / row["jets"] for row in rows)
    for n in PROJECTED_WORKERS:
        lines.append(f"  {PROJECTED_JETS / 1e6:.0f}M jets on {n:3d} workers: jet scan "
                     f"~{a + b * PROJECTED_JETS / n:7.1f} s (2 passes), driver receives "
                     f"~{candidates * PROJECTED_JETS:,.0f} cut-bucket jets "
                     f"(~{candidates * PROJECTED_JETS * 40 / 1e6:.0f} MB)")
    lines.append("  (the fit assumes the data is read at the rate measured here; on a cluster "
                 "it is the file system's rate per worker)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, nargs="+", default=[1_000_000, 10_000_000, 30_000_000])
    parser.add_argument("--part-jets", type=int, default=250_000,
                        help="jets per parquet part (one row group, one partition each)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--memory-limit", default="auto", help="per worker, e.g. 2GB")
    parser.add_argument("--in-memory-max-jets", type=int, default=10_000_000)
    parser.add_argument("--folder", type=Path, default=Path("build/bench_dask"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    from sophon.dask_scan import local_client

    rows = []
    client = local_client(args.workers, memory_limit=args.memory_limit)
    try:
        for n_jets in args.jets:
            clock = time.perf_counter()
            folder = write_parts(args.folder / f"jets-{n_jets}", n_jets, args.part_jets)
            print(f"{n_jets:,} jets in {folder} ({time.perf_counter() - clock:.0f} s to "
                  "write or find)", flush=True)
            row = {"jets": n_jets, "dask": dask_scans(folder, client)}
            if n_jets <= args.in_memory_max_jets:
                row["memory"] = in_memory_scans(folder)
            rows.append(row)
            report(row, args.workers)
    finally:
        client.close()
        client.cluster.close()
    print()
    for line in projection(rows, args.workers):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


def report(row: dict, workers: int) -> None:
    dask, memory = row["dask"], row.get("memory")
    print(f"  dask ({workers} workers, {dask['partitions']} partitions, {dask['passes']} passes):"
          f" jet scan {dask['jet_s']:.2f} s, QCD reference {dask['jet_qcd_s']:.2f} s, event scan "
          f"{dask['event_s']:.2f} s; driver peak +{dask['driver_peak_mb']:.0f} MB; "
          f"{dask['candidates']:,} jets sent to the driver")
    if memory is None:
        print(f"  memory: skipped (needs about {row['jets'] * 0.85e-6:.0f} GB)")
        return
    same = all(dask[key] == memory[key] for key in ("thresholds", "jet_counts", "qcd_thresholds",
                                                    "event_thresholds"))
    print(f"  memory: load {memory['load_s']:.2f} s, first jet scan {memory['jet_s']:.2f} s "
          f"(reads the columns), QCD reference {memory['jet_qcd_s']:.2f} s, event scan "
          f"{memory['event_s']:.2f} s, warm jet scan {memory['warm_jet_s']:.2f} s; peak "
          f"{memory['peak_mb']:.0f} MB")
    print(f"  same thresholds and jet counts: {'yes' if same else 'NO'}", flush=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
