"""Truth record and JetClass-II labels (arXiv:2405.12972, appendix A), vectorised over a batch.

Resonant jets
    The decay tree of every generic resonance X is read off the event record: X (its last copy,
    i.e. at the moment it decays), the Y states for ``X -> Y Y``, the decay products *at the decay
    vertex* (before showering), and for taus their direct decay products. A tau is ``tau_e`` or
    ``tau_mu`` if an electron or muon is among them, else ``tau_h``. A jet takes the class whose
    content equals the multiset of decay products within ``dR < 0.8`` of the jet axis (u and d
    merged as ``q``, neutrinos as ``v``), with the X or X->YY topology of the resonance; a jet
    with products of two different resonances, or whose products form no class, is dropped.
QCD jets
    Quarks entering hadronisation (Pythia status -71..-79) with pT > 10 GeV within dR < 0.8 are
    counted by flavour: ``b``, ``c`` and ``s`` each 0, 1 or >= 2, giving one of the 27 ``QCD_*``
    classes (``QCD_light`` for none).

Distances use pseudorapidity and azimuth. The ``aux_genpart_*`` record of a jet lists the matched
resonance tree (X, Y, Y, products, tau products) or the counted partons (``isQcdParton``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sophon.generate.events import EventBatch
from sophon.generate.jets import Jets, _ranges, delta_phi, kinematics
from sophon.labels import CONTENTS, LABELS

__all__ = ["TOKENS", "Truth", "resonance_truth", "qcd_partons", "label_resonant_jets",
           "decay_key", "decay_jets",
           "label_qcd_jets", "aux_for_sm_jets", "label_index_from_counts", "class_key",
           "qcd_label_name"]

#: Product tokens, in the order of the count vectors used for class keys.
TOKENS = ("b", "c", "s", "q", "g", "e", "mu", "tau_e", "tau_mu", "tau_h", "neutrinos")
_T = {name: i for i, name in enumerate(TOKENS)}
_BASE = 5  # no class has more than four products of one kind
MATCH_RADIUS = 0.8
QCD_PARTON_PT_MIN = 10.0

# Aux categories, in the order they are listed.
CAT_X, CAT_Y, CAT_PRODUCT, CAT_TAU, CAT_PARTON = range(5)


def class_key(counts, topology: int) -> int:
    """Integer key of a product multiset (counts in ``TOKENS`` order) and topology (0 X, 1 X_YY)."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * _BASE ** np.arange(len(TOKENS))).sum() + topology * _BASE ** len(TOKENS))


@lru_cache(maxsize=1)
def _key_table() -> tuple[np.ndarray, np.ndarray]:
    keys, labels = [], []
    for content in CONTENTS:
        if not content.resonant:
            continue
        counts = [getattr(content, name) for name in TOKENS]
        keys.append(class_key(counts, 1 if content.name.startswith("X_YY_") else 0))
        labels.append(content.index)
    keys = np.array(keys, dtype=np.int64)
    order = np.argsort(keys)
    if len(np.unique(keys)) != len(keys):
        raise AssertionError("two JetClass-II classes share a content key")
    return keys[order], np.array(labels, dtype=np.int32)[order]


def label_index_from_counts(keys: np.ndarray) -> np.ndarray:
    """JetClass-II index for each class key, -1 where the content is no class."""
    table_keys, table_labels = _key_table()
    position = np.clip(np.searchsorted(table_keys, keys), 0, len(table_keys) - 1)
    return np.where(table_keys[position] == keys, table_labels[position], -1).astype(np.int32)


def qcd_label_name(n_b: int, n_c: int, n_s: int) -> str:
    name = "b" * min(n_b, 2) + "c" * min(n_c, 2) + "s" * min(n_s, 2)
    return "QCD_" + (name or "light")


@lru_cache(maxsize=1)
def _qcd_table() -> np.ndarray:
    table = np.empty((3, 3, 3), dtype=np.int32)
    for b in range(3):
        for c in range(3):
            for s in range(3):
                table[b, c, s] = LABELS.index(qcd_label_name(b, c, s))
    return table


@dataclass
class Truth:
    """Truth entries of a batch: flat arrays, one row per listed particle."""

    index: np.ndarray  # flat particle index in the batch
    event: np.ndarray
    owner: np.ndarray  # flat index of the resonance X the entry belongs to (-1 for partons)
    category: np.ndarray  # CAT_*
    token: np.ndarray  # product token (TOKENS index), -1 if none
    topology: np.ndarray  # 0: X -> 2 products, 1: X -> Y Y
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    pid: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


class _Record:
    """History helpers on a batch: global pointers and copy chains (copy = same PDG id)."""

    def __init__(self, batch: EventBatch):
        self.pid = batch.pid
        self.mother = batch.to_global(batch.mother1)
        self.d1 = batch.to_global(batch.daughter1)
        self.d2 = batch.to_global(batch.daughter2)

    def _same(self, pointer: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (pointer >= 0) & (self.pid[np.maximum(pointer, 0)] == self.pid[rows])

    def is_last_copy(self) -> np.ndarray:
        rows = np.arange(len(self.pid))
        return ~self._same(self.d1, rows) & ~self._same(self.d2, rows)

    def first_copy(self, rows: np.ndarray) -> np.ndarray:
        rows = rows.copy()
        for _ in range(500):
            up = self.mother[rows]
            step = self._same(up, rows)
            if not step.any():
                break
            rows = np.where(step, up, rows)
        return rows

    def last_copy(self, rows: np.ndarray) -> np.ndarray:
        rows = rows.copy()
        for _ in range(500):
            a, b = self.d1[rows], self.d2[rows]
            same_a = self._same(a, rows)
            same_b = ~same_a & self._same(b, rows)
            if not (same_a.any() or same_b.any()):
                break
            rows = np.where(same_a, a, np.where(same_b, b, rows))
        return rows


_TOKEN_OF_PID = {5: _T["b"], 4: _T["c"], 3: _T["s"], 2: _T["q"], 1: _T["q"], 21: _T["g"],
                 11: _T["e"], 13: _T["mu"], 12: _T["neutrinos"], 14: _T["neutrinos"],
                 16: _T["neutrinos"]}


def resonance_truth(batch: EventBatch, x_ids: tuple[int, ...], y_ids: tuple[int, ...]) -> Truth:
    """Decay trees of the resonances ``x_ids`` (with intermediate states ``y_ids``) of a batch."""
    pid = batch.pid
    apid = np.abs(pid)
    n = len(pid)
    record = _Record(batch)
    mother = record.mother
    candidate = record.is_last_copy() & np.isin(apid, x_ids) & (batch.status < 0)
    rows = np.nonzero(candidate)[0]
    parent_of_first = mother[record.first_copy(rows)]
    inside_other = (parent_of_first >= 0) & candidate[np.maximum(parent_of_first, 0)]
    is_x = np.zeros(n, dtype=bool)
    is_x[rows[~inside_other]] = True

    owner = np.full(n, -1, dtype=np.int64)
    owner[is_x] = np.nonzero(is_x)[0]
    category = np.full(n, -1, dtype=np.int8)
    category[is_x] = CAT_X
    has_parent = mother >= 0
    safe_mother = np.maximum(mother, 0)

    # Children of X: Y states (followed to their last copy) or decay products.
    child_of_x = has_parent & is_x[safe_mother]
    child_is_y = child_of_x & np.isin(apid, y_ids)
    y_last = record.last_copy(np.nonzero(child_is_y)[0])
    owner[y_last] = mother[child_is_y]
    category[y_last] = CAT_Y
    is_y = np.zeros(n, dtype=bool)
    is_y[y_last] = True
    topology_of_x = np.zeros(n, dtype=np.int8)
    topology_of_x[mother[child_is_y]] = 1

    product = (child_of_x & ~child_is_y) | (has_parent & is_y[safe_mother])
    owner[product] = np.where(is_y[mother[product]], owner[mother[product]], mother[product])
    category[product] = CAT_PRODUCT

    # Tau decay products: direct daughters of the last copy of a tau product.
    tau = product & (apid == 15)
    tau_last = record.last_copy(np.nonzero(tau)[0])
    is_tau_node = np.zeros(n, dtype=bool)
    is_tau_node[tau_last] = True
    tau_owner = np.full(n, -1, dtype=np.int64)
    tau_owner[tau_last] = owner[tau]
    tau_product = has_parent & is_tau_node[safe_mother] & ~product
    owner[tau_product] = tau_owner[mother[tau_product]]
    category[tau_product] = CAT_TAU
    # Tau decay mode from its products (first copy of the tau carries the token).
    has_e = np.zeros(n, dtype=bool)
    has_mu = np.zeros(n, dtype=bool)
    has_e[mother[tau_product & (apid == 11)]] = True
    has_mu[mother[tau_product & (apid == 13)]] = True
    tau_token = np.where(has_e[tau_last], _T["tau_e"],
                         np.where(has_mu[tau_last], _T["tau_mu"], _T["tau_h"]))

    token = np.full(n, -1, dtype=np.int8)
    lookup = np.full(max(_TOKEN_OF_PID) + 1, -1, dtype=np.int8)
    for code, value in _TOKEN_OF_PID.items():
        lookup[code] = value
    small = product & (apid < len(lookup))
    token[small] = lookup[apid[small]]
    token[np.nonzero(tau)[0]] = tau_token

    rows = np.nonzero(category >= 0)[0]
    rows = rows[owner[rows] >= 0]
    pt, eta, phi, mass = kinematics(batch.px[rows], batch.py[rows], batch.pz[rows], batch.e[rows])
    return Truth(index=rows, event=batch.event[rows], owner=owner[rows],
                 category=category[rows].astype(np.int8), token=token[rows],
                 topology=topology_of_x[owner[rows]], pt=pt, eta=eta, phi=phi,
                 mass=batch.m[rows], pid=pid[rows])


def qcd_partons(batch: EventBatch) -> Truth:
    """Quarks entering hadronisation (status -71..-79) with pT > 10 GeV."""
    apid = np.abs(batch.pid)
    keep = (apid >= 1) & (apid <= 5) & (batch.status <= -71) & (batch.status >= -79) \
        & (batch.pt > QCD_PARTON_PT_MIN)
    rows = np.nonzero(keep)[0]
    pt, eta, phi, _ = kinematics(batch.px[rows], batch.py[rows], batch.pz[rows], batch.e[rows])
    token = np.select([apid[rows] == 5, apid[rows] == 4, apid[rows] == 3],
                      [_T["b"], _T["c"], _T["s"]], _T["q"]).astype(np.int8)
    return Truth(index=rows, event=batch.event[rows], owner=np.full(len(rows), -1, np.int64),
                 category=np.full(len(rows), CAT_PARTON, np.int8), token=token,
                 topology=np.zeros(len(rows), np.int8), pt=pt, eta=eta, phi=phi,
                 mass=batch.m[rows], pid=batch.pid[rows])


def _jet_pairs(jets: Jets, jet_eta: np.ndarray, jet_phi: np.ndarray, truth: Truth,
               n_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (jet, truth row) pairs of the same event, and whether the row is within dR < 0.8."""
    order = np.argsort(truth.event, kind="stable")
    starts = np.searchsorted(truth.event[order], np.arange(n_events + 1))
    counts = (starts[1:] - starts[:-1])[jets.event]
    jet_index = np.repeat(np.arange(len(jets)), counts)
    rows = order[_ranges(starts[:-1][jets.event], counts)]
    deta = truth.eta[rows] - jet_eta[jet_index]
    dphi = delta_phi(truth.phi[rows], jet_phi[jet_index])
    inside = deta * deta + dphi * dphi < MATCH_RADIUS ** 2
    return jet_index, rows, inside


def _resonant_content(jets: Jets, jet_eta, jet_phi, truth: Truth, n_events: int):
    """Per jet, the class key (:func:`class_key`) of the decay products within ``dR < 0.8``
    (-1: none, products of two resonances, or a product that is no class ingredient) and the
    resonance tree they come from; with the (jet, truth row) pairs, for :func:`_tree_aux`."""
    n_jets = len(jets)
    jet_index, rows, inside = _jet_pairs(jets, jet_eta, jet_phi, truth, n_events)
    is_product = truth.category[rows] == CAT_PRODUCT
    hit = inside & is_product
    owner = truth.owner[rows]
    big = np.iinfo(np.int64).max
    lowest = np.full(n_jets, big, dtype=np.int64)
    highest = np.full(n_jets, -1, dtype=np.int64)
    np.minimum.at(lowest, jet_index[hit], owner[hit])
    np.maximum.at(highest, jet_index[hit], owner[hit])
    single = (highest >= 0) & (lowest == highest)
    counts = np.zeros((n_jets, len(TOKENS)), dtype=np.int64)
    good = hit & (truth.token[rows] >= 0)
    np.add.at(counts, (jet_index[good], truth.token[rows][good]), 1)
    topology = np.zeros(n_jets, dtype=np.int64)
    topology[jet_index[hit]] = truth.topology[rows][hit]
    keys = (counts * _BASE ** np.arange(len(TOKENS))).sum(axis=1) + topology * _BASE ** len(TOKENS)
    # Bad tokens (a product that is no class ingredient) make the jet's content no class.
    bad = np.zeros(n_jets, dtype=bool)
    bad[jet_index[hit & (truth.token[rows] < 0)]] = True
    keys = np.where(single & ~bad, keys, -1)
    return keys, lowest, (jet_index, rows, owner)


def _tree_aux(kept: np.ndarray, tree: np.ndarray, pairs, truth: Truth):
    """The (jet, truth row) aux pairs of the ``kept`` jets: each one's matched resonance tree
    ``tree``, in tree order."""
    jet_index, rows, owner = pairs
    matched_owner = np.where(kept, tree, -1)
    in_tree = matched_owner[jet_index] == owner
    return _ordered(jet_index[in_tree], rows[in_tree], truth)


def label_resonant_jets(jets: Jets, jet_eta, jet_phi, truth: Truth, n_events: int):
    """Labels (-1: no class) and aux rows of resonance jets.

    Returns ``(labels, aux_jet, aux_row)``: for every jet its JetClass-II index, and pairs
    (jet, truth row) listing the matched resonance tree, in tree order.
    """
    keys, tree, pairs = _resonant_content(jets, jet_eta, jet_phi, truth, n_events)
    labels = label_index_from_counts(keys)  # -1 where the content is no class
    aux_jet, aux_row = _tree_aux(labels >= 0, tree, pairs, truth)
    return labels, aux_jet, aux_row


def decay_key(quarks: tuple[str, str]) -> int:
    """The class key of a jet holding exactly the two quarks ``quarks`` (names of
    :data:`sophon.generate.settings.QUARK_IDS`; u and d count as ``q``) of one X."""
    counts = np.zeros(len(TOKENS), dtype=np.int64)
    for quark in quarks:
        counts[_T["q" if quark in ("u", "d") else quark]] += 1
    return class_key(counts, 0)


def decay_jets(jets: Jets, jet_eta, jet_phi, truth: Truth, n_events: int,
               quarks: tuple[str, str]):
    """The jets holding exactly the decay products ``quarks`` of one X (a decay that may be no
    JetClass-II class, e.g. X->bs), and their aux rows: ``(kept, aux_jet, aux_row)``."""
    keys, tree, pairs = _resonant_content(jets, jet_eta, jet_phi, truth, n_events)
    kept = keys == decay_key(quarks)
    aux_jet, aux_row = _tree_aux(kept, tree, pairs, truth)
    return kept, aux_jet, aux_row


def label_qcd_jets(jets: Jets, jet_eta, jet_phi, partons: Truth, n_events: int):
    """QCD labels from parton flavour counts, and the (jet, parton row) aux pairs."""
    n_jets = len(jets)
    jet_index, rows, inside = _jet_pairs(jets, jet_eta, jet_phi, partons, n_events)
    counts = np.zeros((n_jets, len(TOKENS)), dtype=np.int64)
    np.add.at(counts, (jet_index[inside], partons.token[rows][inside]), 1)
    capped = np.minimum(counts, 2)
    labels = _qcd_table()[capped[:, _T["b"]], capped[:, _T["c"]], capped[:, _T["s"]]]
    aux_jet, aux_row = _ordered(jet_index[inside], rows[inside], partons)
    return labels.astype(np.int32), aux_jet, aux_row


def aux_for_sm_jets(jets: Jets, jet_eta, jet_phi, resonances: Truth, partons: Truth,
                    n_events: int):
    """Aux pairs for SM jets: every resonance tree with a product inside, then the partons.

    Returns ``(aux_jet, aux_row, combined)`` where ``combined`` concatenates both truths.
    """
    combined = Truth(*(np.concatenate([getattr(resonances, f), getattr(partons, f)])
                       for f in Truth.__dataclass_fields__))
    jet_index, rows, inside = _jet_pairs(jets, jet_eta, jet_phi, resonances, n_events)
    hit = inside & (resonances.category[rows] == CAT_PRODUCT)
    # A (jet, resonance) pair with a product inside selects the whole tree of that resonance.
    owners = resonances.owner[rows]
    stride = int(owners.max()) + 1 if len(owners) else 1
    hit_keys = np.unique(jet_index[hit] * stride + owners[hit])
    selected = np.isin(jet_index * stride + owners, hit_keys)
    p_jet, p_rows, p_inside = _jet_pairs(jets, jet_eta, jet_phi, partons, n_events)
    all_jet = np.concatenate([jet_index[selected], p_jet[p_inside]])
    all_row = np.concatenate([rows[selected], p_rows[p_inside] + len(resonances)])
    aux_jet, aux_row = _ordered(all_jet, all_row, combined)
    return aux_jet, aux_row, combined


def _ordered(jet_index: np.ndarray, rows: np.ndarray, truth: Truth):
    """Sort (jet, row) pairs by jet, resonance (partons last), category and record position."""
    owner = truth.owner[rows]
    owner = np.where(owner < 0, np.iinfo(np.int64).max, owner)
    order = np.lexsort((truth.index[rows], truth.category[rows], owner, jet_index))
    return jet_index[order], rows[order]
