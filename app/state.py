"""Configuration and the per-process dataset cache.

Everything here is shared by all sessions of one server process:

- where the data is (:func:`data_path`: ``--data PATH`` after ``panel serve app --args``, else
  the ``SOPHON_DATA`` environment variable, else ``data/default`` under the repository root);
- where rescoring models may be read from (:func:`models_dir`: ``--models DIR`` /
  ``SOPHON_MODELS`` / ``data/models``, where the default model ships) and where rescored
  datasets are written (:func:`output_dir`: ``--output DIR`` / ``SOPHON_OUTPUT`` / a folder in
  the system temporary directory);
- the Dask cluster, if any (:func:`dask_address`: ``--dask ADDRESS``, ``--dask`` alone or
  ``--dask local`` for a LocalCluster of this machine's cores, / ``SOPHON_DASK``), connected
  once per process (:func:`dask_client`): the dataset is then never loaded whole; its scans run
  on the cluster and the per-jet views use a sample (:class:`~sophon.cluster_analysis.
  ClusterAnalysis`, written under the output folder);
- the loaded datasets (:func:`load_analysis`): each path is opened and validated ONCE per process
  and the same :class:`~sophon.analysis.DatasetAnalysis` is handed to every session. A dataset
  that cannot be opened (or a cluster that cannot be reached) gives a :class:`DatasetProblem`
  (a message for the page), never an exception, so the server keeps serving.

The app reads models only from the configured folder: :func:`resolve_model` refuses paths
outside it. Server start-up (preloading the dataset, warming up the latent view) is in
:mod:`app.app_hooks`; this module holds the configuration and the shared cache alone.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sophon.analysis import BuildOnceCache, DatasetAnalysis
from sophon.extras import MissingExtraError
from sophon.manifest import DEFAULT_DATASET, REPOSITORY_ROOT, ManifestError, verify_path
from sophon.store import DatasetError, JetDataset

__all__ = [
    "ROOT",
    "DEFAULT_DATA",
    "DatasetProblem",
    "argument",
    "data_path",
    "models_dir",
    "output_dir",
    "dask_address",
    "dask_client",
    "resolve_model",
    "load_analysis",
    "cached_result",
    "ready_result",
    "loaded_paths",
    "cached_analysis",
    "release_analysis",
    "shared",
    "warm_up",
    "clear_cache",
]

log = logging.getLogger("sophon.app")

ROOT = REPOSITORY_ROOT
DEFAULT_DATA = DEFAULT_DATASET
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".torchscript")
#: ``--dask`` without an address: a LocalCluster of this machine's cores.
LOCAL_CLUSTER = "local"
#: Seconds the app waits for a Dask scheduler to answer before it says it cannot reach it.
DASK_CONNECT_TIMEOUT_S = 10.0
#: Seconds one pass of a spectrum scan over the cluster may take before the page says it failed
#: (a worker paused for memory runs no task, and the spinner would turn for good).
CLUSTER_SCAN_TIMEOUT_S = 600.0
#: The folder under the output folder where the samples of cluster datasets are written.
SAMPLES_FOLDER = "cluster-samples"


@dataclass(frozen=True)
class DatasetProblem:
    """Why a dataset could not be opened: shown in the page instead of the views."""

    path: Path
    message: str


# --- configuration ---------------------------------------------------------------------------
def argument(name: str, argv: Sequence[str] | None = None) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (default ``sys.argv``)."""
    argv = list(sys.argv if argv is None else argv)
    flag = f"--{name}"
    for position, item in enumerate(argv):
        if item == flag and position + 1 < len(argv):
            return argv[position + 1]
        if item.startswith(flag + "="):
            return item[len(flag) + 1:]
    return None


def _configured(name: str, variable: str, default: Path, argv, environ) -> Path:
    environ = os.environ if environ is None else environ
    value = argument(name, argv) or environ.get(variable) or None
    path = Path(value).expanduser() if value else default
    return path if path.is_absolute() else (Path.cwd() / path)


def data_path(argv: Sequence[str] | None = None,
              environ: Mapping[str, str] | None = None) -> Path:
    """The dataset to open: ``--data PATH``, else ``$SOPHON_DATA``, else ``data/default``."""
    return _configured("data", "SOPHON_DATA", DEFAULT_DATA, argv, environ)


def models_dir(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] | None = None) -> Path:
    """The only folder rescoring models are read from."""
    return _configured("models", "SOPHON_MODELS", ROOT / "data" / "models", argv, environ)


def output_dir(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] | None = None) -> Path:
    """Where rescored datasets are written (and may be read back from)."""
    return _configured("output", "SOPHON_OUTPUT",
                       Path(tempfile.gettempdir()) / "sophon-explorer", argv, environ)


def dask_address(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """The Dask cluster the app computes on: ``--dask ADDRESS`` (e.g. ``tcp://scheduler:8786``),
    ``--dask`` alone or ``--dask local`` (:data:`LOCAL_CLUSTER`: a LocalCluster of this
    machine's cores), else ``$SOPHON_DASK``; None without either (the dataset in memory)."""
    argv = list(sys.argv if argv is None else argv)
    value = argument("dask", argv)
    if value is not None and not value.startswith("--"):
        return value or LOCAL_CLUSTER
    if "--dask" in argv:  # a flag with no address (last, or followed by the next option)
        return LOCAL_CLUSTER
    environ = os.environ if environ is None else environ
    return environ.get("SOPHON_DASK") or None


def resolve_model(name: str, directory: Path | None = None) -> Path:
    """A model file named ``name`` inside the models folder; ValueError for anything else
    (absolute paths, ``..``, unknown suffixes, missing files)."""
    directory = (models_dir() if directory is None else Path(directory)).resolve()
    candidate = (directory / name).resolve()
    if directory not in candidate.parents:
        raise ValueError(f"{name!r}: model files are read only from {directory}")
    if candidate.suffix not in MODEL_SUFFIXES:
        raise ValueError(f"{name!r}: not a model file ({', '.join(MODEL_SUFFIXES)})")
    if not candidate.is_file():
        raise ValueError(f"{name!r}: no such model file in {directory}")
    return candidate


def list_models(directory: Path | None = None) -> list[str]:
    """Model files in the models folder (names relative to it), sorted."""
    directory = models_dir() if directory is None else Path(directory)
    if not directory.is_dir():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.suffix in MODEL_SUFFIXES and not p.name.startswith("."))


# --- the per-process cache --------------------------------------------------------------------
_ANALYSES = BuildOnceCache()  # resolved path -> DatasetAnalysis
_SHARED = BuildOnceCache()  # (id(analysis), name) -> a derived object
RESULT_CACHE_SIZE = 64
_RESULTS = BuildOnceCache(RESULT_CACHE_SIZE)  # (id(analysis), *key) -> a small result
_LOAD_SECONDS: dict[Path, float] = {}
_CLIENTS = BuildOnceCache()  # Dask address -> distributed.Client, one per process


class _Unopenable(Exception):
    """Why a dataset cannot be opened (not cached: a later session tries again)."""

    def __init__(self, problem: DatasetProblem):
        super().__init__(problem.message)
        self.problem = problem


def _key(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def load_analysis(path: str | os.PathLike) -> DatasetAnalysis | DatasetProblem:
    """The shared analysis of the dataset at ``path``, loaded and validated once per process.

    Concurrent first calls wait for one load. Failures are not cached (a dataset copied into
    place later is picked up by the next session) and come back as :class:`DatasetProblem`.
    """
    key = _key(path)
    try:
        return _ANALYSES.get_or_build(key, lambda: _open_analysis(key, path))
    except _Unopenable as unopenable:
        return unopenable.problem


def dask_client(address: str):
    """The process-wide ``distributed.Client`` of the cluster at ``address`` (or of a new
    LocalCluster of this machine's cores for :data:`LOCAL_CLUSTER`), made once per process;
    MissingExtraError without the ``dask`` extra, OSError when the scheduler does not answer
    within :data:`DASK_CONNECT_TIMEOUT_S` (nothing is kept then: a later session tries again)."""
    return _CLIENTS.get_or_build(address, lambda: _connect(address))


def _connect(address: str):
    from sophon.dask_scan import local_client, require_dask

    require_dask("the app on a Dask cluster (--dask)", distributed=True)
    if address == LOCAL_CLUSTER:
        return local_client()
    from distributed import Client

    return Client(address, timeout=DASK_CONNECT_TIMEOUT_S)


def _cluster_analysis(key: Path, address: str) -> DatasetAnalysis:
    """The :class:`~sophon.cluster_analysis.ClusterAnalysis` of the dataset at ``key`` on the
    cluster at ``address``, its sample under the output folder."""
    from sophon.cluster_analysis import ClusterAnalysis
    from sophon.dask_scan import DaskScanner

    try:
        client = dask_client(address)
    except MissingExtraError as error:
        raise _Unopenable(DatasetProblem(key, f"{key}: {error}")) from None
    except OSError as error:  # refused, timed out (TimeoutError), closed
        text = " ".join(str(error).split())[:300]
        raise _Unopenable(DatasetProblem(key, f"{key}: cannot reach the Dask cluster at "
                                              f"{address} ({text}); start its scheduler, or "
                                              "serve the app without --dask to load the "
                                              "dataset in memory")) from None
    return ClusterAnalysis(DaskScanner(key, client=client, timeout=CLUSTER_SCAN_TIMEOUT_S),
                           output_dir() / SAMPLES_FOLDER)


def _open_analysis(key: Path, path: str | os.PathLike) -> DatasetAnalysis:
    start = time.perf_counter()
    address = dask_address()
    try:
        verify_path(key)  # a shipped dataset must match its data_manifest.yaml checksum
        if address is not None:  # never loaded whole: scans on the cluster, views on a sample
            analysis = _cluster_analysis(key, address)
        else:
            dataset = JetDataset(key, validate=False)
            if dataset.score_head is not None:  # so must the model whose head gives the scores
                verify_path(dataset.score_head)
            dataset.validate()
            analysis = DatasetAnalysis(dataset)
        warm_up(analysis)
    except _Unopenable:
        raise
    except (DatasetError, ManifestError) as error:
        raise _Unopenable(DatasetProblem(Path(path), str(error))) from None
    except Exception as error:  # anything else in opening or first use: still a page
        log.exception("cannot open dataset %s", path)
        text = " ".join(str(error).split())[:500]
        raise _Unopenable(DatasetProblem(Path(path), f"{path}: cannot be opened "
                                                     f"({type(error).__name__}: {text})")) \
            from None
    _LOAD_SECONDS[key] = time.perf_counter() - start
    log.info("loaded %s (%d jets) in %.1f s", key, analysis.dataset.n_jets, _LOAD_SECONDS[key])
    return analysis


def shared(analysis: DatasetAnalysis, name: str, factory: Callable[[], Any]) -> Any:
    """A derived object of ``analysis`` built once per process (e.g. the latent-space frame)."""
    return _SHARED.get_or_build((id(analysis), name), factory)


def cached_result(analysis: DatasetAnalysis, key: tuple, factory: Callable[[], Any]) -> Any:
    """A discriminant-dependent result (an efficiency scan, a significance curve: small arrays)
    shared by every session of the process, least recently used first out. Two users on the
    same preset, or one user going back to it, do not recompute it. Results are read-only."""
    return _RESULTS.get_or_build((id(analysis), *key), lambda: _read_only(factory()))


def ready_result(analysis: DatasetAnalysis, key: tuple) -> Any | None:
    """The result :func:`cached_result` keeps for ``key``, or None when it has none yet (never
    waits, never computes)."""
    return _RESULTS.get((id(analysis), *key))


def _read_only(result: Any) -> Any:
    """Mark the numpy arrays of a dataclass result read-only (it is shared between sessions)."""
    for value in getattr(result, "__dict__", {}).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return result


def warm_up(analysis: DatasetAnalysis) -> None:
    """Build the discriminant-independent arrays every session needs, once."""
    dataset = analysis.dataset
    _ = analysis.mass_index, dataset.process_codes, dataset.weights, dataset.process_names
    try:
        _ = analysis.qcd_reference
    except ValueError:
        pass
    if analysis.has_events:
        _ = analysis.events


def clear_cache() -> None:
    """Forget every loaded dataset (tests)."""
    for cache in (_ANALYSES, _SHARED, _RESULTS):
        cache.clear()


def loaded_paths() -> set[Path]:
    """The files of every dataset loaded in this process (the rescoring cleanup keeps them)."""
    paths = set()
    for key, analysis in _ANALYSES.items():
        paths.add(key)
        paths.update(Path(f).resolve() for f in analysis.dataset.files)
    return paths


def cached_analysis(path: str | os.PathLike) -> DatasetAnalysis | None:
    """The analysis of ``path`` if it is already loaded (never waits, never loads)."""
    return _ANALYSES.get(_key(path))


def release_analysis(path: str | os.PathLike) -> bool:
    """Forget the loaded dataset at ``path`` and everything derived from it (shared objects,
    cached results), so that its memory is freed once no session holds it; whether it was
    loaded. Rescoring calls it when a session's rescored dataset is replaced."""
    key = _key(path)
    analysis = _ANALYSES.pop(key)
    _LOAD_SECONDS.pop(key, None)
    if analysis is None:
        return False
    for cache in (_SHARED, _RESULTS):
        for entry, _ in cache.items():
            if entry[0] == id(analysis):
                cache.pop(entry)
    return True
