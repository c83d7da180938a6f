"""Jet clustering and substructure with FastJet's multi-event awkward interface.

* :func:`cluster`: anti-kT (R = 0.8) on every event of a batch in one FastJet call; the jets come
  back sorted by pT inside each event, with their constituents (sorted by pT) as flat indices.
* :func:`substructure`: every selected jet becomes one "event" of a second FastJet call that
  reclusters its constituents with Cambridge/Aachen, then grooms with soft drop
  (beta = 0, z_cut = 0.1, R0 = 0.8) and computes N-subjettiness tau_1..tau_4 (normalised measure,
  beta = 1, R0 = 0.8, one-pass kT axes, as fastjet-contrib's ``Nsubjettiness``).
* :func:`softdrop_masses`: our own Cambridge/Aachen clustering and soft-drop declustering walk,
  compiled with numba, for all jets at once. It agrees with FastJet's
  ``exclusive_jets_softdrop_grooming`` (checked by the tests) and is several times faster, so it
  is the one used in production; :func:`softdrop_masses_fastjet` is kept for cross-checks.
* :func:`softdrop_mass_reference`: the same algorithm in plain Python, for tests.

Angles are measured in rapidity and azimuth (FastJet's convention); ``eta`` columns written to
files are pseudorapidities.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

__all__ = ["Jets", "cluster", "substructure", "softdrop_masses", "softdrop_masses_fastjet",
           "softdrop_mass_reference", "kinematics", "delta_phi", "SOFTDROP", "NSUBJETTINESS"]

SOFTDROP = {"beta": 0.0, "symmetry_cut": 0.1, "R0": 0.8}
NSUBJETTINESS = {"measure_definition": "NormalizedMeasure", "axes_definition": "OnePass_KT_Axes",
                 "beta": 1.0, "R0": 0.8}
_RECLUSTER_R = 10.0  # C/A radius large enough that every constituent pair merges (no beam steps)
_BANNER_SHOWN = False


def _fastjet():
    """Import fastjet with its banner (printed at the first clustering) sent to /dev/null."""
    global _BANNER_SHOWN
    import fastjet

    if not _BANNER_SHOWN:
        from sophon.generate.events import silence_stdout

        with silence_stdout():
            dummy = _events(np.array([0, 1]), np.array([1.0]), np.array([0.0]), np.array([1.0]),
                            np.array([2.0]))
            fastjet.ClusterSequence(dummy, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.8))
        _BANNER_SHOWN = True
    return fastjet


def _events(offsets, px, py, pz, e) -> ak.Array:
    """A jagged array of Momentum4D records viewing the flat NumPy columns (no copy)."""
    content = ak.contents.RecordArray(
        [ak.contents.NumpyArray(np.ascontiguousarray(v, dtype=np.float64))
         for v in (px, py, pz, e)],
        ["px", "py", "pz", "E"], parameters={"__record__": "Momentum4D"})
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(np.asarray(offsets, np.int64)),
                                                content))


def kinematics(px, py, pz, e):
    """pT, pseudorapidity, azimuth and mass of four-vectors (arrays).

    Not ``vector``: its conventions differ where the clustering needs these (eta = +-inf at
    pT = 0 where this gives 0; a negative mass for spacelike rounding where this gives 0)."""
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / np.where(pt > 0, pt, 1.0), 0.0))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    return pt, eta, phi, mass


def delta_phi(phi_a, phi_b):
    """phi_a - phi_b wrapped into [-pi, pi) (radians; arrays or scalars)."""
    return (np.asarray(phi_a) - phi_b + np.pi) % (2 * np.pi) - np.pi


@dataclass
class Jets:
    """Jets of a batch: per-jet columns plus constituents as flat particle indices."""

    event: np.ndarray  # int64 event number in the batch
    rank: np.ndarray  # int32 pT rank inside the event (0 = leading)
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    constituent_offsets: np.ndarray  # int64, n_jets + 1
    constituents: np.ndarray  # int64 flat indices into the clustered ParticleSet, pT-ordered

    def __len__(self) -> int:
        return len(self.event)

    @property
    def n_constituents(self) -> np.ndarray:
        return np.diff(self.constituent_offsets)

    @property
    def pt(self) -> np.ndarray:
        return np.hypot(self.px, self.py)

    @property
    def eta(self) -> np.ndarray:
        return kinematics(self.px, self.py, self.pz, self.e)[1]

    @property
    def phi(self) -> np.ndarray:
        return np.arctan2(self.py, self.px)

    def select(self, keep: np.ndarray) -> "Jets":
        """The jets where ``keep`` is true."""
        return self.take(np.nonzero(keep)[0])

    def take(self, index: np.ndarray, valid: np.ndarray | None = None) -> "Jets":
        """Jets at ``index`` (repeats allowed); where ``valid`` is false, an empty zero jet."""
        index = np.asarray(index, dtype=np.int64)
        if valid is None:
            valid = np.ones(len(index), dtype=bool)
        safe = np.where(valid, index, 0) if len(self) else np.zeros(len(index), dtype=np.int64)
        counts = np.where(valid, self.n_constituents[safe] if len(self) else 0, 0)
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        gather = _ranges(self.constituent_offsets[safe] if len(self) else safe, counts)

        def column(values, fill=0):
            return np.where(valid, values[safe], fill) if len(self) else \
                np.full(len(index), fill, dtype=values.dtype)

        return Jets(column(self.event), column(self.rank), column(self.px), column(self.py),
                    column(self.pz), column(self.e), offsets, self.constituents[gather])


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    steps = np.ones(total, dtype=np.int64)
    nonempty = counts > 0
    first = ends[nonempty] - counts[nonempty]
    steps[0] = starts[nonempty][0]
    jumps = starts[nonempty][1:] - (starts[nonempty][:-1] + counts[nonempty][:-1] - 1)
    steps[first[1:]] = jumps
    return np.cumsum(steps)


def cluster(offsets: np.ndarray, px, py, pz, e, *, radius: float = 0.8,
            pt_min: float = 20.0) -> Jets:
    """Anti-kT jets of every event (``offsets`` delimit events in the flat columns)."""
    fastjet = _fastjet()
    events = _events(offsets, px, py, pz, e)
    sequence = fastjet.ClusterSequence(events, fastjet.JetDefinition(fastjet.antikt_algorithm,
                                                                     radius))
    jets = sequence.inclusive_jets(pt_min)
    index = sequence.constituent_index(pt_min)
    n_per_event = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
    flat = ak.flatten(jets, axis=1)
    jpx, jpy, jpz, je = (ak.to_numpy(flat[name]).astype(np.float64)
                         for name in ("px", "py", "pz", "E"))
    event = np.repeat(np.arange(len(n_per_event), dtype=np.int64), n_per_event)
    per_jet = ak.flatten(index, axis=1)
    counts = ak.to_numpy(ak.num(per_jet, axis=1)).astype(np.int64)
    local = ak.to_numpy(ak.flatten(per_jet, axis=1)).astype(np.int64)
    jet_of_constituent = np.repeat(np.arange(len(counts)), counts)
    flat_index = np.asarray(offsets, np.int64)[event[jet_of_constituent]] + local

    # Order jets by (event, -pT) and constituents by (jet, -pT).
    jet_pt = np.hypot(jpx, jpy)
    order = np.lexsort((-jet_pt, event))
    rank = np.empty(len(order), dtype=np.int32)
    starts = np.zeros(len(n_per_event) + 1, dtype=np.int64)
    np.cumsum(n_per_event, out=starts[1:])
    rank[order] = (np.arange(len(order)) - starts[event[order]]).astype(np.int32)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    particle_pt = np.hypot(np.asarray(px)[flat_index], np.asarray(py)[flat_index])
    constituent_order = np.lexsort((-particle_pt, position[jet_of_constituent]))
    jet_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts[order], out=jet_offsets[1:])
    return Jets(event[order], rank[order], jpx[order], jpy[order], jpz[order], je[order],
                jet_offsets, flat_index[constituent_order])


def substructure(jets: Jets, px, py, pz, e, *, taus: bool = True) -> dict[str, np.ndarray]:
    """Soft-drop mass and (unless ``taus=False``) tau_1..tau_4 of every jet."""
    n = len(jets)
    if n == 0:
        return {name: np.zeros(0) for name in ("sdmass", "tau1", "tau2", "tau3", "tau4")}
    index = jets.constituents
    cpx, cpy, cpz, ce = (np.ascontiguousarray(np.asarray(v, dtype=np.float64)[index])
                         for v in (px, py, pz, e))
    result = {"sdmass": softdrop_masses(jets.constituent_offsets, cpx, cpy, cpz, ce)}
    if taus:
        fastjet = _fastjet()
        sequence = fastjet.ClusterSequence(
            _events(jets.constituent_offsets, cpx, cpy, cpz, ce),
            fastjet.JetDefinition(fastjet.cambridge_algorithm, _RECLUSTER_R))
        values = ak.to_numpy(sequence.njettiness(njets=[1, 2, 3, 4], **NSUBJETTINESS))
        values = np.asarray(values, dtype=np.float64).reshape(n, 4)
        for k in range(4):
            result[f"tau{k + 1}"] = np.nan_to_num(values[:, k])
    return result


def softdrop_masses_fastjet(offsets, px, py, pz, e) -> np.ndarray:
    """Soft-drop masses from FastJet (C/A reclustering + ``exclusive_jets_softdrop_grooming``)."""
    fastjet = _fastjet()
    sequence = fastjet.ClusterSequence(_events(offsets, px, py, pz, e),
                                       fastjet.JetDefinition(fastjet.cambridge_algorithm,
                                                             _RECLUSTER_R))
    groomed = sequence.exclusive_jets_softdrop_grooming(njets=1, **SOFTDROP)
    return np.nan_to_num(ak.to_numpy(groomed.msoftdrop).astype(np.float64))


def softdrop_masses(offsets, px, py, pz, e, *, zcut: float = SOFTDROP["symmetry_cut"],
                    beta: float = SOFTDROP["beta"], r0: float = SOFTDROP["R0"]) -> np.ndarray:
    """Soft-drop masses of the jets whose constituents are ``offsets``-delimited rows."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    arrays = [np.ascontiguousarray(v, dtype=np.float64) for v in (px, py, pz, e)]
    return _softdrop_kernel()(offsets, *arrays, float(zcut), float(beta), float(r0))


_KERNEL = None


def _softdrop_kernel():
    """Compile (once per process; cached on disk) the numba soft-drop kernel."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        # the kernel's helpers must be compiled functions too; rebinding the module names
        # lets the kernel (and any Python caller) reach the compiled versions
        global _rapidity_phi, _angular_distance2
        _rapidity_phi = numba.njit(cache=True, nogil=True)(_rapidity_phi)
        _angular_distance2 = numba.njit(cache=True, nogil=True)(_angular_distance2)
        _KERNEL = numba.njit(cache=True, nogil=True)(_softdrop_python)
    return _KERNEL


def _rapidity_phi(px, py, pz, e):  # pragma: no cover - compiled
    """FastJet's rapidity and phi in [0, 2 pi) of a four-momentum (GeV)."""
    kt2 = px * px + py * py
    m2 = max(e * e - kt2 - pz * pz, 0.0)
    e_plus_pz = e + abs(pz)
    if kt2 + m2 == 0.0:
        rapidity = 1e5 if pz >= 0 else -1e5
    else:
        rapidity = 0.5 * np.log((kt2 + m2) / (e_plus_pz * e_plus_pz))
        if pz > 0:
            rapidity = -rapidity
    phi = np.arctan2(py, px) if kt2 > 0 else 0.0
    if phi < 0:
        phi += 2.0 * np.pi
    return rapidity, phi


def _angular_distance2(rapidity_a, phi_a, rapidity_b, phi_b):  # pragma: no cover - compiled
    """Delta R squared in (rapidity, phi), phi difference folded into [0, pi]."""
    dphi = abs(phi_a - phi_b)
    if dphi > np.pi:
        dphi = 2.0 * np.pi - dphi
    dy = rapidity_a - rapidity_b
    return dy * dy + dphi * dphi


def _softdrop_python(offsets, px, py, pz, e, zcut, beta, r0):  # pragma: no cover - compiled
    """C/A clustering (nearest-neighbour bookkeeping, E-scheme, FastJet's rapidity and phi)
    followed by the soft-drop walk along the harder (larger-pT) branch, for every jet."""
    n_jets = len(offsets) - 1
    out = np.zeros(n_jets)
    for jet in range(n_jets):
        start = offsets[jet]
        n = offsets[jet + 1] - start
        if n == 0:
            continue
        size = 2 * n - 1
        vx = np.empty(size)
        vy = np.empty(size)
        vz = np.empty(size)
        ve = np.empty(size)
        rap = np.empty(size)
        phi = np.empty(size)
        left = -np.ones(size, dtype=np.int64)
        right = -np.ones(size, dtype=np.int64)
        slot = np.empty(n, dtype=np.int64)  # node held by each active slot
        nn_dist = np.empty(n)
        nn_slot = np.empty(n, dtype=np.int64)
        active = np.ones(n, dtype=np.bool_)
        for k in range(size):
            if k < n:
                vx[k] = px[start + k]
                vy[k] = py[start + k]
                vz[k] = pz[start + k]
                ve[k] = e[start + k]
        for k in range(n):
            slot[k] = k
        for k in range(n):
            rap[k], phi[k] = _rapidity_phi(vx[k], vy[k], vz[k], ve[k])
        # initial nearest neighbours
        for a in range(n):
            best = np.inf
            best_b = -1
            for b in range(n):
                if b == a:
                    continue
                d = _angular_distance2(rap[slot[a]], phi[slot[a]], rap[slot[b]], phi[slot[b]])
                if d < best:
                    best = d
                    best_b = b
            nn_dist[a] = best
            nn_slot[a] = best_b
        node = n - 1
        for step in range(n - 1):
            best = np.inf
            a = -1
            for k in range(n):
                if active[k] and nn_dist[k] < best:
                    best = nn_dist[k]
                    a = k
            b = nn_slot[a]
            i, j = slot[a], slot[b]
            node = n + step
            vx[node] = vx[i] + vx[j]
            vy[node] = vy[i] + vy[j]
            vz[node] = vz[i] + vz[j]
            ve[node] = ve[i] + ve[j]
            left[node] = i
            right[node] = j
            rap[node], phi[node] = _rapidity_phi(vx[node], vy[node], vz[node], ve[node])
            slot[a] = node
            active[b] = False
            # refresh nearest neighbours
            for k in range(n):
                if not active[k]:
                    continue
                if k == a or nn_slot[k] == a or nn_slot[k] == b:
                    best_d = np.inf
                    best_k = -1
                    for q in range(n):
                        if q == k or not active[q]:
                            continue
                        d = _angular_distance2(rap[slot[k]], phi[slot[k]], rap[slot[q]],
                                               phi[slot[q]])
                        if d < best_d:
                            best_d = d
                            best_k = q
                    nn_dist[k] = best_d
                    nn_slot[k] = best_k
                else:
                    d = _angular_distance2(rap[slot[k]], phi[slot[k]], rap[node], phi[node])
                    if d < nn_dist[k]:
                        nn_dist[k] = d
                        nn_slot[k] = a
        # soft-drop walk from the root
        current = node
        while left[current] >= 0:
            c1, c2 = left[current], right[current]
            pt1 = np.sqrt(vx[c1] * vx[c1] + vy[c1] * vy[c1])
            pt2 = np.sqrt(vx[c2] * vx[c2] + vy[c2] * vy[c2])
            z = min(pt1, pt2) / (pt1 + pt2) if pt1 + pt2 > 0 else 0.0
            threshold = zcut
            if beta != 0.0:
                delta_r = np.sqrt(_angular_distance2(rap[c1], phi[c1], rap[c2], phi[c2]))
                threshold = zcut * (delta_r / r0) ** beta
            if z > threshold:
                break
            current = c1 if pt1 >= pt2 else c2
        m2 = ve[current] ** 2 - vx[current] ** 2 - vy[current] ** 2 - vz[current] ** 2
        out[jet] = np.sqrt(m2) if m2 > 0 else 0.0
    return out


def softdrop_mass_reference(px, py, pz, e, *, zcut: float = 0.1, beta: float = 0.0,
                            r0: float = 0.8) -> float:
    """Soft-drop mass from a plain Cambridge/Aachen clustering and declustering walk.

    Slow (O(n^3) in Python) and meant for tests: merge the closest pair in (rapidity, phi) until
    one object remains, then walk down the history, keeping the harder branch until
    ``min(pT1, pT2) / (pT1 + pT2) > zcut (dR12 / R0)^beta``.
    """
    vectors = [np.array(v, dtype=np.float64) for v in zip(px, py, pz, e)]
    children: list[tuple[int, int] | None] = [None] * len(vectors)
    active = list(range(len(vectors)))

    def rap_phi(v):
        pt2 = v[0] ** 2 + v[1] ** 2
        rap = 0.5 * np.log((v[3] + v[2]) / (v[3] - v[2])) if pt2 > 0 else 0.0
        return rap, np.arctan2(v[1], v[0])

    def delta_r2(a, b):
        (ya, pa), (yb, pb) = rap_phi(a), rap_phi(b)
        return (ya - yb) ** 2 + delta_phi(pa, pb) ** 2

    if not vectors:
        return 0.0
    while len(active) > 1:
        best = None
        for i in range(len(active)):
            for j in range(i + 1, len(active)):
                d = delta_r2(vectors[active[i]], vectors[active[j]])
                if best is None or d < best[0]:
                    best = (d, i, j)
        _, i, j = best
        a, b = active[i], active[j]
        vectors.append(vectors[a] + vectors[b])
        children.append((a, b))
        active = [k for k in active if k not in (a, b)] + [len(vectors) - 1]

    node = active[0]
    while children[node] is not None:
        a, b = children[node]
        pta, ptb = np.hypot(*vectors[a][:2]), np.hypot(*vectors[b][:2])
        z = min(pta, ptb) / (pta + ptb)
        if z > zcut * (np.sqrt(delta_r2(vectors[a], vectors[b])) / r0) ** beta:
            break
        node = a if pta >= ptb else b
    v = vectors[node]
    return float(np.sqrt(max(v[3] ** 2 - v[0] ** 2 - v[1] ** 2 - v[2] ** 2, 0.0)))
