"""The analysis of a dataset too large for memory: exact scans on a Dask cluster, the rest on a
sample.

:class:`ClusterAnalysis` is a :class:`~sophon.analysis.DatasetAnalysis` whose two scans over the
whole dataset, :meth:`~ClusterAnalysis.jet_scan` and :meth:`~ClusterAnalysis.event_scan`, run on
the cluster (:class:`~sophon.dask_scan.DaskScanner`: the in-memory answer, exactly), and whose
:attr:`~sophon.analysis.DatasetAnalysis.dataset` is an in-memory SAMPLE of whole events, on
which everything per jet is computed: the latent view, jet details, the spectra of a latent
selection under the cluster's thresholds (:meth:`~sophon.analysis.DatasetAnalysis.subset_scan`),
significance, ROC curves, learning.

*The sample.* Each event is drawn with the same probability p (by a hash of its ``event_id``
and a seed, :func:`sophon.dask_scan.event_draws`: reproducible, and independent of how the
dataset is split in files), and each drawn jet's weight is divided by p, so that every weighted
sum over the sample (a yield, a spectrum, a significance's s and b) is an unbiased estimate of
the whole dataset's, with a relative statistical error of about sqrt((1 - p) / (p n)) for a sum
over n events of similar weights. p = min(1, ``max_sample_jets`` / jets in the dataset), so the
sample holds about ``max_sample_jets`` jets. It is drawn on the cluster once
(:func:`sophon.dask_scan.sample_events`) and written atomically as a parquet dataset under the
caller's folder, named after the dataset's files (their sizes and modification times), p and the
seed: a server restarted on the same dataset reads it back instead of drawing it again. At
p = 1 (a dataset smaller than the cap) the dataset itself is the sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sophon.analysis import DIJET_MASS_BINNING, DatasetAnalysis, EfficiencyReference, JetChoice
from sophon.atomic import DATASET_METADATA_KEY, write_table_atomic
from sophon.dask_scan import DaskScanner, sample_events
from sophon.discriminant import Discriminant
from sophon.spectrum import DEFAULT_EFFICIENCIES, EfficiencyScan, MassBinning
from sophon.store import DatasetError, JetDataset, read_metadata

__all__ = ["ClusterAnalysis", "DEFAULT_SAMPLE_JETS", "SAMPLE_METADATA_KEY", "sample_folder_name"]

log = logging.getLogger("sophon.cluster")

#: Jets the in-memory sample holds about (the 188 scores of 200,000 jets are 150 MB).
DEFAULT_SAMPLE_JETS = 200_000
#: The entry of the sample's ``sophon`` metadata (``extra``) that says what it is a sample of.
SAMPLE_METADATA_KEY = "sample_of"
_SAMPLE_FORMAT = 1  # bump when the sample's content changes for the same inputs


def sample_folder_name(scanner: DaskScanner, fraction: float, seed: int) -> str:
    """The folder name of the sample of ``scanner``'s dataset at ``fraction`` and ``seed``: a
    digest of the dataset's files (path, size, modification time), the fraction and the seed,
    so that a changed dataset gets a new sample."""
    files = []
    for file in scanner.dataset.files:
        status = os.stat(file)
        files.append([str(Path(file).resolve()), status.st_size, status.st_mtime_ns])
    key = json.dumps([_SAMPLE_FORMAT, files, repr(float(fraction)), int(seed)])
    return f"sample-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class ClusterAnalysis(DatasetAnalysis):
    """Exact scans of the whole dataset of ``scanner`` on its cluster; everything per jet on a
    sample of its whole events (see the module docstring).

    ``sample_folder``: where the sample is written (a folder of its own per dataset, fraction
    and seed, inside it); ``max_sample_jets``: the sample's expected size (p = min(1, max /
    jets)); ``seed``: which events are drawn. The sample is drawn when the analysis is made
    (one cluster pass), unless a previous run left it in ``sample_folder``.
    """

    scans_on_cluster = True

    def __init__(self, scanner: DaskScanner, sample_folder: str | os.PathLike, *,
                 max_sample_jets: int = DEFAULT_SAMPLE_JETS, seed: int = 0,
                 cache_size: int = 8):
        if max_sample_jets <= 0:
            raise ValueError(f"max_sample_jets must be positive, not {max_sample_jets}")
        self.scanner = scanner
        self.seed = int(seed)
        #: p: the probability with which each event was drawn (weights are divided by it)
        self.sample_fraction = min(1.0, max_sample_jets / scanner.n_jets)
        if self.sample_fraction == 1.0:
            sample = JetDataset(scanner.path)  # the whole dataset fits under the cap
        else:
            sample = JetDataset(self._written_sample(Path(sample_folder)))
        super().__init__(sample, binning=scanner.binning, cache_size=cache_size)

    def _written_sample(self, folder: Path) -> Path:
        """The sample's dataset folder, drawn on the cluster and written now unless it is there
        already; named ``<folder>/<digest>/<dataset's name>``, so that what is shown and
        exported is named after the dataset."""
        scanner = self.scanner
        directory = (folder / sample_folder_name(scanner, self.sample_fraction, self.seed)
                     / scanner.path.name)
        part = directory / "part-0.parquet"
        if part.is_file():
            return directory
        start = time.perf_counter()
        table = sample_events(scanner, self.sample_fraction, self.seed)
        if table.num_rows == 0:
            raise DatasetError(f"{scanner.path}: a sample of probability "
                               f"{self.sample_fraction:.3g} drew no event; raise the sample size")
        metadata = read_metadata(table.schema, source=str(scanner.dataset.files[0]))
        if metadata is not None:  # what the sample is, for whoever opens it
            extra = {**metadata.extra, SAMPLE_METADATA_KEY: {
                "path": str(scanner.path), "jets": scanner.n_jets,
                "fraction": self.sample_fraction, "seed": self.seed}}
            table = table.replace_schema_metadata(
                {**table.schema.metadata,
                 DATASET_METADATA_KEY: replace(metadata, extra=extra).to_json()})
        directory.mkdir(parents=True, exist_ok=True)
        write_table_atomic(table, part)
        log.info("drew a sample of %d of %d jets (p = %.3g) of %s in %.1f s", table.num_rows,
                 scanner.n_jets, self.sample_fraction, scanner.path,
                 time.perf_counter() - start)
        return directory

    # --- what it is -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The whole dataset (the sample is :attr:`dataset`)."""
        return self.scanner.path

    @property
    def n_jets(self) -> int:
        """Jets in the whole dataset."""
        return self.scanner.n_jets

    @property
    def sample_jets(self) -> int:
        """Jets in the sample."""
        return self.dataset.n_jets

    @property
    def partitions(self) -> int:
        """Tasks per pass of a cluster scan."""
        return len(self.scanner.partitions)

    def sample_description(self) -> str:
        """The sample in words, e.g. ``a sample of 200,312 of 100,000,000 jets (whole events,
        each drawn with probability 0.002; weights divided by it)``."""
        if self.sample_fraction == 1.0:
            return f"all {self.n_jets:,} jets"
        return (f"a sample of {self.sample_jets:,} of {self.n_jets:,} jets (whole events, each "
                f"drawn with probability {self.sample_fraction:.3g}; weights divided by it)")

    def __repr__(self) -> str:
        return (f"ClusterAnalysis({str(self.path)!r}, n_jets={self.n_jets}, "
                f"sample_jets={self.sample_jets}, fraction={self.sample_fraction:.3g})")

    # --- the scans of the whole dataset, on the cluster -------------------------------------
    def jet_scan(self, discriminant: Discriminant, *,
                 efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                 reference: EfficiencyReference = "all", jets: JetChoice = "all"
                 ) -> EfficiencyScan:
        """:meth:`DatasetAnalysis.jet_scan` of the whole dataset, on the cluster (exact)."""
        return self.scanner.jet_scan(discriminant, efficiencies=efficiencies,
                                     reference=reference, jets=jets)

    def event_scan(self, discriminant: Discriminant, *,
                   efficiencies: Sequence[float] = DEFAULT_EFFICIENCIES,
                   binning: MassBinning = DIJET_MASS_BINNING) -> EfficiencyScan:
        """:meth:`DatasetAnalysis.event_scan` of the whole dataset, on the cluster (exact)."""
        return self.scanner.event_scan(discriminant, efficiencies=efficiencies, binning=binning)
