"""Process cards and generator settings, as data.

Everything Pythia is told lives here as plain strings, so that a sample's settings can be printed,
stored in the output file's metadata and reproduced exactly. Nothing in this module touches Pythia.

Generic resonances (training samples)
-------------------------------------
Pythia's Higgs, W and Z classes compute partial widths from couplings, but channels declared with
``meMode >= 100`` take their partial width from the table (``mWidth x bRatio``, with a two-body
phase-space factor for ``meMode = 102``). Declaring every channel that way turns the states below
into generic resonances with exactly our branching ratios and line shapes, decayed and showered at
the process level like any resonance. The production process ``f fbar' -> H W`` (Pythia's
``HiggsSM:ffbar2HW``) does not depend on the decay tables, so it carries two generic states per
event, back to back:

* ``X0`` = PDG 25 (neutral): two-prong decays ``b b~, c c~, s s~, u u~, d d~, g g, e e, mu mu,
  tau tau`` (part ``res2p``), or ``X0 -> Y Y`` with ``Y0`` = PDG 35 or ``Y+-`` = PDG +-37
  (part ``res34p``);
* ``X+-`` = PDG 24 (charged): ``c b~, c s~, u b~, c d~, u s~, u d~`` (the flavour-changing
  two-prong classes X_bc, X_cs, X_bq, X_cq, X_sq, and more X_qq) in both parts.

Masses are drawn per generation chunk (see :func:`resonance_masses`) with a flat line shape inside
a +-10 % window, so that a sample covers the mass range continuously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "COMMON",
    "ProcessCard",
    "SM_PROCESSES",
    "TRAINING_PARTS",
    "X_MASS_RANGE",
    "Y_MASS_FRACTION",
    "ResonanceMasses",
    "resonance_masses",
    "resonance_settings",
    "TwoBodyDecay",
    "decay_settings",
    "qcd_training_settings",
    "sm_settings",
    "run_settings",
    "SM_PT_HAT_MIN",
    "SM_BIAS_POWER",
    "X_NEUTRAL",
    "X_CHARGED",
    "Y_NEUTRAL",
    "Y_CHARGED",
]

#: Settings shared by every sample. ``limitTau0``/``tau0Max = 10`` (mm) keeps B and D hadrons
#: (c tau < 0.5 mm) decaying, displaced, inside the record while K0S, Lambda and heavier long-lived
#: particles stay undecayed, as a tracker would see them.
COMMON: tuple[str, ...] = (
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowProcess = 0",
    "Next:numberShowInfo = 0",
    "Init:showChangedSettings = off",
    "Init:showChangedParticleData = off",
    "Init:showProcesses = off",
    "Init:showMultipartonInteractions = off",
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 10",
    "Random:setSeed = on",
)

DEFAULT_ECM = 13_000.0  # GeV

# --- generic resonances -------------------------------------------------------------------------

X_NEUTRAL_ID = 25
X_CHARGED_ID = 24
Y_NEUTRAL_ID = 35
Y_CHARGED_ID = 37

X_MASS_RANGE = (15.0, 500.0)  # GeV, the range of m_X
Y_MASS_FRACTION = (0.2, 0.8)  # m_Y / m_X
_WINDOW = 0.10  # a chunk's X mass window is m_c * (1 -+ _WINDOW)

# (relative weight, meMode, products). meMode 102: partial width = mWidth x bRatio x phase space.
Channel = tuple[float, int, tuple[int, ...]]

#: Neutral two-prong X: one unit per class (u and d share the "q" unit; tau tau gets three units
#: because it feeds three classes, tauh-taue, tauh-taum and tauh-tauh).
X_NEUTRAL: tuple[Channel, ...] = (
    (1.0, 102, (5, -5)), (1.0, 102, (4, -4)), (1.0, 102, (3, -3)),
    (0.5, 102, (2, -2)), (0.5, 102, (1, -1)), (1.0, 102, (21, 21)),
    (1.0, 102, (11, -11)), (1.0, 102, (13, -13)), (3.0, 102, (15, -15)),
)
#: Charged two-prong X+ (X- decays to the charge conjugates).
X_CHARGED: tuple[Channel, ...] = (
    (1.0, 102, (4, -5)), (1.0, 102, (4, -3)), (1.0, 102, (2, -5)),
    (1.0, 102, (4, -1)), (1.0, 102, (2, -3)), (0.5, 102, (2, -1)),
)
#: Neutral Y: hadronic pairs and lepton pairs (both Y leptonic matches no class and is dropped).
Y_NEUTRAL: tuple[Channel, ...] = (
    (1.0, 102, (5, -5)), (1.0, 102, (4, -4)), (1.0, 102, (3, -3)),
    (0.5, 102, (2, -2)), (0.5, 102, (1, -1)), (1.0, 102, (21, 21)),
    (0.7, 102, (11, -11)), (0.7, 102, (13, -13)), (1.5, 102, (15, -15)),
)
#: Charged Y+: the up-type/down-type pairs and l+ nu (Y- decays to the conjugates).
Y_CHARGED: tuple[Channel, ...] = (
    (1.0, 102, (4, -5)), (1.0, 102, (4, -3)), (1.0, 102, (2, -5)),
    (1.0, 102, (4, -1)), (1.0, 102, (2, -3)), (1.0, 102, (2, -1)),
    (1.0, 102, (-11, 12)), (1.0, 102, (-13, 14)), (1.0, 102, (-15, 16)),
)
#: X0 -> Y Y (meMode 100: no threshold factor; the Y masses are picked below m_X per event).
#: Neutral pairs feed about 100 classes, charged pairs about 46.
X_TO_YY: tuple[Channel, ...] = (
    (0.6, 100, (Y_NEUTRAL_ID, Y_NEUTRAL_ID)),
    (0.4, 100, (Y_CHARGED_ID, -Y_CHARGED_ID)),
)


def _decay_table(pdg: int, channels: tuple[Channel, ...]) -> list[str]:
    total = sum(weight for weight, _, _ in channels)
    lines = []
    for i, (weight, me_mode, products) in enumerate(channels):
        verb = "oneChannel" if i == 0 else "addChannel"
        lines.append(f"{pdg}:{verb} = 1 {weight / total:.6f} {me_mode} "
                     + " ".join(str(p) for p in products))
    return lines


def _mass_window(pdg: int, low: float, high: float) -> list[str]:
    """A flat line shape on [low, high]: a Breit-Wigner ten times wider than the window."""
    centre = 0.5 * (low + high)
    if high - low < 1e-3 * centre:  # a fixed mass: a narrow line (a zero width closes all decays)
        return [f"{pdg}:m0 = {centre:.4f}", f"{pdg}:mWidth = {0.002 * centre:.4f}",
                f"{pdg}:mMin = {0.98 * centre:.4f}", f"{pdg}:mMax = {1.02 * centre:.4f}"]
    return [f"{pdg}:m0 = {centre:.4f}", f"{pdg}:mWidth = {10 * (high - low):.4f}",
            f"{pdg}:mMin = {low:.4f}", f"{pdg}:mMax = {high:.4f}"]


@dataclass(frozen=True)
class ResonanceMasses:
    """The mass windows (GeV) of one chunk: neutral X, charged X and the Y states."""

    x_neutral: tuple[float, float]
    x_charged: tuple[float, float]
    y: tuple[float, float]

    @property
    def heaviest(self) -> float:
        return max(self.x_neutral[1], self.x_charged[1])


def resonance_masses(rng: np.random.Generator, fixed_mass: float | None = None) -> ResonanceMasses:
    """Draw one chunk's mass windows: centres flat in ``X_MASS_RANGE``, windows +-10 %.

    ``fixed_mass`` pins both X states to that mass (no window) for validation samples. The Y
    window is ``[0.2 m_X,max, 0.8 m_X,min]`` so that every event has 0.2 < m_Y/m_X < 0.8.
    """
    low, high = X_MASS_RANGE

    def window() -> tuple[float, float]:
        if fixed_mass is not None:
            return (float(fixed_mass), float(fixed_mass))
        centre = rng.uniform(low / (1 - _WINDOW), high / (1 + _WINDOW))
        return (centre * (1 - _WINDOW), centre * (1 + _WINDOW))

    x_neutral, x_charged = window(), window()
    y = (Y_MASS_FRACTION[0] * x_neutral[1], Y_MASS_FRACTION[1] * x_neutral[0])
    if fixed_mass is not None:  # keep a spread of Y masses for a fixed X
        y = (Y_MASS_FRACTION[0] * fixed_mass, Y_MASS_FRACTION[1] * fixed_mass)
    return ResonanceMasses(x_neutral, x_charged, y)


#: pTHat threshold per unit of the heavier X mass: decays open up by dR ~ 2 m / pT, and four
#: prongs need more boost than two to fit in R = 0.8.
BOOST = {"res2p": 1.6, "res34p": 2.4}


def _pt_hat_min(masses: ResonanceMasses, minimum: float, factor: float) -> float:
    return float(np.clip(factor * masses.heaviest, minimum, 1000.0))


def _production(masses: ResonanceMasses, pt_min: float, bias_power: float) -> list[str]:
    """``f fbar' -> X0 X+-`` (Pythia's H W production, both states generic) above ``pt_min``
    GeV, with the mass windows of ``masses`` and a pT bias of power ``bias_power``."""
    settings = [
        "HiggsSM:ffbar2HW = on",
        f"PhaseSpace:pTHatMin = {pt_min:.1f}",
        *_mass_window(X_NEUTRAL_ID, *masses.x_neutral),
        *_mass_window(X_CHARGED_ID, *masses.x_charged),
    ]
    if bias_power > 0:
        settings += ["PhaseSpace:bias2Selection = on",
                     f"PhaseSpace:bias2SelectionPow = {bias_power}",
                     f"PhaseSpace:bias2SelectionRef = {pt_min:.1f}"]
    return settings


def resonance_settings(part: str, masses: ResonanceMasses, *, pt_hat_min: float = 170.0,
                       bias_power: float = 3.0) -> list[str]:
    """Settings for the generic-resonance parts ``res2p`` and ``res34p``.

    Both use ``f fbar' -> X0 X+-`` (Pythia's H W production with both states made generic):
    in ``res2p`` the neutral X decays to the two-prong table, in ``res34p`` to ``Y Y``; the
    charged X always decays to the charged two-prong table. ``bias_power`` flattens the pT
    spectrum (``PhaseSpace:bias2Selection``); event weights are ignored for training samples.
    """
    if part not in ("res2p", "res34p"):
        raise ValueError(f"unknown resonance part {part!r}; expected 'res2p' or 'res34p'")
    settings = [*_production(masses, _pt_hat_min(masses, pt_hat_min, BOOST[part]), bias_power),
                *_decay_table(X_CHARGED_ID, X_CHARGED)]
    if part == "res2p":
        settings += _decay_table(X_NEUTRAL_ID, X_NEUTRAL)
    else:
        settings += _decay_table(X_NEUTRAL_ID, X_TO_YY)
        for pdg, table in ((Y_NEUTRAL_ID, Y_NEUTRAL), (Y_CHARGED_ID, Y_CHARGED)):
            settings += [*_mass_window(pdg, *masses.y), *_decay_table(pdg, table)]
    return settings


#: The quarks of a two-body decay a user names (no top: it decays before it hadronises).
QUARK_IDS = {"d": 1, "u": 2, "s": 3, "c": 4, "b": 5}
_UP_TYPE = frozenset("uc")


@dataclass(frozen=True)
class TwoBodyDecay:
    """A generic resonance decaying to two quarks a user names, e.g. ``bs`` for the paper's
    X->bs, which no JetClass-II class covers (arXiv:2405.12972, section III).

    The neutral X (PDG 25) carries a pair of the same charge type (``b s~`` and ``s b~``, half
    each; ``b b~`` for ``bb``), the charged X (PDG 24) an up-type and a down-type quark
    (``c b~`` for ``bc``). ``first`` is the heavier quark.
    """

    first: str
    second: str

    @classmethod
    def parse(cls, text: str) -> TwoBodyDecay:
        """``"bs"``, ``"b s"``, ``"b,s"`` or ``"X->bs"`` (any case); ValueError naming the text
        otherwise."""
        if not isinstance(text, str) or len(text) > 40:
            raise ValueError("a two-body decay is a short text such as 'bs'")
        cleaned = text.strip().lower()
        if cleaned.startswith("x->"):
            cleaned = cleaned[3:]
        quarks = [c for c in cleaned if c not in " ,~"]
        unknown = [c for c in quarks if c not in QUARK_IDS]
        if unknown or len(quarks) != 2:
            raise ValueError(f"{text!r} is not a two-body quark decay: name two of the quarks "
                             f"{', '.join(QUARK_IDS)} (e.g. 'bs' for X->bs)")
        first, second = sorted(quarks, key=QUARK_IDS.get, reverse=True)
        return cls(first, second)

    @property
    def name(self) -> str:
        """e.g. ``X->bs``."""
        return f"X->{self.first}{self.second}"

    @property
    def charged(self) -> bool:
        return (self.first in _UP_TYPE) != (self.second in _UP_TYPE)

    @property
    def resonance_id(self) -> int:
        """The PDG id of the X that decays so (the other X keeps its two-prong table)."""
        return X_CHARGED_ID if self.charged else X_NEUTRAL_ID

    @property
    def channels(self) -> tuple[Channel, ...]:
        first, second = QUARK_IDS[self.first], QUARK_IDS[self.second]
        if self.charged:  # X+ -> up-type and anti-down-type (X- the conjugates)
            up, down = (first, second) if self.first in _UP_TYPE else (second, first)
            return ((1.0, 102, (up, -down)),)
        if first == second:
            return ((1.0, 102, (first, -first)),)
        return ((1.0, 102, (first, -second)), (1.0, 102, (second, -first)))


def decay_settings(decay: TwoBodyDecay, masses: ResonanceMasses, *, pt_hat_min: float = 170.0,
                   bias_power: float = 3.0) -> list[str]:
    """The ``res2p`` production with the X of ``decay`` decaying only so; the other X keeps its
    two-prong table (its jets are not kept, see :func:`sophon.generate.truth.decay_jets`)."""
    settings = _production(masses, _pt_hat_min(masses, pt_hat_min, BOOST["res2p"]), bias_power)
    for pdg, table in ((X_NEUTRAL_ID, X_NEUTRAL), (X_CHARGED_ID, X_CHARGED)):
        settings += _decay_table(pdg, decay.channels if pdg == decay.resonance_id else table)
    return settings


def qcd_training_settings(*, pt_hat_min: float = 170.0, bias_power: float = 4.0) -> list[str]:
    """QCD multijets for training: all 2 -> 2 QCD processes, pT spectrum flattened by a bias."""
    settings = ["HardQCD:all = on", f"PhaseSpace:pTHatMin = {pt_hat_min:.1f}"]
    if bias_power > 0:
        settings += ["PhaseSpace:bias2Selection = on",
                     f"PhaseSpace:bias2SelectionPow = {bias_power}",
                     f"PhaseSpace:bias2SelectionRef = {pt_hat_min:.1f}"]
    return settings


#: Training parts and their default share of the requested events.
TRAINING_PARTS: dict[str, float] = {"res2p": 0.25, "res34p": 0.45, "qcd": 0.30}

# --- Standard Model sample ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessCard:
    """One SM process: its short name (the ``process`` column), Pythia settings and its share of
    the generated events. Shares are deliberately *not* proportional to the cross sections: rare
    processes get many more events, hence small weights."""

    name: str
    settings: tuple[str, ...]
    share: float
    description: str = ""
    extra: dict = field(default_factory=dict)


SM_PT_HAT_MIN = 200.0  # GeV; see docs/generation.md for what the trigger loses below it
SM_BIAS_POWER = 4.0  # pTHat^4 oversampling (weighted events): high-pT tails keep statistics

SM_PROCESSES: dict[str, ProcessCard] = {card.name: card for card in (
    ProcessCard("QCD", ("HardQCD:all = on",), 0.30, "2 -> 2 QCD (all flavours)"),
    ProcessCard("W+jets", ("WeakBosonAndParton:qqbar2Wg = on", "WeakBosonAndParton:qg2Wq = on"),
                0.12, "W + parton, W decays inclusive"),
    ProcessCard("Z+jets", ("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on",
                           "WeakZ0:gmZmode = 2"), 0.12, "Z + parton (pure Z), inclusive decays"),
    ProcessCard("ttbar", ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on"), 0.12,
                "top pairs, inclusive decays"),
    ProcessCard("single top", ("Top:qq2tq(t:W) = on", "Top:ffbar2tqbar(s:W) = on"), 0.10,
                "t- and s-channel single top"),
    ProcessCard("diboson", ("WeakDoubleBoson:all = on", "WeakZ0:gmZmode = 2"), 0.12,
                "WW, WZ, ZZ, inclusive decays"),
    ProcessCard("Higgs", ("HiggsSM:gg2Hg(l:t) = on", "HiggsSM:qg2Hq(l:t) = on",
                          "HiggsSM:qqbar2Hg(l:t) = on", "HiggsSM:ffbar2HZ = on",
                          "HiggsSM:ffbar2HW = on"), 0.12,
                "H + jet (full top loop), HZ, HW; m_H = 125 GeV, SM decays"),
)}


def sm_settings(card: ProcessCard, *, pt_hat_min: float = SM_PT_HAT_MIN,
                bias_power: float = SM_BIAS_POWER) -> list[str]:
    """A process card with its pTHat cut and, unless ``bias_power = 0``, a pTHat^power bias
    (events then carry weights (pTHatMin / pTHat)^power, folded into the ``weight`` column)."""
    settings = [*card.settings, f"PhaseSpace:pTHatMin = {pt_hat_min:.1f}"]
    if bias_power > 0:
        settings += ["PhaseSpace:bias2Selection = on",
                     f"PhaseSpace:bias2SelectionPow = {bias_power}",
                     f"PhaseSpace:bias2SelectionRef = {pt_hat_min:.1f}"]
    return settings


def run_settings(*, seed: int, ecm: float = DEFAULT_ECM, mpi: bool = True) -> list[str]:
    """Beam, seed and MPI settings appended to every process card."""
    if not 0 <= seed <= 900_000_000:
        raise ValueError(f"Pythia seed {seed} outside 0..900000000")
    return [*COMMON, f"Beams:eCM = {ecm:.1f}", f"Random:seed = {seed}",
            f"PartonLevel:MPI = {'on' if mpi else 'off'}"]
