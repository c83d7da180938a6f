"""Benchmark of jet generation: accepted jets per second per core, vectorised versus naive.

Each configuration runs one chunk in this process (one core, timed in CPU seconds so that other
load on a shared machine matters little): Pythia 8, the detector emulation,
FastJet clustering, soft drop, N-subjettiness, truth labelling and the arrow table. The two paths
differ only in how the event record reaches NumPy:

* **vectorised** (production): ``Pythia.nextBatch`` fills an awkward array in C++ and
  :func:`sophon.generate.events.batch_from_awkward` flattens it (no Python per particle);
* **naive** (baseline): ``pythia.next()`` per event and a Python loop over ``pythia.event``
  reading every particle's id, status, history, momentum and vertex.

Both use the same seeds, so they produce the same events and jets; the script checks that.

    .venv/bin/python benchmarks/bench_generate.py                      # default set
    .venv/bin/python benchmarks/bench_generate.py --events 2000 --samples qcd sm:QCD --mpi on
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from sophon.generate import plan_sm, plan_training
from sophon.generate.events import EventBatch, Generator
from sophon.generate.pipeline import ChunkSpec, process_batch


class NaiveGenerator(Generator):
    """The same Pythia, read particle by particle in Python."""

    def next_batch(self, n_events: int) -> EventBatch:
        pythia = self._pythia
        rows: list[tuple] = []
        offsets = [0]
        weights = []
        for _ in range(n_events):
            while not pythia.next():
                pass
            event = pythia.event
            for i in range(event.size()):
                p = event[i]
                rows.append((p.id(), p.status(), p.mother1(), p.mother2(), p.daughter1(),
                             p.daughter2(), p.px(), p.py(), p.pz(), p.e(), p.m(), p.xProd(),
                             p.yProd(), p.zProd(), p.tProd()))
            offsets.append(len(rows))
            weights.append(pythia.infoPython().weight())
        table = np.array(rows, dtype=np.float64)
        ints = table[:, :6].astype(np.int32)
        self.n_generated += n_events
        self.weight_sum += float(np.sum(weights))
        return EventBatch(np.array(offsets, dtype=np.int64), *ints.T, *table[:, 6:].T,
                          np.array(weights, dtype=np.float64))


def run(spec: ChunkSpec, generator_class) -> tuple[pa.Table, float, dict]:
    """One chunk on one core; returns the table, CPU seconds and per-stage CPU seconds.

    CPU time of this (single-threaded) process is the per-core cost; unlike wall-clock time it
    hardly depends on what else runs on the machine."""
    start = time.process_time()
    generator = generator_class(spec.settings)
    timings = {"init": time.process_time() - start, "pythia": 0.0}
    rng = np.random.default_rng(spec.numpy_seed)
    tables = []
    done = 0
    while done < spec.n_events:
        n = min(spec.batch_size, spec.n_events - done)
        tick = time.process_time()
        batch = generator.next_batch(n)
        timings["pythia"] += time.process_time() - tick  # generation + reading the record
        tables.append(process_batch(batch, spec, rng, first_event_id=done, timings=timings))
        done += n
    return pa.concat_tables(tables), time.process_time() - start, timings


def spec_for(sample: str, n_events: int, mpi: bool, seed: int) -> ChunkSpec:
    if sample.startswith("sm:"):
        return plan_sm(n_events, seed, processes={sample[3:]: 1.0}, chunk_events=n_events,
                       mpi=mpi)[0]
    return plan_training(n_events, seed, parts={sample: 1.0}, chunk_events=n_events, mpi=mpi)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--samples", nargs="+", default=["qcd", "res34p", "sm:QCD"],
                        help="training parts (res2p, res34p, qcd) or sm:<process>")
    parser.add_argument("--mpi", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    # Warm up once (imports, numba kernel, FastJet banner) so that no row pays for it.
    run(spec_for("res2p", 20, False, args.seed), Generator)

    print(f"{'sample':>10} {'MPI':>4} {'events':>6} {'jets':>6} | {'jets/s/core':>11} "
          f"{'naive':>7} {'speed-up':>8} | {'ev/s':>6} {'Pythia %':>8} | stages (ms/event)")
    for sample in args.samples:
        for mpi in args.mpi:
            spec = spec_for(sample, args.events, mpi == "on", args.seed)
            table, seconds, timings = run(spec, Generator)
            rate = table.num_rows / seconds
            naive_rate = float("nan")
            if not args.skip_naive:
                naive_table, naive_seconds, _ = run(spec, NaiveGenerator)
                naive_rate = naive_table.num_rows / naive_seconds
                if not naive_table.equals(table):
                    raise SystemExit(f"{sample}: the naive path produced different jets")
            stages = " ".join(f"{k} {1e3 * v / args.events:.2f}" for k, v in timings.items())
            print(f"{sample:>10} {mpi:>4} {args.events:>6} {table.num_rows:>6} | {rate:>11.0f} "
                  f"{naive_rate:>7.0f} {rate / naive_rate:>7.2f}x | "
                  f"{args.events / seconds:>6.0f} {100 * timings['pythia'] / seconds:>7.0f}% | "
                  f"{stages}", flush=True)


if __name__ == "__main__":
    main()
