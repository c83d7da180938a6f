"""Jet generation with Pythia 8 and FastJet, written in the JetClass-II parquet schema.

The published JetClass-II data cannot be downloaded here, so the project makes its own:

* :func:`generate_training`: a *mini JetClass-II*: generic resonances X (m_X 15-500 GeV, broad
  pT) decaying to the 15 two-prong final states, X -> Y Y -> three/four prongs
  (0.2 < m_Y/m_X < 0.8, neutral and charged Y, all-hadronic, Y -> l l, Y -> tau tau and
  Y -> l nu), and QCD multijets, labelled by truth matching with the JetClass-II index
  (:mod:`sophon.generate.truth`). Files ``Res2P.parquet``, ``Res34P.parquet``, ``QCD.parquet``.
* :func:`generate_sm`: a Standard Model collision sample (QCD, W+jets, Z+jets, ttbar,
  single top, diboson, Higgs) behind a boosted trigger (pT sum of the two leading R = 0.8 jets
  > 800 GeV), those two jets kept, weighted to a luminosity: ``SM.parquet`` with ``event_id``,
  ``jet_rank``, ``process`` and ``weight`` (expected events in ``luminosity_fb``).

Both run on all cores with a progress bar, are reproducible from a seed and write atomically; a
failing worker raises :class:`GenerationError` naming its chunk. The physics choices (detector
emulation, no pileup, labelling, processes, trigger) are documented in ``docs/generation.md``
and in the submodules: :mod:`~sophon.generate.settings` (process cards),
:mod:`~sophon.generate.events` (Pythia), :mod:`~sophon.generate.detector`,
:mod:`~sophon.generate.jets`, :mod:`~sophon.generate.truth`, :mod:`~sophon.generate.writer`,
:mod:`~sophon.generate.pipeline` (one chunk) and :mod:`~sophon.generate.driver` (whole runs).

Command line::

    sophon generate training --events 20000 --seed 1 -o data/train
    sophon generate sm --events 20000 --seed 1 --lumi 138 -o data/sm
    sophon extend-sm data/sm/SM.parquet data/qcd300/SM.parquet -o data/combined/SM.parquet
"""

from __future__ import annotations

import argparse
import sys

from sophon.extras import require_all

# Pythia 8, FastJet and numba come with the `generate` extra: without them, say so here, before
# any submodule fails on its own import.
require_all("generate", "sophon.generate (event generation with Pythia 8 and FastJet)")

from sophon.generate.driver import (  # noqa: E402
    GenerationReport, generate_sm, generate_training, plan_sm, plan_training, run_chunks)
from sophon.generate import extend  # noqa: E402
from sophon.generate.events import GenerationError  # noqa: E402
from sophon.generate.pipeline import ChunkSpec, JetSelection, run_chunk  # noqa: E402
from sophon.generate.settings import SM_PROCESSES, TRAINING_PARTS, TwoBodyDecay  # noqa: E402
from sophon.generate.writer import (  # noqa: E402
    JETCLASS_SCHEMA, SM_SCHEMA, read_generation_metadata)

__all__ = [
    "generate_training",
    "generate_sm",
    "plan_training",
    "plan_sm",
    "run_chunks",
    "run_chunk",
    "ChunkSpec",
    "JetSelection",
    "GenerationReport",
    "GenerationError",
    "JETCLASS_SCHEMA",
    "SM_SCHEMA",
    "SM_PROCESSES",
    "TRAINING_PARTS",
    "read_generation_metadata",
    "register_cli",
]


def _named_numbers(text: str | None, known, what: str, quantity: str, *, unit: str = "",
                   default: float | None = None) -> dict[str, float] | None:
    """``"a=2,b=1"`` into {name: positive number}, each name one of ``known`` (a ``what``).
    A name without ``=value`` takes ``default`` (refused when there is none); ``quantity`` and
    ``unit`` name the number in the messages, e.g. "pTHat cut" and " of GeV"."""
    if not text:
        return None
    numbers: dict[str, float] = {}
    for item in text.split(","):
        name, equals, value = (part.strip() for part in item.partition("="))
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
        try:
            number = float(value) if equals else default
        except ValueError:
            raise ValueError(f"{quantity} of {name!r} must be a number{unit}, "
                             f"not {value!r}") from None
        if number is None or not number > 0:
            raise ValueError(f"{quantity} of {name!r} must be a positive number{unit}, "
                             f"not {value!r}")
        numbers[name] = number
    return numbers


def _shares(text: str | None, known: dict, what: str) -> dict[str, float] | None:
    """``"a,b"`` (equal shares) or ``"a=2,b=1"`` into a share mapping."""
    return _named_numbers(text, known, what, "share", default=1.0)


def _cuts(text: str | None) -> dict[str, float] | None:
    """``"QCD=250,ttbar=180"`` into per-process pTHat cuts in GeV (each needs its value)."""
    return _named_numbers(text, SM_PROCESSES, "process", "pTHat cut", unit=" of GeV")


def _run(args: argparse.Namespace) -> int:
    try:
        return _generate(args)
    except GenerationError as error:
        print(f"sophon generate: error: {error}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    common = dict(seed=args.seed, workers=args.workers, mpi=not args.no_mpi,
                  chunk_events=args.chunk_events, ecm=args.ecm,
                  extra_settings=tuple(args.pythia or ()), progress=not args.quiet)
    if args.sample == "training":
        decay = TwoBodyDecay.parse(args.decay) if args.decay else None
        report = generate_training(args.output, args.events,
                                   parts=_shares(args.parts, TRAINING_PARTS, "part"),
                                   x_mass=args.x_mass, decay=decay, **common)
    else:
        report = generate_sm(args.output, args.events,
                             processes=_shares(args.processes, SM_PROCESSES, "process"),
                             luminosity_fb=args.lumi, pt_hat_min=args.pt_hat_min,
                             process_pt_hat_min=_cuts(args.process_pt_hat_min),
                             bias_power=args.bias_power, **common)
    print(report.summary())
    for path in report.files:
        print(f"wrote {path}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``sophon generate {training,sm}`` and ``sophon extend-sm``
    (:mod:`sophon.generate.extend`)."""
    parser = subparsers.add_parser(
        "generate", help="generate jets with Pythia 8 + FastJet in the JetClass-II schema",
        description="Generate a mini JetClass-II training sample or a weighted SM sample "
                    "(see docs/generation.md).")
    parser.add_argument("sample", choices=("training", "sm"), help="which sample to generate")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--events", type=int, required=True, help="events to generate")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all cores)")
    parser.add_argument("--chunk-events", type=int, default=1000,
                        help="events per chunk, the unit of work and of seeding (default 1000)")
    parser.add_argument("--no-mpi", action="store_true",
                        help="switch off multi-parton interactions (faster, less realistic)")
    parser.add_argument("--ecm", type=float, default=13_000.0, help="collision energy in GeV")
    parser.add_argument("--pythia", action="append", metavar="SETTING",
                        help="extra Pythia setting, e.g. '24:onMode = off' (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    training = parser.add_argument_group("training sample")
    training.add_argument("--parts", help="parts and shares, e.g. 'res2p=1,res34p=2,qcd=1' "
                                          f"(default {TRAINING_PARTS})")
    training.add_argument("--x-mass", type=float, default=None,
                          help="fix m_X (GeV) instead of drawing it in 15-500 GeV")
    training.add_argument("--decay", metavar="QUARKS",
                          help="instead of the parts: a resonance decaying to two quarks, e.g. "
                               "'bs' for X->bs (no JetClass-II class): the file X_bs.parquet "
                               "holds the jets containing both quarks, jet_label -1")
    sm = parser.add_argument_group("SM sample")
    sm.add_argument("--processes", help="processes and shares, e.g. 'QCD=3,ttbar=1' "
                                        f"(default: all of {', '.join(SM_PROCESSES)})")
    sm.add_argument("--lumi", type=float, default=138.0, help="luminosity in fb^-1 (default 138)")
    sm.add_argument("--pt-hat-min", type=float, default=200.0,
                    help="generator pTHat cut in GeV (default 200; see docs/generation.md)")
    sm.add_argument("--process-pt-hat-min", metavar="CUTS",
                    help="per-process pTHat cuts in GeV replacing --pt-hat-min for those "
                         "processes, e.g. 'QCD=250'")
    sm.add_argument("--bias-power", type=float, default=4.0,
                    help="oversample high pTHat as pTHat^power, with compensating weights "
                         "(default 4; 0 for unweighted events)")
    parser.set_defaults(handler=_run)
    extend.register_cli(subparsers)
