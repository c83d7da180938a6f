"""The embedded default (data/default + data/models): checksums, contents, and the physics
acceptance at efficiency 1e-4 of all jets (the paper's Fig. 3): the jets that the paper's presets
select peak at the W, Z, Higgs and top masses, and the presets enrich those processes.

Known answers: m_W = 80.4, m_Z = 91.2, m_H = 125, m_t = 172.5 GeV. Peaks are the fullest 10-GeV
bin of the weighted mSD spectrum of the selected jets.
"""

from __future__ import annotations

import numpy as np
import pytest

from sophon.analysis import DatasetAnalysis
from sophon.discriminant import PRESETS
from sophon.labels import N_CLASSES
from sophon.manifest import DEFAULT_DATASET, REPOSITORY_ROOT, load_manifest, verify_path
from sophon.spectrum import MassBinning
from sophon.store import LATENT_DIM, JetDataset

TIGHT = 1e-4
BINNING = MassBinning(bins=50, low=0.0, high=500.0)  # 10 GeV bins
W_MASS, Z_MASS, H_MASS, TOP_MASS = 80.4, 91.2, 125.0, 172.5


@pytest.fixture(scope="module")
def analysis():
    if not DEFAULT_DATASET.is_dir():
        pytest.skip("the embedded default data/default is not in this checkout")
    verify_path(DEFAULT_DATASET)
    return DatasetAnalysis(JetDataset(DEFAULT_DATASET), binning=BINNING)


def _scan(analysis: DatasetAnalysis, preset: str):
    return analysis.jet_scan(PRESETS[preset], efficiencies=(1.0, TIGHT))


def _peak(scan, level: int, processes: tuple[str, ...] | None = None,
          window: tuple[float, float] = (30.0, 300.0)) -> float:
    """The centre (GeV) of the fullest bin in ``window`` of the spectrum at ``level``."""
    names = scan.process_names
    spectrum = scan.spectrum(level, None if processes is None else
                             [names.index(p) for p in processes])
    centers = BINNING.centers
    inside = (centers > window[0]) & (centers < window[1])
    return float(centers[inside][np.argmax(spectrum[inside])])


def _share(scan, level: int, process: str) -> float:
    """The weighted fraction of the jets passing ``level`` that come from ``process``."""
    stack = scan.sum_of_weights[level]
    return float(stack[scan.process_names.index(process)].sum() / stack.sum())


def test_every_shipped_file_matches_the_manifest():
    entries = load_manifest()
    assert {entry.kind for entry in entries} == {"dataset", "model"}
    for entry in entries:
        assert entry.command and entry.seed is not None, entry.name
        assert verify_path(REPOSITORY_ROOT / entry.path)  # size and sha256
    data_bytes = sum(f.stat().st_size for f in (REPOSITORY_ROOT / "data").rglob("*") if f.is_file())
    assert data_bytes <= 30e6  # the budget for everything under data/
    assert sum((REPOSITORY_ROOT / e.path).stat().st_size for e in entries
               if e.kind == "model") <= 10e6


def test_contents(analysis):
    dataset = analysis.dataset
    assert dataset.score_head is not None  # the scores are recomputed from the latents
    assert dataset.scores.shape == (len(dataset), N_CLASSES)
    np.testing.assert_allclose(dataset.scores.sum(axis=1), 1.0, atol=1e-4)
    assert dataset.latents.shape == (len(dataset), LATENT_DIM)
    for column in ("jet_pt", "jet_sdmass", "process", "weight", "event_id", "jet_rank",
                   "umap_x", "umap_y", "part_px"):
        assert dataset.has(column), column
    assert dataset.metadata.luminosity_fb == 138.0
    assert {"QCD", "W+jets", "Z+jets", "ttbar", "Higgs"} <= set(dataset.process_names)
    sdmass = dataset.column("jet_sdmass")
    assert sdmass.min() > 20 and sdmass.max() < 500  # the model's training phase space
    lengths = dataset.frame(["part_px"])["part_px"].list.len().to_numpy()
    assert int((lengths > 0).sum()) == 1500  # enough jets to rescore and to look at carry constituents
    assert np.isfinite(dataset.column("umap_x")).all()


def test_w_and_z_jets_selected_by_x_to_cs(analysis):
    scan = _scan(analysis, "A1: X->cs")
    assert scan.selected_jets(1) >= 200  # enough simulated statistics at eps = 1e-4
    assert abs(_peak(scan, 1, ("W+jets",)) - W_MASS) <= 10.0
    assert abs(_peak(scan, 1, ("Z+jets",)) - Z_MASS) <= 10.0
    # the tagger enriches W+jets by more than an order of magnitude
    assert _share(scan, 1, "W+jets") > 20 * _share(scan, 0, "W+jets")


def test_z_and_higgs_jets_selected_by_x_to_bb(analysis):
    scan = _scan(analysis, "A2: X->bb")
    assert scan.selected_jets(1) >= 200
    assert abs(_peak(scan, 1, ("Z+jets",)) - Z_MASS) <= 10.0
    assert abs(_peak(scan, 1, ("Higgs",)) - H_MASS) <= 15.0
    assert _share(scan, 1, "Z+jets") > 20 * _share(scan, 0, "Z+jets")


def test_top_jets_selected_by_three_prongs_one_b(analysis):
    scan = _scan(analysis, "A3: X->b q q")
    assert scan.selected_jets(1) >= 100
    assert abs(_peak(scan, 1, ("ttbar",), window=(100.0, 300.0)) - TOP_MASS) <= 15.0
    assert _share(scan, 1, "ttbar") > 20 * _share(scan, 0, "ttbar")


#: Where the summed spectrum at eps = 1e-4 must peak (GeV): W or Z for X->cs, Z or H for X->bb,
#: the top for three prongs with one b.
PEAK_RANGES = {"A1: X->cs": (65.0, 105.0), "A2: X->bb": (80.0, 135.0),
               "A3: X->b q q": (158.0, 188.0)}


@pytest.mark.parametrize("preset", list(PEAK_RANGES))
def test_the_summed_spectrum_peaks_at_the_resonance(analysis, preset):
    """The paper's Fig. 3: at eps = 1e-4 the resonance rises out of QCD in the sum of all
    processes, not only in the per-process stack."""
    scan = _scan(analysis, preset)
    low, high = PEAK_RANGES[preset]
    assert low <= _peak(scan, 1) <= high


#: What the default does not reach yet (docs/default_dataset.md): with the QCD extension the
#: estimate of QCD's share is precise (ESS 130 at 1e-4), and sophon-small-v2 lets 57 % of X->cs's
#: selected weight be QCD. Strict: the mark turns red the day the check passes.
@pytest.mark.xfail(strict=True, reason="the model: QCD is 57 % of the X->cs selection at 1e-4 "
                                       "(docs/default_dataset.md)")
def test_qcd_is_less_than_half_of_the_x_to_cs_selection(analysis):
    assert _share(_scan(analysis, "A1: X->cs"), 1, "QCD") < 0.5


@pytest.mark.parametrize("preset", list(PEAK_RANGES))
def test_tight_cuts_rest_on_many_jets(analysis, preset):
    """Kish's effective number of jets, (sum w)^2 / sum w^2 of the jets passing, and the largest
    single jet's share of the selected weight: the peaks are physics, not a few heavy jets (the
    first default: ESS 5-9 at 1e-4 and 12-40 at 1e-3, one jet up to 39 % of the weight)."""
    scan = analysis.jet_scan(PRESETS[preset], efficiencies=(1e-3, TIGHT))
    assert scan.effective_jets(0) >= 500
    assert scan.effective_jets(1) >= 100
    assert scan.largest_weight_share(1) <= 0.05


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")  # the figures' bits depend on the thread count
def test_a_transfer_head_tells_higgs_from_z_jets_better_than_the_best_node(analysis):
    """Issue 17's case: Higgs against Z+jets, where H->bb and Z->bb share their decay content and
    so their output nodes (the nodes name the content, not the resonance). A flattened ensemble of
    five heads on the latents (seed 0, held-out half) against the best node discriminant of the
    188 classes and the named groups, chosen on the training half; on this default the head
    reaches about 6 at 50 % signal efficiency, the node about 3.5 (docs/transfer.md)."""
    from sophon.transfer import TransferOptions, fit_transfer

    result = fit_transfer(analysis.dataset, "process:Higgs", "process:Z+jets",
                          options=TransferOptions(ensemble=5, seed=0))
    head, node = result.rejection(0.5), result.rejection(0.5, nodes=True)
    assert head.rejection - node.rejection > 2 * np.hypot(head.error, node.error)
    assert head.effective_jets > 50 and node.effective_jets > 50  # not a few heavy jets
