"""The Pythia event loop, returning flat columnar particle arrays.

``pythia8mc`` ships ``Pythia.nextBatch(n)``, which generates ``n`` events and hands back the whole
event records as one awkward array, filled in C++. That is the bulk accessor used here: no Python
code ever touches a single particle. :class:`EventBatch` flattens it into NumPy arrays (one entry
per particle of every event, plus event offsets); history pointers stay event-local as in Pythia
and :meth:`EventBatch.to_global` turns them into indices into the flat arrays.

Units are Pythia's: GeV, and mm (mm/c for times) for production vertices.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cached_property

import awkward as ak
import numpy as np

__all__ = ["GenerationError", "EventBatch", "Generator", "charge_of", "silence_stdout"]


class GenerationError(RuntimeError):
    """Event generation failed; the message names the sample, chunk or Pythia setting at fault."""


@dataclass
class EventBatch:
    """Particles of ``n_events`` events, flattened. ``offsets[i]:offsets[i+1]`` is event ``i``."""

    offsets: np.ndarray  # int64, n_events + 1
    pid: np.ndarray  # int32
    status: np.ndarray  # int32
    mother1: np.ndarray  # int32, event-local
    mother2: np.ndarray
    daughter1: np.ndarray
    daughter2: np.ndarray
    px: np.ndarray  # float64, GeV
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    m: np.ndarray
    x: np.ndarray  # float64, mm
    y: np.ndarray
    z: np.ndarray
    t: np.ndarray  # mm/c
    weight: np.ndarray  # float64 per event (Pythia's event weight; 1 unless biased)

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_particles(self) -> int:
        return int(self.offsets[-1])

    @cached_property
    def event(self) -> np.ndarray:
        """Event number of every particle."""
        return np.repeat(np.arange(self.n_events, dtype=np.int64), np.diff(self.offsets))

    @cached_property
    def base(self) -> np.ndarray:
        """Flat index of the first entry (Pythia's 'system' line) of each particle's event."""
        return self.offsets[:-1][self.event]

    def to_global(self, local: np.ndarray) -> np.ndarray:
        """Flat indices for event-local history pointers (0, Pythia's 'none', stays -1)."""
        return np.where(local > 0, self.base + local, -1)

    @cached_property
    def charge(self) -> np.ndarray:
        """Electric charge (units of e) of every particle, as float32."""
        return charge_of(self.pid)

    @cached_property
    def pt(self) -> np.ndarray:
        return np.hypot(self.px, self.py)


_CHARGE3: dict[int, int] = {}
_PARTICLE_DATA = None


def charge_of(pid: np.ndarray) -> np.ndarray:
    """Charges from PDG codes through Pythia's particle table (one look-up per distinct code)."""
    global _PARTICLE_DATA
    unique, inverse = np.unique(pid, return_inverse=True)
    missing = [int(code) for code in unique if int(code) not in _CHARGE3]
    if missing:
        if _PARTICLE_DATA is None:
            import pythia8mc

            _PARTICLE_DATA = pythia8mc.Pythia("", False).particleData
        for code in missing:
            _CHARGE3[code] = int(_PARTICLE_DATA.chargeType(code))
    charge3 = np.array([_CHARGE3[int(code)] for code in unique], dtype=np.float32)
    return (charge3 / 3.0)[inverse].reshape(pid.shape)


def _numpy(array, dtype) -> np.ndarray:
    return np.ascontiguousarray(ak.to_numpy(array), dtype=dtype)


def batch_from_awkward(events: ak.Array) -> EventBatch:
    """Flatten the awkward event records of ``Pythia.nextBatch`` into an :class:`EventBatch`."""
    prt = events["prt"]
    counts = _numpy(ak.num(prt, axis=1), np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = ak.flatten(prt, axis=1)
    momentum = flat["p"]
    vertex = flat["vProd"]

    def vertex_column(name: str) -> np.ndarray:  # no vertex set (the primary) reads as 0
        return _numpy(ak.fill_none(vertex[name], 0.0), np.float64)

    weights = events["info"]["weights"]
    weight = _numpy(ak.fill_none(ak.firsts(weights, axis=1), 1.0), np.float64)
    return EventBatch(
        offsets=offsets,
        pid=_numpy(flat["id"], np.int32), status=_numpy(flat["status"], np.int32),
        mother1=_numpy(flat["mother1"], np.int32), mother2=_numpy(flat["mother2"], np.int32),
        daughter1=_numpy(flat["daughter1"], np.int32),
        daughter2=_numpy(flat["daughter2"], np.int32),
        px=_numpy(momentum["px"], np.float64), py=_numpy(momentum["py"], np.float64),
        pz=_numpy(momentum["pz"], np.float64), e=_numpy(momentum["e"], np.float64),
        m=_numpy(flat["m"], np.float64),
        x=vertex_column("px"), y=vertex_column("py"), z=vertex_column("pz"),
        t=vertex_column("e"),
        weight=weight,
    )


class silence_stdout:
    """Redirect the process's C-level stdout to /dev/null (Pythia's and FastJet's banners)."""

    def __enter__(self):
        sys.stdout.flush()
        self._saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        return False


class Generator:
    """One initialised Pythia instance for a list of settings.

    Raises :class:`GenerationError` naming the first setting Pythia rejects, or when
    initialisation fails (e.g. a process with vanishing cross section).
    """

    def __init__(self, settings: list[str] | tuple[str, ...], *, quiet: bool = True):
        import pythia8mc

        self.settings = tuple(settings)
        with _maybe_silent(quiet):
            self._pythia = pythia8mc.Pythia("", False)
            for line in self.settings:
                if not self._pythia.readString(line):
                    raise GenerationError(f"Pythia rejected the setting {line!r}")
            if not self._pythia.init():
                raise GenerationError("Pythia initialisation failed (settings: "
                                      + "; ".join(s for s in self.settings if "Print" not in s)
                                      + ")")
        self._quiet = quiet
        self.n_generated = 0
        self.weight_sum = 0.0

    def next_batch(self, n_events: int) -> EventBatch:
        """``n_events`` accepted events; more than ten failures per requested event is an error."""
        with _maybe_silent(self._quiet):
            try:
                events = self._pythia.nextBatch(int(n_events), 10.0)
            except Exception as error:  # pythia8mc raises a bare RuntimeError
                raise GenerationError(f"Pythia failed to generate events: {error}") from error
        batch = batch_from_awkward(events)
        self.n_generated += batch.n_events
        self.weight_sum += float(batch.weight.sum())
        return batch

    @property
    def sigma_mb(self) -> float:
        """Pythia's estimate of the cross section of the generated process, in mb."""
        return float(self._pythia.infoPython().sigmaGen())

    @property
    def sigma_error_mb(self) -> float:
        return float(self._pythia.infoPython().sigmaErr())


class _maybe_silent:
    def __init__(self, quiet: bool):
        self._inner = silence_stdout() if quiet else None

    def __enter__(self):
        return self._inner.__enter__() if self._inner else self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc) if self._inner else False
