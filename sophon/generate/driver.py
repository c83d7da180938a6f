"""Planning, parallel execution and writing of whole samples.

A sample is cut into chunks (:class:`~sophon.generate.pipeline.ChunkSpec`) whose seeds derive
from the master seed and the chunk number only, so the output does not depend on the number of
workers or on the order in which chunks finish: results are written in chunk order. Chunks run in
a :class:`~concurrent.futures.ProcessPoolExecutor` (``forkserver`` where available, else
``spawn``); the first failing chunk stops the run with a :class:`GenerationError` that names it and
carries the worker's traceback. Files are written to a temporary name in the target folder and
renamed at the end, so an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sophon import __version__
from sophon.generate import settings as cards
from sophon.generate.events import GenerationError
from sophon.generate.pipeline import ChunkResult, ChunkSpec, JetSelection, run_chunk
from sophon.atomic import atomic_output, publish, temporary_beside
from sophon.generate.writer import JETCLASS_SCHEMA, SM_SCHEMA, with_metadata
from sophon.labels import FAMILIES, FAMILY_OF_CLASS

__all__ = ["GenerationReport", "plan_training", "plan_sm", "run_chunks", "generate_training",
           "generate_sm", "TRAINING_FILES", "SM_FILE", "MB_TO_FB"]

MB_TO_FB = 1e12  # 1 mb = 10^12 fb
SM_FILE = "SM.parquet"
#: Finished chunks of an SM run that has not written SM_FILE yet (see :class:`_ChunkStore`).
CHUNK_FOLDER = ".chunks"
#: Training output: one file per JetClass-II part, chosen by the jet's class.
TRAINING_FILES = {"Res2P": "Res2P.parquet", "Res34P": "Res34P.parquet", "QCD": "QCD.parquet"}
#: JetClass-II's part of each class family of :data:`sophon.labels.FAMILIES`.
_PART_OF_FAMILY = {"QCD": "QCD", "two_prong": "Res2P", "three_four_prong": "Res34P"}
_PART_OF_LABEL = np.array([_PART_OF_FAMILY[family] for family in FAMILIES])[FAMILY_OF_CLASS]
_KIND_CODE = {"training": 1, "sm": 2}


@dataclass
class GenerationReport:
    """What a run produced and how fast."""

    files: list[Path]
    n_events: int
    n_jets: int
    wall_seconds: float
    cpu_seconds: float  # CPU time summed over chunks: the per-core cost
    jets_per_file: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def jets_per_second_per_core(self) -> float:
        return self.n_jets / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"{self.n_events} events -> {self.n_jets} jets in {self.wall_seconds:.1f} s "
                 f"({self.jets_per_second_per_core:.0f} jets/s per core)"]
        lines += [f"  {name}: {n} jets" for name, n in self.jets_per_file.items()]
        return "\n".join(lines)


# --- seeds and plans ----------------------------------------------------------------------------


def _chunk_seeds(master_seed: int, kind: str, index: int) -> tuple[int, int, np.random.Generator]:
    sequence = np.random.SeedSequence([int(master_seed), _KIND_CODE[kind], int(index)])
    state = sequence.generate_state(3)
    pythia_seed = int(state[0] % 900_000_000) + 1
    numpy_seed = int(state[1])
    return pythia_seed, numpy_seed, np.random.default_rng(int(state[2]))


def _split(n_events: int, chunk_events: int) -> list[int]:
    sizes = [chunk_events] * (n_events // chunk_events)
    if n_events % chunk_events:
        sizes.append(n_events % chunk_events)
    return sizes


def _shares(n_events: int, shares: dict[str, float]) -> dict[str, int]:
    """Events per name, proportional to ``shares``, summing exactly to ``n_events``."""
    total = sum(shares.values())
    raw = {k: n_events * v / total for k, v in shares.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    rest = n_events - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:rest]:
        counts[k] += 1
    return counts


def plan_training(n_events: int, seed: int, *, parts: dict[str, float] | None = None,
                  chunk_events: int = 1000, mpi: bool = True, ecm: float = cards.DEFAULT_ECM,
                  x_mass: float | None = None, extra_settings: tuple[str, ...] = (),
                  batch_size: int = 100, selection: JetSelection = JetSelection(),
                  decay: cards.TwoBodyDecay | None = None) -> list[ChunkSpec]:
    """Chunks of the training sample: ``parts`` maps res2p/res34p/qcd to shares of the events;
    with ``decay`` every event makes that two-body decay instead (its jets only are kept)."""
    if decay is not None and parts is not None:
        raise ValueError("a decay sample has no training parts: give the decay or the parts")
    parts = dict(cards.TRAINING_PARTS if parts is None else parts)
    if decay is not None:
        parts = {decay.name: 1.0}
    elif set(parts) - set(cards.TRAINING_PARTS):
        raise ValueError(f"unknown training part(s) {sorted(set(parts) - set(cards.TRAINING_PARTS))}"
                         f"; choose from {sorted(cards.TRAINING_PARTS)}")
    specs = []
    for part, n_part in _shares(n_events, parts).items():
        for size in _split(n_part, chunk_events):
            index = len(specs)
            pythia_seed, numpy_seed, rng = _chunk_seeds(seed, "training", index)
            process, description = _training_process(part, rng, x_mass, decay)
            settings = (*cards.run_settings(seed=pythia_seed, ecm=ecm, mpi=mpi), *process,
                        *extra_settings)
            specs.append(ChunkSpec(index, "training", part, size, pythia_seed, numpy_seed,
                                   settings, batch_size=batch_size, selection=selection,
                                   description=description, decay=decay))
    return specs


def _training_process(part: str, rng: np.random.Generator, x_mass: float | None,
                      decay: cards.TwoBodyDecay | None) -> tuple[list[str], str]:
    """The process settings of one training chunk and their description (its mass windows)."""
    if part == "qcd":
        return cards.qcd_training_settings(), ""
    masses = cards.resonance_masses(rng, x_mass)
    description = (f"m_X0 {masses.x_neutral[0]:.0f}-{masses.x_neutral[1]:.0f}, "
                   f"m_X+ {masses.x_charged[0]:.0f}-{masses.x_charged[1]:.0f} GeV")
    if decay is not None:
        return cards.decay_settings(decay, masses), description
    return cards.resonance_settings(part, masses), description


def sm_pt_hat_minima(processes: Mapping[str, float], pt_hat_min: float,
                     process_pt_hat_min: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each process's generator pTHat cut in GeV: ``pt_hat_min``, or its entry of
    ``process_pt_hat_min`` (which must name processes of the sample)."""
    unknown = set(processes) - set(cards.SM_PROCESSES)
    if unknown:
        raise ValueError(f"unknown SM process(es) {sorted(unknown)}; "
                         f"choose from {sorted(cards.SM_PROCESSES)}")
    overrides = dict(process_pt_hat_min or {})
    stray = set(overrides) - set(processes)
    if stray:
        raise ValueError(f"pTHat cut for process(es) {sorted(stray)} not in the sample "
                         f"({', '.join(processes)})")
    minima = {name: float(overrides.get(name, pt_hat_min)) for name in processes}
    bad = {name: value for name, value in minima.items() if not value > 0}
    if bad:
        raise ValueError(f"pTHat cuts must be positive GeV, not {bad}")
    return minima


def plan_sm(n_events: int, seed: int, *, processes: dict[str, float] | None = None,
            chunk_events: int = 1000, mpi: bool = True, ecm: float = cards.DEFAULT_ECM,
            pt_hat_min: float = cards.SM_PT_HAT_MIN, bias_power: float = cards.SM_BIAS_POWER,
            process_pt_hat_min: Mapping[str, float] | None = None,
            extra_settings: tuple[str, ...] = (), batch_size: int = 100,
            selection: JetSelection = JetSelection()) -> list[ChunkSpec]:
    """Chunks of the SM sample: ``processes`` maps process names to shares of the events
    (default: the cards' shares, which oversample the rare processes); each process is generated
    from ``pt_hat_min`` GeV, or from its own entry of ``process_pt_hat_min``."""
    if processes is None:
        processes = {name: card.share for name, card in cards.SM_PROCESSES.items()}
    minima = sm_pt_hat_minima(processes, pt_hat_min, process_pt_hat_min)
    specs = []
    first_event = 0
    for name, n_process in _shares(n_events, processes).items():
        for size in _split(n_process, chunk_events):
            index = len(specs)
            pythia_seed, numpy_seed, _ = _chunk_seeds(seed, "sm", index)
            settings = (*cards.run_settings(seed=pythia_seed, ecm=ecm, mpi=mpi),
                        *cards.sm_settings(cards.SM_PROCESSES[name], pt_hat_min=minima[name],
                                           bias_power=bias_power),
                        *extra_settings)
            specs.append(ChunkSpec(index, "sm", name, size, pythia_seed, numpy_seed, settings,
                                   first_event_id=first_event, batch_size=batch_size,
                                   selection=selection))
            first_event += size
    return specs


# --- running --------------------------------------------------------------------------------------


def _guarded(spec: ChunkSpec) -> ChunkResult:
    """Run a chunk; any failure becomes a GenerationError naming the chunk, with its traceback."""
    try:
        return run_chunk(spec)
    except Exception as error:  # re-raised with the chunk named, never swallowed
        raise GenerationError(f"{spec.name()} failed: {type(error).__name__}: {error}\n"
                              f"worker traceback:\n{traceback.format_exc()}") from None


def _context():
    """``forkserver`` (workers fork from a server that preloaded Pythia, FastJet and the numba
    kernel once), else ``spawn``; never plain ``fork`` of a possibly threaded parent."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["sophon.generate._preload"])
        return context
    return multiprocessing.get_context("spawn")


def run_chunks(specs: list[ChunkSpec], *, workers: int | None = None, progress: bool = True,
               description: str = "generate", on_result=None) -> list[ChunkResult]:
    """Run ``specs`` on ``workers`` processes (default: all cores) with a progress bar.

    ``on_result(result)`` is called in chunk order as soon as the preceding chunks are done
    (results are then not kept, to bound memory); otherwise all results are returned in order.
    """
    from tqdm.auto import tqdm

    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    results: dict[int, ChunkResult] = {}
    ordered: list[ChunkResult] = []
    next_index = 0

    def deliver():
        nonlocal next_index
        while next_index < len(specs) and specs[next_index].index in results:
            result = results.pop(specs[next_index].index)
            if on_result is not None:
                on_result(result)
                result.table = result.table.slice(0, 0)
            ordered.append(result)
            next_index += 1

    with tqdm(total=sum(s.n_events for s in specs), unit="ev", desc=description,
              disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(specs) <= 1:
            for spec in specs:
                results[spec.index] = _guarded(spec)
                bar.update(spec.n_events)
                deliver()
            return ordered
        pool = ProcessPoolExecutor(max_workers=min(workers, len(specs)), mp_context=_context())
        try:
            pending = {pool.submit(_guarded, spec): spec for spec in specs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec = pending.pop(future)
                    try:
                        results[spec.index] = future.result()
                    except GenerationError:
                        raise
                    except Exception as error:  # e.g. a worker killed by a signal
                        raise GenerationError(f"{spec.name()} failed: {type(error).__name__}: "
                                              f"{error}") from error
                    bar.update(spec.n_events)
                deliver()
        except BaseException:
            _stop_workers(pool)  # do not wait for the other chunks of a failed run
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return ordered


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate this pool's own worker processes (CPython keeps them in ``_processes``)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except Exception:  # already gone
            pass


# --- writing ---------------------------------------------------------------------------------


class _AtomicWriter:
    """A parquet writer on a temporary file in the target folder; ``commit`` renames it."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = temporary_beside(path)
        self.writer = pq.ParquetWriter(self.temporary, schema, compression="zstd",
                                          use_compliant_nested_type=False)  # keep "item"
        self.rows = 0

    def write(self, table: pa.Table):
        if table.num_rows:
            self.writer.write_table(table, row_group_size=20_000)
            self.rows += table.num_rows

    def commit(self) -> Path:
        self.writer.close()
        publish(self.temporary, self.path)
        return self.path

    def abort(self):
        try:
            self.writer.close()
        except Exception:  # already closed
            pass
        self.temporary.unlink(missing_ok=True)


class _ChunkStore:
    """The finished chunks of one SM run, kept in ``folder`` so that an interrupted run resumes
    where it stopped: per chunk its jets (``NNNNNN.parquet``) and then its bookkeeping
    (``NNNNNN.json``, written last: a chunk is finished when its JSON exists), each written
    atomically. ``plan.json`` records every chunk's seeds and settings; chunks of another plan
    are never mixed in."""

    def __init__(self, folder: Path, specs: list[ChunkSpec]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        plan = [{**_spec_record(s), "first_event_id": s.first_event_id,
                 "settings": list(s.settings), "selection": asdict(s.selection)} for s in specs]
        plan_path = folder / "plan.json"
        if plan_path.exists():
            try:
                previous = json.loads(plan_path.read_text())
            except ValueError as error:
                raise GenerationError(f"{plan_path}: unreadable ({error}); remove {folder} to "
                                      f"start the run afresh") from None
            if previous != plan:
                raise GenerationError(f"{folder} holds the chunks of another run (other events, "
                                      f"seed, processes or settings); remove it, or generate "
                                      f"into another folder")
        else:
            with atomic_output(plan_path) as temporary:
                temporary.write_text(json.dumps(plan))

    def _stem(self, spec: ChunkSpec) -> Path:
        return self.folder / f"{spec.index:06d}"

    def finished(self, spec: ChunkSpec) -> bool:
        return self._stem(spec).with_suffix(".json").exists()

    def save(self, result: ChunkResult) -> None:
        stem = self._stem(result.spec)
        with atomic_output(stem.with_suffix(".parquet")) as temporary:
            pq.write_table(result.table, temporary, compression="zstd",
                           use_compliant_nested_type=False)
        record = {"n_events": result.n_events, "weight_sum": result.weight_sum,
                  "sigma_mb": result.sigma_mb, "sigma_error_mb": result.sigma_error_mb,
                  "seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
                  "timings": result.timings}
        with atomic_output(stem.with_suffix(".json")) as temporary:
            temporary.write_text(json.dumps(record))

    def result(self, spec: ChunkSpec) -> ChunkResult:
        """A finished chunk's bookkeeping (its table left empty: read it with :meth:`table`)."""
        record = json.loads(self._stem(spec).with_suffix(".json").read_text())
        return ChunkResult(spec=spec, table=SM_SCHEMA.empty_table(), **record)

    def table(self, spec: ChunkSpec) -> pa.Table:
        return pq.read_table(self._stem(spec).with_suffix(".parquet"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _stage_seconds(results: list[ChunkResult]) -> dict[str, float]:
    total: dict[str, float] = {}
    for result in results:
        for name, seconds in result.timings.items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"sophon-explorer": __version__, "python": platform.python_version()}
    for package in ("pythia8mc", "fastjet", "numpy", "awkward", "pyarrow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _spec_record(spec: ChunkSpec) -> dict:
    return {"index": spec.index, "sample": spec.sample, "n_events": spec.n_events,
            "pythia_seed": spec.pythia_seed, "numpy_seed": spec.numpy_seed,
            "description": spec.description}


def generate_training(output_dir: str | os.PathLike, n_events: int, *, seed: int = 0,
                      workers: int | None = None, parts: dict[str, float] | None = None,
                      mpi: bool = True, x_mass: float | None = None,
                      chunk_events: int = 1000, ecm: float = cards.DEFAULT_ECM,
                      extra_settings: tuple[str, ...] = (), progress: bool = True,
                      decay: cards.TwoBodyDecay | None = None) -> GenerationReport:
    """Generate a mini JetClass-II: ``Res2P.parquet``, ``Res34P.parquet``, ``QCD.parquet``.

    Jets go to the file of their class (a ``res34p`` event also yields two-prong jets from its
    charged X). Files hold exactly the JetClass-II schema; parts with no jets are not written.
    With ``decay`` (e.g. X->bs, :class:`~sophon.generate.settings.TwoBodyDecay`) the one file
    ``X_bs.parquet`` holds the jets of that decay, with ``jet_label`` -1 (no class).
    """
    if n_events < 1:
        raise ValueError(f"n_events must be positive, not {n_events}")
    start = time.perf_counter()
    specs = plan_training(n_events, seed, parts=parts, chunk_events=chunk_events, mpi=mpi,
                          ecm=ecm, x_mass=x_mass, extra_settings=tuple(extra_settings),
                          decay=decay)
    output_dir = Path(output_dir)
    metadata = {
        "sample": "training", "seed": seed, "n_events": n_events, "mpi": mpi, "ecm_gev": ecm,
        "x_mass": x_mass, "parts": {decay.name: 1.0} if decay else parts or cards.TRAINING_PARTS,
        "versions": _versions(),
        "common_settings": list(cards.COMMON), "extra_settings": list(extra_settings),
        "chunks": [_spec_record(s) for s in specs],
        "selection": asdict(JetSelection()),
        "labels": (f"-1: every jet holds the decay {decay.name}, which is no JetClass-II class"
                   if decay else "JetClass-II index (sophon.labels.LABELS)"),
    }
    files = ({decay.name: decay.name.replace("->", "_") + ".parquet"} if decay
             else TRAINING_FILES)
    writers = {name: _AtomicWriter(output_dir / filename,
                                   with_metadata(JETCLASS_SCHEMA.empty_table(), metadata).schema)
               for name, filename in files.items()}

    def write(result: ChunkResult):
        if decay is not None:
            writers[decay.name].write(result.table)
            return
        part = _PART_OF_LABEL[result.table["jet_label"].to_numpy()]
        for name, writer in writers.items():
            rows = np.nonzero(part == name)[0]
            if len(rows):
                writer.write(result.table.take(rows))

    try:
        results = run_chunks(specs, workers=workers, progress=progress,
                             description="training", on_result=write)
        files = []
        for writer in writers.values():
            if writer.rows:
                files.append(writer.commit())
            else:
                writer.abort()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return GenerationReport(
        files=files,
        n_events=sum(r.n_events for r in results), n_jets=sum(w.rows for w in writers.values()),
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=sum(r.cpu_seconds for r in results),
        jets_per_file={w.path.name: w.rows for w in writers.values()},
        stage_seconds=_stage_seconds(results), metadata=metadata)


def generate_sm(output_dir: str | os.PathLike, n_events: int, *, seed: int = 0,
                workers: int | None = None, processes: dict[str, float] | None = None,
                luminosity_fb: float = 138.0, mpi: bool = True,
                pt_hat_min: float = cards.SM_PT_HAT_MIN, bias_power: float = cards.SM_BIAS_POWER,
                process_pt_hat_min: Mapping[str, float] | None = None,
                chunk_events: int = 1000, ecm: float = cards.DEFAULT_ECM,
                extra_settings: tuple[str, ...] = (), progress: bool = True
                ) -> GenerationReport:
    """Generate the weighted SM collision sample ``SM.parquet``.

    ``weight`` = sigma x L x w / sum(w) per process, with sigma Pythia's own estimate (averaged
    over the process's chunks), L = ``luminosity_fb`` in fb^-1, w the Pythia event weight
    ((pTHatMin / pTHat)^bias_power; 1 with ``bias_power = 0``, and then weight = sigma L / N) and
    the sum over *all* generated events, triggered or not: a weight is the number of such events
    expected in L. ``process_pt_hat_min`` gives some processes their own pTHat cut (and bias
    reference), e.g. QCD from 250 GeV, where its events below hardly reach the trigger; each
    process's cut is recorded in the metadata's ``processes``.

    Resumable: finished chunks are kept in ``output_dir/.chunks`` until ``SM.parquet`` is
    written; the same command run again after an interruption generates only the missing ones
    (same seeds, so the file is the one an uninterrupted run writes).
    """
    if n_events < 1:
        raise ValueError(f"n_events must be positive, not {n_events}")
    if luminosity_fb <= 0:
        raise ValueError(f"luminosity must be positive, not {luminosity_fb} fb^-1")
    start = time.perf_counter()
    specs = plan_sm(n_events, seed, processes=processes, chunk_events=chunk_events, mpi=mpi,
                    ecm=ecm, pt_hat_min=pt_hat_min, bias_power=bias_power,
                    process_pt_hat_min=process_pt_hat_min,
                    extra_settings=tuple(extra_settings))
    output_dir = Path(output_dir)
    store = _ChunkStore(output_dir / CHUNK_FOLDER, specs)
    missing = [spec for spec in specs if not store.finished(spec)]
    if progress and len(missing) < len(specs):
        print(f"resuming: {len(specs) - len(missing)} of {len(specs)} chunks already in "
              f"{store.folder}")
    run_chunks(missing, workers=workers, progress=progress, description="SM",
               on_result=store.save)
    results = [store.result(spec) for spec in specs]
    per_process = _process_normalisation(results, luminosity_fb)
    minima = sm_pt_hat_minima(per_process, pt_hat_min, process_pt_hat_min)
    for name, entry in per_process.items():
        entry["pt_hat_min_gev"] = minima[name]
    metadata = {
        "sample": "sm", "seed": seed, "n_events": n_events, "mpi": mpi, "ecm_gev": ecm,
        "luminosity_fb": luminosity_fb, "pt_hat_min_gev": pt_hat_min,
        "trigger": f"pT sum of the {JetSelection().jets_per_event} leading R=0.8 jets with "
                   f"|eta| < {JetSelection().abs_eta_max:g} > "
                   f"{JetSelection().trigger_pt_sum:g} GeV; those jets are kept if "
                   f"{JetSelection().pt_min:g} < pT < {JetSelection().pt_max:g} GeV",
        "bias_power": bias_power,
        "weight": "expected events in luminosity_fb: sigma * L * w / sum(w), w the Pythia "
                  "event weight (pTHat bias), sums over all generated events",
        "processes": per_process, "versions": _versions(),
        "common_settings": list(cards.COMMON), "extra_settings": list(extra_settings),
        "process_settings": {name: list(card.settings)
                             for name, card in cards.SM_PROCESSES.items()},
        "chunks": [_spec_record(s) for s in specs], "selection": asdict(JetSelection()),
        "jet_label": "-1: SM jets carry no JetClass-II truth class (see aux_genpart_*)",
    }
    final = _AtomicWriter(output_dir / SM_FILE,
                          with_metadata(SM_SCHEMA.empty_table(), metadata,
                                        luminosity_fb=luminosity_fb).schema)
    try:
        scale = {name: p["weight_per_unit_event_weight"] for name, p in per_process.items()}
        for spec in specs:
            table = store.table(spec)
            weight = table["weight"].to_numpy() * scale[spec.sample]
            table = table.set_column(table.schema.get_field_index("weight"),
                                     SM_SCHEMA.field("weight"), pa.array(weight))
            final.write(table.cast(SM_SCHEMA))
        path = final.commit()
    except BaseException:
        final.abort()
        raise
    store.remove()
    return GenerationReport(
        files=[path], n_events=sum(r.n_events for r in results), n_jets=final.rows,
        wall_seconds=time.perf_counter() - start,
        cpu_seconds=sum(r.cpu_seconds for r in results),
        jets_per_file={path.name: final.rows}, stage_seconds=_stage_seconds(results),
        metadata=metadata)


def _process_normalisation(results: list[ChunkResult], luminosity_fb: float) -> dict:
    """Per process: sigma (event-weighted mean of the chunks' estimates) and weight scale."""
    out: dict[str, dict] = {}
    for result in results:
        entry = out.setdefault(result.spec.sample, {"n_events": 0, "weight_sum": 0.0,
                                                    "_sigma_n": 0.0, "_err2_n2": 0.0})
        entry["n_events"] += result.n_events
        entry["weight_sum"] += result.weight_sum
        entry["_sigma_n"] += result.sigma_mb * result.n_events
        entry["_err2_n2"] += (result.sigma_error_mb * result.n_events) ** 2
    for name, entry in out.items():
        n = entry["n_events"]
        sigma_mb = entry.pop("_sigma_n") / n
        error_mb = np.sqrt(entry.pop("_err2_n2")) / n
        entry["sigma_pb"] = sigma_mb * 1e9
        entry["sigma_error_pb"] = error_mb * 1e9
        entry["expected_events"] = sigma_mb * MB_TO_FB * luminosity_fb
        entry["weight_per_unit_event_weight"] = (sigma_mb * MB_TO_FB * luminosity_fb
                                                 / entry["weight_sum"])
    return out


