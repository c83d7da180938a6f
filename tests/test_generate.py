"""Tests of ``sophon.generate``: physics (mass peaks, labels, displaced tracks), the schema,
reproducibility, parallel failures and the command line.

Samples are small (a few hundred events, multi-parton interactions off) and generated once per
module, in-process through :func:`run_chunk`, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import itertools
import json
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sophon.generate import (GenerationError, JETCLASS_SCHEMA, SM_SCHEMA, generate_sm,
                             generate_training, plan_sm, plan_training, read_generation_metadata,
                             run_chunk)
from sophon.generate import settings as cards
from sophon.generate.jets import softdrop_mass_reference, softdrop_masses, softdrop_masses_fastjet
from sophon.generate.truth import TOKENS, class_key, label_index_from_counts, qcd_label_name
from sophon.generate.writer import write_table_atomic
from sophon.labels import CONTENTS, LABELS, index_of

HADRONIC_W = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")


def _run(specs):
    """Run single-chunk plans in-process and return the table."""
    assert len(specs) == 1
    return run_chunk(specs[0]).table


def _peak(values: np.ndarray, low: float, high: float, width: float = 5.0) -> float:
    """Centre of the most populated bin (3-bin smoothed histogram) in [low, high]."""
    counts, edges = np.histogram(values, bins=np.arange(low, high + width, width))
    smooth = np.convolve(counts, np.ones(3), mode="same")
    return float(0.5 * (edges[:-1] + edges[1:])[np.argmax(smooth)])


def _lists(table: pa.Table, name: str) -> list[np.ndarray]:
    """A list column as one NumPy array (of the column's type) per jet."""
    column = table[name].combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _fully_contained(table: pa.Table, pdg: int) -> np.ndarray:
    """Jets whose aux record holds resonance ``pdg`` with all its decay products inside dR < 0.8
    (for a top, the b and both W products)."""
    out = np.zeros(table.num_rows, dtype=bool)
    jet_eta, jet_phi = table["jet_eta"].to_numpy(), table["jet_phi"].to_numpy()
    pid, eta, phi = _lists(table, "aux_genpart_pid"), _lists(table, "aux_genpart_eta"), \
        _lists(table, "aux_genpart_phi")
    is_x = _lists(table, "aux_genpart_isResX")
    is_product = _lists(table, "aux_genpart_isResDecayProd")
    for i in range(table.num_rows):
        top = np.nonzero(is_x[i] & (np.abs(pid[i]) == pdg))[0]
        if len(top) != 1:
            continue
        # products of this tree: the record lists the tree after its X, until the next X
        nxt = np.nonzero(is_x[i][top[0] + 1:])[0]
        end = top[0] + 1 + nxt[0] if len(nxt) else len(pid[i])
        products = np.arange(top[0] + 1, end)[is_product[i][top[0] + 1:end]]
        products = products[np.abs(pid[i][products]) != 24]  # t -> b W: W is listed as Y
        if len(products) < 2:
            continue
        dphi = (phi[i][products] - jet_phi[i] + np.pi) % (2 * np.pi) - np.pi
        out[i] = np.all((eta[i][products] - jet_eta[i]) ** 2 + dphi ** 2 < 0.64)
    return out


@pytest.fixture(scope="module")
def x150() -> pa.Table:
    return _run(plan_training(300, seed=11, parts={"res2p": 1.0}, chunk_events=300, mpi=False,
                              x_mass=150.0))


@pytest.fixture(scope="module")
def res34p() -> pa.Table:
    return _run(plan_training(300, seed=12, parts={"res34p": 1.0}, chunk_events=300, mpi=False))


@pytest.fixture(scope="module")
def qcd() -> pa.Table:
    return _run(plan_training(250, seed=13, parts={"qcd": 1.0}, chunk_events=250, mpi=False))


@pytest.fixture(scope="module")
def w_jets() -> pa.Table:
    return _run(plan_sm(300, seed=14, processes={"W+jets": 1.0}, chunk_events=300, mpi=False,
                        pt_hat_min=450.0, extra_settings=HADRONIC_W))


@pytest.fixture(scope="module")
def top_jets() -> pa.Table:
    return _run(plan_sm(200, seed=15, processes={"ttbar": 1.0}, chunk_events=200, mpi=False,
                        pt_hat_min=600.0, extra_settings=HADRONIC_W))


# --- physics ------------------------------------------------------------------------------------


def test_w_jets_peak_at_the_w_mass(w_jets):
    contained = _fully_contained(w_jets, 24)
    assert contained.sum() >= 50
    peak = _peak(w_jets["jet_sdmass"].to_numpy()[contained], 30, 150)
    assert 70 <= peak <= 90, peak


def test_top_jets_peak_at_the_top_mass(top_jets):
    contained = _fully_contained(top_jets, 6)
    assert contained.sum() >= 50
    peak = _peak(top_jets["jet_sdmass"].to_numpy()[contained], 100, 250)
    assert 160 <= peak <= 190, peak


def test_x150_peaks_at_150_and_labels_are_two_prong(x150):
    labels = x150["jet_label"].to_numpy()
    assert len(labels) >= 100
    assert np.all((labels >= 0) & (labels < 15))  # the 15 two-prong classes
    hadronic = labels < 10  # X -> quarks or gluons
    peak = _peak(x150["jet_sdmass"].to_numpy()[hadronic], 50, 250)
    assert 135 <= peak <= 165, peak
    # both X states were fixed at 150 GeV
    masses = np.concatenate(_lists(x150, "aux_genpart_mass"))[
        np.concatenate(_lists(x150, "aux_genpart_isResX"))]
    assert np.all(np.abs(masses - 150) < 4)


def test_qcd_soft_drop_mass_falls_and_labels_are_qcd(qcd):
    labels = qcd["jet_label"].to_numpy()
    assert np.all(labels >= index_of("QCD_bbccss"))
    counts = np.bincount(labels, minlength=len(LABELS))
    assert counts[index_of("QCD_light")] == counts.max()  # light jets dominate
    msd = qcd["jet_sdmass"].to_numpy()
    n = [np.sum((msd >= lo) & (msd < hi)) for lo, hi in ((30, 70), (70, 110), (110, 200))]
    assert n[0] > n[1] > n[2], n
    assert np.median(msd) < 40


def test_resonant_labels_are_plausible_and_match_the_truth_record(res34p):
    labels = res34p["jet_label"].to_numpy()
    assert len(labels) >= 100
    contents = [CONTENTS[i] for i in labels]
    assert all(c.resonant for c in contents)
    n_yy = sum(c.name.startswith("X_YY_") for c in contents)
    assert n_yy >= 0.3 * len(labels)  # the charged X of res34p events adds two-prong jets
    assert len({c.name for c in contents if c.name.startswith("X_YY_")}) >= 20
    # Recount the products inside each jet from aux_genpart_* and compare with the label.
    token = {5: "b", 4: "c", 3: "s", 2: "q", 1: "q", 21: "g", 11: "e", 13: "mu", 12: "neutrinos",
             14: "neutrinos", 16: "neutrinos", 15: "tau"}
    jet_eta, jet_phi = res34p["jet_eta"].to_numpy(), res34p["jet_phi"].to_numpy()
    pid, eta, phi = (_lists(res34p, f"aux_genpart_{n}") for n in ("pid", "eta", "phi"))
    product = _lists(res34p, "aux_genpart_isResDecayProd")
    for i, content in enumerate(contents):
        dphi = (phi[i] - jet_phi[i] + np.pi) % (2 * np.pi) - np.pi
        inside = product[i] & ((eta[i] - jet_eta[i]) ** 2 + dphi ** 2 < 0.64)
        found: dict[str, int] = {}
        for code in pid[i][inside]:
            found[token[abs(int(code))]] = found.get(token[abs(int(code))], 0) + 1
        expected = {name: getattr(content, name) for name in TOKENS if getattr(content, name)}
        taus = sum(expected.pop(k, 0) for k in ("tau_e", "tau_mu", "tau_h"))
        if taus:
            expected["tau"] = taus
        assert found == expected, (content.name, found)


def test_tracks_carry_displaced_impact_parameters_for_b_jets(x150):
    labels = x150["jet_label"].to_numpy()
    d0, err = _lists(x150, "part_d0val"), _lists(x150, "part_d0err")
    charge = _lists(x150, "part_charge")
    flags = np.stack([np.concatenate(_lists(x150, f"part_is{n}")) for n in (
        "Electron", "Muon", "Photon", "ChargedHadron", "NeutralHadron")])
    assert np.all(flags.sum(axis=0) == 1)  # exactly one particle-ID flag
    all_charge, all_err = np.concatenate(charge), np.concatenate(err)
    assert np.all((all_charge != 0) == (all_err > 0))  # tracks have errors, neutrals zeros
    significance = np.array([np.sort(np.abs(d / np.where(e > 0, e, 1))[e > 0])[-2]
                             if (e > 0).sum() >= 2 else 0.0 for d, e in zip(d0, err)])
    b_jets = labels == index_of("X_bb")
    light = np.isin(labels, [index_of("X_qq"), index_of("X_ss"), index_of("X_gg")])
    assert b_jets.sum() >= 5 and light.sum() >= 5
    assert np.median(significance[b_jets]) > 2 * np.median(significance[light])


def test_own_soft_drop_agrees_with_fastjet(qcd, x150):
    columns = ["part_px", "part_py", "part_pz", "part_energy", "jet_sdmass"]
    table = pa.concat_tables([qcd.select(columns), x150.select(columns)])
    counts = np.array([len(v) for v in table["part_px"].to_pylist()])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    columns = [np.concatenate(_lists(table, f)).astype(np.float64)
               for f in ("part_px", "part_py", "part_pz", "part_energy")]
    ours = softdrop_masses(offsets, *columns)
    theirs = softdrop_masses_fastjet(offsets, *columns)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # the stored masses came from float64 constituents; the file holds float32 ones
    stored = table["jet_sdmass"].to_numpy()
    assert np.median(np.abs(ours - stored) / np.maximum(stored, 1.0)) < 1e-4
    for i in range(3):  # and the plain-Python walk on a few jets
        rows = slice(offsets[i], offsets[i + 1])
        assert softdrop_mass_reference(*(c[rows] for c in columns)) == pytest.approx(ours[i],
                                                                                     rel=1e-9)


# --- labels ----------------------------------------------------------------------------------


def test_every_resonant_class_is_reachable_from_the_decay_tables():
    mode = {5: ["b"], 4: ["c"], 3: ["s"], 2: ["q"], 1: ["q"], 21: ["g"], 11: ["e"], 13: ["mu"],
            12: ["neutrinos"], 14: ["neutrinos"], 16: ["neutrinos"],
            15: ["tau_e", "tau_mu", "tau_h"]}

    def key(tokens, topology):
        counts = [tokens.count(name) for name in TOKENS]
        return class_key(counts, topology)

    keys = []
    for table in (cards.X_NEUTRAL, cards.X_CHARGED):
        for _, _, products in table:
            keys += [key(list(t), 0) for t in itertools.product(*(mode[abs(p)] for p in products))]
    for table in (cards.Y_NEUTRAL, cards.Y_CHARGED):
        for (_, _, a), (_, _, b) in itertools.product(table, repeat=2):
            for tokens in itertools.product(*(mode[abs(p)] for p in a + b)):
                for k in (3, 4):
                    keys += [key(list(sub), 1) for sub in itertools.combinations(tokens, k)]
    reached = set(label_index_from_counts(np.array(keys)).tolist()) - {-1}
    resonant = {c.index for c in CONTENTS if c.resonant}
    assert reached == resonant  # all 15 two-prong and 146 three/four-prong classes
    for b, c, s in itertools.product(range(4), repeat=3):  # QCD names exist
        assert LABELS[index_of(qcd_label_name(b, c, s))].startswith("QCD_")


# --- schema, files, parallel runs ---------------------------------------------------------------


def _field_signature(schema: pa.Schema) -> list[tuple[str, str, bool]]:
    return [(f.name, str(f.type), f.nullable) for f in schema]


def test_schema_equals_the_reference_file(tmp_path, qcd, w_jets, reference_dir):
    reference = pq.read_schema(reference_dir / "JetClassII_example.parquet")
    written = pq.read_schema(write_table_atomic(qcd, tmp_path / "qcd.parquet"))
    assert _field_signature(written) == _field_signature(reference)
    assert _field_signature(JETCLASS_SCHEMA) == _field_signature(reference)
    sm = pq.read_schema(write_table_atomic(w_jets, tmp_path / "sm.parquet"))
    assert _field_signature(sm)[:len(reference)] == _field_signature(reference)
    assert [n for n, _, _ in _field_signature(sm)[len(reference):]] == \
        ["event_id", "jet_rank", "process", "weight"]
    assert SM_SCHEMA.equals(w_jets.schema)


def test_same_seed_same_output_whatever_the_workers(tmp_path):
    kwargs = dict(seed=5, parts={"res2p": 1.0, "qcd": 1.0}, mpi=False, chunk_events=60,
                  progress=False)
    one = generate_training(tmp_path / "one", 180, workers=1, **kwargs)
    two = generate_training(tmp_path / "two", 180, workers=2, **kwargs)
    assert [p.name for p in one.files] == [p.name for p in two.files]
    for a, b in zip(one.files, two.files):
        assert pq.read_table(a).equals(pq.read_table(b))
    meta = read_generation_metadata(one.files[0])
    assert meta["seed"] == 5 and len(meta["chunks"]) == 4
    other = generate_training(tmp_path / "other", 180, workers=1, **{**kwargs, "seed": 6})
    assert not pq.read_table(other.files[0]).equals(pq.read_table(one.files[0]))
    assert not list(tmp_path.glob("*/.*.tmp"))  # no temporary left behind


def test_a_failing_worker_is_reported_with_its_chunk(tmp_path):
    with pytest.raises(GenerationError, match=r"chunk \d+ \(training res2p.*Nonsense"):
        generate_training(tmp_path / "out", 40, seed=1, workers=2, parts={"res2p": 1.0},
                          chunk_events=20, mpi=False, progress=False,
                          extra_settings=("Nonsense:setting = 3",))
    assert not any((tmp_path / "out").glob("*"))  # nothing half-written


def test_sm_sample_weights_and_columns(tmp_path):
    report = generate_sm(tmp_path, 120, seed=3, workers=1, processes={"ttbar": 1, "Higgs": 1},
                         luminosity_fb=100.0, mpi=False, chunk_events=60, progress=False,
                         bias_power=0.0, process_pt_hat_min={"Higgs": 260.0})
    table = pq.read_table(report.files[0])
    meta = json.loads(table.schema.metadata[b"sophon.generate"])
    assert meta["pt_hat_min_gev"] == 200.0  # the sample's cut, and each process's own:
    assert {name: meta["processes"][name]["pt_hat_min_gev"] for name in ("ttbar", "Higgs")} == {
        "ttbar": 200.0, "Higgs": 260.0}
    assert float(table.schema.metadata[b"luminosity_fb"]) == 100.0
    assert json.loads(table.schema.metadata[b"sophon"])["luminosity_fb"] == 100.0
    assert set(table["process"].to_pylist()) <= {"ttbar", "Higgs"}
    assert set(table["jet_rank"].to_numpy().tolist()) <= {0, 1}
    assert np.all(table["jet_label"].to_numpy() == -1)
    pairs = list(zip(table["event_id"].to_pylist(), table["jet_rank"].to_pylist()))
    assert len(set(pairs)) == len(pairs)
    for name in ("ttbar", "Higgs"):
        entry = meta["processes"][name]
        assert entry["n_events"] == 60
        expected = entry["sigma_pb"] * 1e3 * 100.0 / 60  # pb -> fb, x L, / N
        weights = table.filter(pa.compute.equal(table["process"], name))["weight"].to_numpy()
        np.testing.assert_allclose(weights, expected, rtol=1e-9)
    ht = table["jet_pt"].to_numpy()
    assert np.all((ht > 200) & (ht < 2500))
    assert np.all(np.abs(table["jet_eta"].to_numpy()) < 2.5)


def test_a_process_can_have_its_own_pt_hat_cut_and_bias_reference():
    specs = plan_sm(4000, seed=1, processes={"QCD": 3, "W+jets": 1}, pt_hat_min=200.0,
                    process_pt_hat_min={"QCD": 250.0}, bias_power=1.5)
    cuts = {spec.sample: {s for s in spec.settings if "pTHatMin" in s or "SelectionRef" in s}
            for spec in specs}
    assert cuts == {"QCD": {"PhaseSpace:pTHatMin = 250.0", "PhaseSpace:bias2SelectionRef = 250.0"},
                    "W+jets": {"PhaseSpace:pTHatMin = 200.0",
                               "PhaseSpace:bias2SelectionRef = 200.0"}}
    with pytest.raises(ValueError,
                       match=r"pTHat cut for process\(es\) \['ttbar'\] not in the sample"):
        plan_sm(100, seed=1, processes={"QCD": 1}, process_pt_hat_min={"ttbar": 250.0})
    with pytest.raises(ValueError, match="pTHat cuts must be positive"):
        plan_sm(100, seed=1, processes={"QCD": 1}, process_pt_hat_min={"QCD": 0.0})


def test_an_interrupted_sm_run_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    from sophon.generate import driver

    kwargs = dict(seed=4, workers=1, processes={"ttbar": 1, "Higgs": 1}, luminosity_fb=50.0,
                  mpi=False, chunk_events=40, progress=False)
    whole = generate_sm(tmp_path / "whole", 160, **kwargs)  # 4 chunks: ttbar 0, 1; Higgs 2, 3
    real_run, ran, armed = driver.run_chunk, [], [True]

    def run_or_fail(spec):
        ran.append(spec.index)
        if spec.index == 2 and armed[0]:
            raise RuntimeError("power cut")
        return real_run(spec)

    monkeypatch.setattr(driver, "run_chunk", run_or_fail)
    with pytest.raises(GenerationError, match="power cut"):
        generate_sm(tmp_path / "resumed", 160, **kwargs)
    assert not (tmp_path / "resumed" / "SM.parquet").exists()
    # the finished chunks belong to this run only: another seed is refused, nothing is mixed
    with pytest.raises(GenerationError, match="chunks of another run"):
        generate_sm(tmp_path / "resumed", 160, **{**kwargs, "seed": 5})
    armed[0] = False
    ran.clear()
    resumed = generate_sm(tmp_path / "resumed", 160, **kwargs)
    assert ran == [2, 3]  # only the chunks that had not finished
    assert pq.read_table(resumed.files[0]).equals(pq.read_table(whole.files[0]))
    assert resumed.n_events == 160
    assert not (tmp_path / "resumed" / driver.CHUNK_FOLDER).exists()


def test_command_line(tmp_path, capsys):
    from sophon.cli import main

    code = main(["generate", "training", "--events", "30", "--seed", "2", "--workers", "1",
                 "--no-mpi", "--parts", "res2p", "--x-mass", "90", "--quiet", "-o",
                 str(tmp_path)])
    assert code == 0
    table = pq.read_table(tmp_path / "Res2P.parquet")
    assert table.num_rows > 0 and np.all(table["jet_label"].to_numpy() < 15)
    assert main(["generate", "sm", "--events", "10", "--processes", "nope", "-o",
                 str(tmp_path)]) == 2
    for cuts, message in (("QCD=abc", "pTHat cut of 'QCD' must be a number of GeV, not 'abc'"),
                          ("QCD", "pTHat cut of 'QCD' must be a positive number of GeV"),
                          ("gluino=300", "unknown process 'gluino'")):
        capsys.readouterr()
        assert main(["generate", "sm", "--events", "10", "--process-pt-hat-min", cuts, "-o",
                     str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


# --- a two-body decay a user names (X->bs: no JetClass-II class) -------------------------------


@pytest.fixture(scope="module")
def x_bs() -> pa.Table:
    return _run(plan_training(300, seed=21, chunk_events=300, mpi=False, x_mass=120.0,
                              decay=cards.TwoBodyDecay.parse("bs")))


def test_a_named_decay_is_parsed_to_its_resonance_and_channels():
    bs = cards.TwoBodyDecay("b", "s")
    for text in ("bs", "sb", "b s", "B,S", "X->bs", " x->s b~ "):
        assert cards.TwoBodyDecay.parse(text) == bs
    assert bs.name == "X->bs" and not bs.charged and bs.resonance_id == cards.X_NEUTRAL_ID
    assert bs.channels == ((1.0, 102, (5, -3)), (1.0, 102, (3, -5)))  # b s~ and s b~
    bc = cards.TwoBodyDecay.parse("cb")  # up-type with down-type: the charged X, c b~
    assert bc.charged and bc.resonance_id == cards.X_CHARGED_ID
    assert bc.channels == ((1.0, 102, (4, -5)),)
    assert cards.TwoBodyDecay.parse("bb").channels == ((1.0, 102, (5, -5)),)
    for bad in ("bt", "b", "bsd", "", "xy"):
        with pytest.raises(ValueError, match="two-body quark decay"):
            cards.TwoBodyDecay.parse(bad)
    settings = cards.decay_settings(bs, cards.resonance_masses(np.random.default_rng(0), 120.0))
    assert "25:oneChannel = 1 0.500000 102 5 -3" in settings
    assert "25:addChannel = 1 0.500000 102 3 -5" in settings
    with pytest.raises(ValueError, match="no training parts"):
        plan_training(10, seed=0, parts={"qcd": 1.0}, decay=bs)


def test_x_bs_jets_hold_one_b_and_one_s_and_peak_at_the_x_mass(x_bs):
    """Every kept jet's aux record lists exactly the X's two products, a b and an s quark,
    both within dR < 0.8 of the jet axis; no class covers them (label -1)."""
    assert x_bs.num_rows >= 100
    assert np.all(x_bs["jet_label"].to_numpy() == -1)
    pid, products = _lists(x_bs, "aux_genpart_pid"), _lists(x_bs, "aux_genpart_isResDecayProd")
    flavours = [tuple(sorted(np.abs(p[d]))) for p, d in zip(pid, products)]
    assert set(flavours) == {(3, 5)}
    assert np.all(_fully_contained(x_bs, 25))
    peak = _peak(x_bs["jet_sdmass"].to_numpy(), 50, 200)
    assert 105 <= peak <= 130, peak


def test_the_command_line_writes_the_decay_file(tmp_path):
    from sophon.cli import main

    assert main(["generate", "training", "--events", "40", "--seed", "3", "--workers", "1",
                 "--no-mpi", "--decay", "bs", "--x-mass", "100", "--quiet", "-o",
                 str(tmp_path)]) == 0
    table = pq.read_table(tmp_path / "X_bs.parquet")
    assert table.num_rows > 0 and np.all(table["jet_label"].to_numpy() == -1)
    metadata = read_generation_metadata(tmp_path / "X_bs.parquet")
    assert metadata["parts"] == {"X->bs": 1.0} and "X->bs" in metadata["labels"]
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["X_bs.parquet"]
    assert main(["generate", "training", "--events", "5", "--decay", "bt", "-o",
                 str(tmp_path)]) == 2
