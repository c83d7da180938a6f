"""Benchmark of the core scan on SYNTHETIC jets, against a naive baseline in the same run.

(a) a class-set change: new D, thresholds for 9 efficiencies, 9 mSD histograms, process stack;
(b) moving to another efficiency. The naive way sorts D fully per change and histograms with masks.

    .venv/bin/python benchmarks/bench_core.py --jets 1000000 10000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sophon.discriminant import Discriminant, Term
from sophon.spectrum import DEFAULT_EFFICIENCIES, DEFAULT_MASS_BINNING, EfficiencyScan
from sophon.synthetic import make_synthetic

# the class sets a user clicks through: each change is a new numerator
CHANGES = ["X_bb", "X_cs | X_qq", "resonant & quarks == 3 & b == 1 & gluons == 0 & leptons == 0",
           "X_YY_bb*", "X_cc"]


def best_of(function, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def naive_change(scores, discriminant, mass, weights, codes, n_processes):
    values = discriminant.evaluate(scores)
    order = np.argsort(-values, kind="stable")
    accumulated = np.cumsum(weights[order])
    positions = np.minimum(np.searchsorted(accumulated, DEFAULT_EFFICIENCIES * accumulated[-1]),
                           len(values) - 1)
    thresholds = values[order][positions]
    edges = DEFAULT_MASS_BINNING.edges
    histograms = [np.histogram(mass[values >= t], edges, weights=weights[values >= t])[0]
                  for t in thresholds]
    passing = values >= thresholds[4]
    stack = [np.histogram(mass[passing & (codes == p)], edges,
                          weights=weights[passing & (codes == p)])[0] for p in range(n_processes)]
    return values, thresholds, histograms, stack


def naive_move(values, threshold, mass, weights, codes, n_processes):
    edges = DEFAULT_MASS_BINNING.edges
    passing = values >= threshold
    spectrum = np.histogram(mass[passing], edges, weights=weights[passing])[0]
    stack = [np.histogram(mass[passing & (codes == p)], edges,
                          weights=weights[passing & (codes == p)])[0] for p in range(n_processes)]
    return spectrum, stack, weights[passing].sum()


def run(n_jets: int) -> None:
    sample = make_synthetic(n_jets, seed=1, with_latents=False)
    scores = sample.scores  # Fortran order, as JetDataset provides
    mass = sample.columns["jet_sdmass"]
    weights = sample.columns["weight"]
    names, codes = np.unique(sample.columns["process"], return_inverse=True)
    codes = codes.astype(np.int32)
    mass_index = DEFAULT_MASS_BINNING.index(mass)  # once per dataset
    cache: dict = {}
    discriminants = [Discriminant(f"d{i}", (Term(q),)) for i, q in enumerate(CHANGES)]
    discriminants[0].log_odds(scores, cache)  # the denominator sum is cached once per dataset

    def ours(discriminant):
        values = discriminant.log_odds(scores, cache)
        return EfficiencyScan.build(values, mass_index, weights, codes, names)

    ours_times, naive_times = [], []
    for discriminant in discriminants:  # side by side, interleaved
        ours_times.append(best_of(lambda: ours(discriminant), 2)[0])
        naive_times.append(best_of(lambda: naive_change(scores, discriminant, mass, weights,
                                                        codes, len(names)), 1)[0])
    cold_time = best_of(lambda: EfficiencyScan.build(discriminants[1].log_odds(scores), mass_index,
                                                     weights, codes, names), 2)[0]
    scan = ours(discriminants[0])
    values = discriminants[0].evaluate(scores)

    def move_ours():
        return [(scan.spectrum(level), scan.stack(level), scan.selected_yield(level))
                for level in range(scan.n_levels)]

    move_time = best_of(move_ours, 5)[0] / scan.n_levels
    threshold = float(np.sort(values)[int(len(values) * 0.99)])
    naive_move_time = best_of(lambda: naive_move(values, threshold, mass, weights, codes,
                                                 len(names)), 2)[0]
    a_ours, a_naive = np.median(ours_times), np.median(naive_times)
    print(f"{n_jets:>11,d} jets | (a) class-set change: ours {a_ours * 1e3:8.1f} ms "
          f"(no cached denominator {cold_time * 1e3:.1f} ms), naive sort {a_naive * 1e3:8.1f} ms, "
          f"ratio {a_naive / a_ours:5.1f}x | (b) move efficiency: ours {move_time * 1e3:.3f} ms, "
          f"naive {naive_move_time * 1e3:.1f} ms, ratio {naive_move_time / move_time:,.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, nargs="+", default=[1_000_000])
    for n_jets in parser.parse_args().jets:
        run(n_jets)


if __name__ == "__main__":
    main()
