"""The shared set-up of the workshop notebooks: which dataset, which model, which jets.

Every notebook starts with::

    import _workshop
    path, is_synthetic = _workshop.open_workshop_dataset()

which opens the embedded default dataset (``sophon.manifest.DEFAULT_DATASET``, the scored SM
collision sample under ``data/default``) when it is there, and otherwise writes a SYNTHETIC
stand-in (:func:`sophon.synthetic.write_synthetic_dataset`) into a temporary folder and says so.
Synthetic jets are test data, not physics: the plots only look like the paper's on the default
dataset.

Notebook 4 (the model) also uses :func:`workshop_model` (the project's trained model when
``data_manifest.yaml`` lists one, else a Sophon-architecture model with seeded random weights)
and :func:`workshop_jets` (jets with constituents from the default dataset, else a handful
generated on the spot with Pythia 8 + FastJet through :mod:`sophon.generate`). Notebook 6 (files
and figures) reads the published Delphes example file through :func:`delphes_example`.

Nothing here draws: the plots are the app's views (``app.views``), the numbers the library's.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository
    sys.path.insert(0, str(REPOSITORY_ROOT))

from sophon.discriminant import cut_on_d  # noqa: E402
from sophon.manifest import DEFAULT_DATASET  # noqa: E402

__all__ = ["open_workshop_dataset", "workshop_model", "workshop_jets", "WorkshopJets",
           "check_top_peak", "check_triboson", "check_triboson_selection",
           "event_significance",
           "find_process", "spectrum_peak", "scan_table", "SYNTHETIC_JETS", "SYNTHETIC_SEED",
           "scratch_dir", "default_dataset_present", "delphes_example", "DELPHES_EXAMPLE",
           "REPOSITORY_ROOT", "DEFAULT_DATASET"]

#: Size and seed of the synthetic stand-in: big enough for smooth spectra down to efficiency
#: 1e-3, small enough to write in about two seconds on a laptop.
SYNTHETIC_JETS = 60_000
SYNTHETIC_SEED = 2405

_SYNTHETIC_NOTE = (
    "*** SYNTHETIC TEST DATA, NOT PHYSICS ***\n"
    "The embedded default dataset ({default}) is not there yet, so this notebook runs on\n"
    "{n:,} synthetic jets (sophon.synthetic, seed {seed}): invented mass shapes and scores that\n"
    "merely favour each jet's true class. Every step below works the same way, but the numbers\n"
    "and plots look like the paper's only on the default dataset.")

#: The published Delphes example file (10 events, the Delphes card of the JetClass-II
#: generation), in the reference folder beside the checkout when it is there.
DELPHES_EXAMPLE = REPOSITORY_ROOT.parent / "shared" / "reference" / "events_delphes_example.root"

_scratch: Path | None = None


def scratch_dir() -> Path:
    """A temporary folder for this kernel's files, removed when the kernel exits."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="sophon-workshop-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return Path(path).resolve().relative_to(REPOSITORY_ROOT)
    except ValueError:
        return Path(path)


def default_dataset_present() -> bool:
    """Whether the embedded default dataset has been put in place (``data/default``)."""
    path = Path(DEFAULT_DATASET)
    return path.is_file() or (path.is_dir() and any(path.glob("*.parquet")))


def delphes_example() -> Path | None:
    """The Delphes example file (:data:`DELPHES_EXAMPLE`), or None (and a note saying how to
    use one of your own) when it is not there."""
    if DELPHES_EXAMPLE.is_file():
        print(f"Using the Delphes example file {DELPHES_EXAMPLE.name}")
        return DELPHES_EXAMPLE
    print(f"The Delphes example file is not at {DELPHES_EXAMPLE}: the Delphes cells are skipped.\n"
          "Set `example` to a Delphes ROOT file of your own (tree 'Delphes') to run them.")
    return None


def open_workshop_dataset(n_jets: int = SYNTHETIC_JETS,
                          seed: int = SYNTHETIC_SEED) -> tuple[Path, bool]:
    """``(path, is_synthetic)``: the embedded default dataset when it exists, else a synthetic
    stand-in of ``n_jets`` jets written into a temporary folder (and a loud note saying so)."""
    if default_dataset_present():
        path = Path(DEFAULT_DATASET)
        print(f"Using the embedded default dataset: {path}")
        return path, False
    from sophon.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(scratch_dir() / "synthetic.parquet", n_jets, seed)
    print(_SYNTHETIC_NOTE.format(default=_shown(Path(DEFAULT_DATASET)),
                                 n=n_jets, seed=seed))
    return path, True


# --- small numeric helpers shared by the notebooks (printouts, not plots) ---------------------
def find_process(dataset, *candidates: str) -> str | None:
    """The first process of ``dataset`` whose name contains one of ``candidates`` (case-blind),
    or None."""
    for candidate in candidates:
        for name in dataset.process_names:
            if candidate.lower() in name.lower():
                return name
    return None


def spectrum_peak(scan, level: int, processes=None) -> float:
    """The mass (GeV, bin centre) of the fullest bin of ``scan``'s spectrum at ``level``
    (:meth:`~sophon.spectrum.EfficiencyScan.peak` has its events, MC error and effective jets)."""
    return scan.peak(level, processes).mass


def scan_table(scan, levels=None):
    """One row per efficiency level of an :class:`~sophon.spectrum.EfficiencyScan`: the cut on
    ln(g_A/g_B) and on D, the jets passing, their effective number ((sum w)^2 / sum w^2), their
    weighted yield, where the spectrum peaks, and that peak bin's events with their MC error
    (sqrt of the sum of w^2) and effective jets: a peak of a few effective jets is a few jets."""
    import polars as pl

    levels = range(scan.n_levels) if levels is None else levels
    rows = []
    for level in levels:
        cut = float(scan.thresholds[level])
        peak = scan.peak(level)
        rows.append({"efficiency": float(scan.efficiencies[level]), "cut ln(gA/gB)": cut,
                     "cut D": cut_on_d(cut), "jets": scan.selected_jets(level),
                     "effective jets": round(scan.effective_jets(level), 1),
                     "yield": scan.selected_yield(level),
                     "peak mSD [GeV]": peak.mass, "peak bin events": round(peak.events),
                     "± MC": round(peak.error), "peak effective jets": round(peak.effective_jets, 1)})
    return pl.DataFrame(rows)


# --- notebook 4: the model and a few jets with constituents -----------------------------------
def _manifest_checkpoint() -> Path | None:
    """The model checkpoint (not ONNX) of ``data_manifest.yaml`` that scored the default
    dataset (its metadata names it), else the first one listed; verified. None when the
    manifest lists no checkpoint."""
    from sophon.manifest import load_manifest, verify

    checkpoints = [entry for entry in load_manifest()
                   if entry.kind == "model" and not entry.path.endswith(".onnx")]
    if not checkpoints:
        return None
    scored_by = ""
    if default_dataset_present():
        import pyarrow.parquet as pq

        from sophon.store import read_metadata

        default = Path(DEFAULT_DATASET)
        first = default if default.is_file() else sorted(default.glob("*.parquet"))[0]
        metadata = read_metadata(pq.read_schema(first))
        scored_by = metadata.model_id.split("@")[0] if metadata is not None else ""
    chosen = next((entry for entry in checkpoints if Path(entry.path).name == scored_by),
                  checkpoints[0])
    return verify(chosen)


def workshop_model(seed: int = 7):
    """``(model, trained, model_id)``: the project's trained Sophon model when the manifest lists
    one, else the Sophon architecture with seeded random weights (``trained`` False: its scores
    are meaningless, the mechanics are the same)."""
    from sophon.manifest import sha256_file
    from sophon.model import SophonModel, load_checkpoint, randomize_weights_

    checkpoint = _manifest_checkpoint()
    if checkpoint is not None:
        model_id = f"{checkpoint.name}@sha256:{sha256_file(checkpoint)[:12]}"
        print(f"Using the project's trained model {_shown(checkpoint)}")
        return load_checkpoint(checkpoint).eval(), True, model_id
    print("*** RANDOM WEIGHTS ***\n"
          "No trained model is listed in data_manifest.yaml yet, so this is the Sophon\n"
          f"architecture with seeded random weights (seed {seed}). Its scores are meaningless;\n"
          "building inputs, scoring, comparing and exporting work exactly the same way.")
    model = randomize_weights_(SophonModel(), seed=seed).eval()
    return model, False, f"random-weights-seed-{seed}"


@dataclass
class WorkshopJets:
    """A few jets in the JetClass-II schema (``table``, with constituents) and, when they come
    from a scored dataset, that dataset, their rows in it and its stored scores and latents."""

    table: object  # pyarrow.Table
    generated: bool
    dataset_path: Path | None = None
    rows: np.ndarray | None = None
    stored_scores: np.ndarray | None = None
    stored_latents: np.ndarray | None = None
    stored_model_id: str = ""


def _dataset_jets(path: Path, n_jets: int) -> WorkshopJets | None:
    """Up to ``n_jets`` jets of the dataset at ``path`` that carry constituents, or None."""
    from sophon.features import REQUIRED_COLUMNS
    from sophon.store import JET_COLUMNS, JetDataset

    dataset = JetDataset(path)
    if not all(dataset.has(c) for c in REQUIRED_COLUMNS):
        return None
    lengths = dataset.frame(["part_px"])["part_px"].list.len().fill_null(0).to_numpy()
    rows = np.flatnonzero(lengths > 0)[:n_jets]
    if not len(rows):
        return None
    names = list(dict.fromkeys([*REQUIRED_COLUMNS, *JET_COLUMNS,
                                *(c for c in ("jet_label", "process") if dataset.has(c))]))
    table = dataset.frame(names, rows).to_arrow()
    return WorkshopJets(table=table, generated=False, dataset_path=path, rows=rows,
                        stored_scores=np.asarray(dataset.scores[rows]),
                        stored_latents=(np.asarray(dataset.latents[rows])
                                        if dataset.has("latent") else None),
                        stored_model_id=dataset.metadata.model_id)


def workshop_jets(n_jets: int = 12, n_events: int = 24, seed: int = 11) -> WorkshopJets:
    """Jets with constituents: from the default dataset when it stores some, else generated now
    (``n_events`` Pythia events of the mini JetClass-II training sample, multi-parton
    interactions off, in this process: a few seconds)."""
    if default_dataset_present():
        found = _dataset_jets(Path(DEFAULT_DATASET), n_jets)
        if found is not None:
            print(f"{len(found.rows)} jets with constituents from the default dataset "
                  f"(rows {found.rows.tolist()})")
            return found
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sophon.generate import generate_training

    with warnings.catch_warnings():  # tqdm's note that ipywidgets is missing, although no bar
        warnings.simplefilter("ignore")
        report = generate_training(scratch_dir() / "generated", n_events, seed=seed, workers=1,
                                   mpi=False, progress=False)
    table = pa.concat_tables([pq.read_table(f) for f in report.files])
    print(f"Generated {report.n_events} events with Pythia 8 + FastJet (no MPI, seed {seed}) in "
          f"{report.wall_seconds:.1f} s: {report.n_jets} jets "
          + ", ".join(f"{name} {n}" for name, n in report.jets_per_file.items()))
    return WorkshopJets(table=table, generated=True)


# --- notebook 5: checks of the exercises ------------------------------------------------------
def check_top_peak(analysis, discriminant, efficiency: float = 1e-3,
                   window: tuple[float, float] = (150.0, 200.0), enrichment: float = 5.0) -> bool:
    """Does ``discriminant``, cut to keep ``efficiency`` of the QCD jets, show the top peak? True
    when all three hold:

    - the ttbar jets it keeps peak in the top-mass ``window`` (GeV),
    - it enriches ttbar at least ``enrichment``-fold (ttbar's share of the selected yield over
      its share before any cut),
    - the summed spectrum of everything it keeps peaks in ``window``: the top peak stands out.

    The plain X->bb tagger keeps some ttbar jets too, and those peak at the top mass, but what
    it keeps in all peaks at the Z and Higgs masses: the third condition rejects it. Prints the
    numbers, with the effective jets and MC error (sqrt of the sum of w^2) of the peak bin.
    Needs a ``ttbar`` process; False while ``discriminant`` is None."""
    if discriminant is None:
        print("Not answered yet: set `my_top` to a Discriminant and run this cell again.")
        return False
    scan = analysis.jet_scan(discriminant, reference="QCD")
    level = scan.nearest_level(efficiency)
    names = list(scan.process_names)
    top = next((n for n in names if n.lower() in ("ttbar", "top", "tt")), None)
    if top is None:
        print("This dataset has no ttbar process to check against.")
        return False
    peak = scan.peak(level)
    top_peak = scan.peak(level, [names.index(top)])
    after, before = scan.process_shares(level)[top], scan.process_shares(0)[top]
    gain = after / before if before > 0 else 0.0
    in_window = scan.window_yield(level, window)
    print(f"{discriminant.name!r} at {scan.efficiencies[level]:.2g} of the QCD jets: "
          f"{scan.selected_jets(level):,} jets ({scan.effective_jets(level):,.1f} effective).\n"
          f"  {top} jets: peak at {top_peak.mass:.0f} GeV, {after:.0%} of the yield "
          f"({gain:.0f} times their share before the cut).\n"
          f"  Everything kept: peak at {peak.mass:.0f} GeV, {peak}; "
          f"[{window[0]:g}, {window[1]:g}] GeV holds {in_window.events / scan.selected_yield(level):.0%} "
          f"of the yield.")
    selects_tops = window[0] <= top_peak.mass < window[1] and gain >= enrichment
    stands_out = window[0] <= peak.mass < window[1]
    if not selects_tops:
        print("=> Not a top tagger yet: which classes hold t -> b W -> b q q'?")
    elif not stands_out:
        print("=> It keeps top jets, but what it keeps in all peaks elsewhere: the top peak does "
              "not stand out. Which classes does a top jet resemble, and which does it not?")
    else:
        print("=> It selects top jets, and the top peak stands out of the summed spectrum.")
    return bool(selects_tops and stands_out)


def check_triboson(discriminant) -> bool:
    """Is ``discriminant`` the paper's W'->WWW event-level discriminant (same class weights, same
    denominator, event level)? Prints the differences; False while ``discriminant`` is None."""
    from sophon.discriminant import PRESETS

    if discriminant is None:
        print("Not answered yet: set `my_triboson` to a Discriminant and run this cell again.")
        return False
    reference = PRESETS["W'->WWW triboson"]
    problems = []
    if discriminant.level != "event":
        problems.append(f"level is {discriminant.level!r}: the sum over the two leading jets "
                        "needs level='event'")
    if sorted(discriminant.denominator_classes) != sorted(reference.denominator_classes):
        problems.append(f"denominator {discriminant.denominator!r} differs from the paper's "
                        f"{reference.denominator!r}")
    from sophon.labels import LABELS

    mine, theirs = discriminant.numerator_weights, reference.numerator_weights
    for index in np.flatnonzero(~np.isclose(mine, theirs)):
        problems.append(f"class {LABELS[index]}: weight {mine[index]:g}, the paper's "
                        f"{theirs[index]:g}")
    if problems:
        print("Not the same as the paper's discriminant yet:\n  " + "\n  ".join(problems[:8])
              + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""))
        return False
    print("Same class weights, denominator and level as the paper's W'->WWW discriminant.")
    return True


def _event_shares(analysis, discriminant, efficiency: float):
    """(process shares, effective events, events) of the events passing the event-level
    ``discriminant`` at the event efficiency nearest ``efficiency``."""
    scan = analysis.event_scan(discriminant)
    level = scan.nearest_level(efficiency)
    return scan.process_shares(level), scan.effective_jets(level), scan.selected_jets(level)


def check_triboson_selection(analysis, discriminant, process: str | None, term: str | None,
                             efficiency: float = 1e-4) -> bool:
    """Exercise 2c: which SM ``process`` does the event-level ``discriminant`` select most at
    the event efficiency ``efficiency``, besides the QCD it is built to reject, and which
    numerator ``term`` (its label) brings it in?

    The right process is the one other than QCD with the largest share of the passing events'
    weight; the right term is the one whose removal lowers that share most (the other terms
    keep their weights, the denominator stays). True when both answers are right; prints how
    many (effective) events the shares rest on, and a hint otherwise."""
    if discriminant is None or process is None or term is None:
        print("Not answered yet: set `my_triboson`, `selected_process` and `responsible_term`.")
        return False
    from sophon.discriminant import Discriminant

    shares, effective, events = _event_shares(analysis, discriminant, efficiency)
    if process not in shares:
        print(f"{process!r} is not a process of this dataset: {', '.join(shares)}")
        return False
    print(f"At {efficiency:g} of the events: {events:,} events pass ({effective:,.1f} effective); "
          f"{process} makes {shares[process]:.0%} of their weight.")
    if process == "QCD":
        print("=> QCD is the background the denominator rejects (what passes of it is a few "
              "events of large weight): which other process makes the most of what passes?")
        return False
    largest = max((name for name in shares if name != "QCD"), key=shares.get)
    if process != largest:
        print("=> Another process makes more of what passes: look at the event view's stack.")
        return False
    labels = [t.label or t.classes for t in discriminant.numerator]
    if term not in labels:
        print(f"{term!r} is not one of the terms: {labels}")
        return False
    without = {}
    for index, label in enumerate(labels):
        rest = tuple(t for i, t in enumerate(discriminant.numerator) if i != index)
        if not rest:
            continue
        reduced = Discriminant(name=f"without {label}", numerator=rest, level="event",
                               denominator=discriminant.denominator)
        without[label] = _event_shares(analysis, reduced, efficiency)[0][process]
    if term != min(without, key=without.get):
        print("=> Another term brings in more of it: drop one term at a time and compare.")
        return False
    print("  without each term its share would be "
          + ", ".join(f"{label} {share:.0%}" for label, share in without.items()))
    print(f"=> Right: {process} is what this discriminant selects most here, through {term}.")
    return True


def event_significance(analysis, discriminant, signal: str,
                       window: tuple[float, float] | None = None):
    """Z of process ``signal`` in a dijet-mass window versus the background efficiency of the
    event-level discriminant (the sum of D over the two leading jets, eq. 7).

    The window defaults to the central half of the signal's weighted dijet-mass distribution.
    Returns the library's :meth:`~sophon.analysis.DatasetAnalysis.event_significance`.
    """
    events = analysis.events
    names = list(analysis.dataset.process_names)
    if window is None:
        members = (events.process_code == names.index(signal)) & np.isfinite(events.dijet_mass)
        mass, weight = events.dijet_mass[members], events.weight[members]
        order = np.argsort(mass)
        cumulative = np.cumsum(weight[order]) / weight.sum()
        window = tuple(float(np.interp(q, cumulative, mass[order])) for q in (0.25, 0.75))
    return analysis.event_significance(discriminant, signal, window)
