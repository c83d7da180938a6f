"""Delphes ROOT input (sophon.delphes): the published example file, converted and scored, against
an independent, deliberately plain reading of the same file (a Python loop per jet, a dict from
fUniqueID to row, math on Python floats)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest

uproot = pytest.importorskip("uproot")

from sophon.cli import main as sophon_main  # noqa: E402
from sophon.delphes import (DELPHES_SCHEMA, ConversionReport, DelphesError,  # noqa: E402
                            DelphesFile, convert_delphes, jet_radius)

MODEL = str(Path(__file__).resolve().parents[1] / "data" / "models" / "sophon-small-v2.pt")


@pytest.fixture(scope="module")
def delphes_path(reference_dir):
    path = reference_dir / "events_delphes_example.root"
    if not path.is_file():
        pytest.skip("the Delphes example file is not in the reference folder")
    return path


@pytest.fixture(scope="module")
def converted(delphes_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("delphes") / "jets.parquet"
    report = convert_delphes(delphes_path, output, step_events=3, progress=False)
    return report, pq.read_table(output)


def _phi_wrapped(dphi: float) -> float:
    while dphi >= math.pi:
        dphi -= 2 * math.pi
    while dphi < -math.pi:
        dphi += 2 * math.pi
    return dphi


def _plain_reading(path, jet_branch: str) -> list[dict]:
    """Every jet of ``jet_branch`` with its constituents, one event and one jet at a time."""
    tree = uproot.open(path)["Delphes"]
    j, pf, gen = f"{jet_branch}/{jet_branch}.", "ParticleFlowCandidate/ParticleFlowCandidate.", \
        "Particle/Particle."
    arrays = tree.arrays([j + "PT", j + "Eta", j + "Phi", j + "Mass", j + "Constituents",
                          j + "SoftDroppedP4[5]", j + "Tau[5]", "Vertex/Vertex.Z"]
                         + [pf + n for n in ("fUniqueID", "PT", "Eta", "Phi", "Mass", "Charge",
                                             "PID", "D0", "ErrorD0", "DZ", "ErrorDZ")]
                         + [gen + n for n in ("fUniqueID", "PT", "Eta", "Phi", "Mass", "Charge",
                                              "PID")], library="ak", how=dict)
    jets = []
    for event in range(tree.num_entries):
        pf_row = {int(u): i for i, u in enumerate(arrays[pf + "fUniqueID"][event])}
        gen_row = {int(u): i for i, u in enumerate(arrays[gen + "fUniqueID"][event])}
        vertices = arrays["Vertex/Vertex.Z"][event]
        for index in range(len(arrays[j + "PT"][event])):
            jet_pt = float(arrays[j + "PT"][event][index])
            jet_eta = float(arrays[j + "Eta"][event][index])
            jet_phi = float(arrays[j + "Phi"][event][index])
            jet_mass = float(arrays[j + "Mass"][event][index])
            sd = arrays[j + "SoftDroppedP4[5]"][event][index][0]
            sd_m2 = sd.fE ** 2 - sd.fP.fX ** 2 - sd.fP.fY ** 2 - sd.fP.fZ ** 2
            particles = []
            for ref in arrays[j + "Constituents"][event][index].refs:
                ref = int(ref)
                if ref in pf_row:
                    source, row = pf, pf_row[ref]
                elif ref in gen_row:
                    source, row = gen, gen_row[ref]
                else:
                    continue
                value = {n: float(arrays[source + n][event][row])
                         for n in ("PT", "Eta", "Phi", "Mass", "Charge", "PID")}
                for n in ("D0", "ErrorD0", "DZ", "ErrorDZ"):
                    value[n] = float(arrays[source + n][event][row]) if source == pf else 0.0
                pt, eta, phi, mass = value["PT"], value["Eta"], value["Phi"], value["Mass"]
                pz = pt * math.sinh(eta)
                if abs(pz) > 10000 or abs(eta) > 5 or pt <= 0:
                    continue
                px, py = pt * math.cos(phi), pt * math.sin(phi)
                pid, charge = int(value["PID"]), int(value["Charge"])
                dz = value["DZ"]
                if len(vertices) and dz != 0:
                    dz = float(np.float32(dz) - np.float32(vertices[0]))
                particles.append({
                    "pt": pt, "px": px, "py": py, "pz": pz,
                    "energy": math.sqrt(px * px + py * py + pz * pz + mass * mass),
                    "deta": (1 if jet_eta > 0 else -1) * (eta - jet_eta),
                    "dphi": _phi_wrapped(phi - jet_phi),
                    "charge": charge, "d0val": value["D0"], "d0err": value["ErrorD0"],
                    "dzval": dz, "dzerr": value["ErrorDZ"],
                    "isElectron": abs(pid) == 11, "isMuon": abs(pid) == 13, "isPhoton": pid == 22,
                    "isChargedHadron": charge != 0 and abs(pid) not in (11, 13),
                    "isNeutralHadron": charge == 0 and pid != 22,
                })
            particles.sort(key=lambda p: -p["pt"])
            pz_jet = jet_pt * math.sinh(jet_eta)
            jets.append({
                "event": event, "rank": index, "pt": jet_pt, "eta": jet_eta, "phi": jet_phi,
                "energy": math.sqrt(jet_pt ** 2 + pz_jet ** 2 + jet_mass ** 2),
                "sdmass": math.copysign(math.sqrt(abs(sd_m2)), sd_m2),
                "tau": [float(t) for t in arrays[j + "Tau[5]"][event][index][:4]],
                "particles": particles,
            })
    return jets


@pytest.fixture(scope="module")
def plain_jets(delphes_path):
    return _plain_reading(delphes_path, "JetPUPPIAK8")


def _compare(table, jets):
    assert table.num_rows == len(jets)
    rows = table.to_pylist()
    for row, jet in zip(rows, jets):
        assert (row["event_id"], row["jet_rank"]) == (jet["event"], jet["rank"])
        for column, expected in (("jet_pt", jet["pt"]), ("jet_eta", jet["eta"]),
                                 ("jet_phi", jet["phi"]), ("jet_energy", jet["energy"]),
                                 ("jet_sdmass", jet["sdmass"])):
            assert row[column] == pytest.approx(expected, rel=1e-6, abs=1e-5), column
        assert [row[f"jet_tau{k}"] for k in range(1, 5)] == pytest.approx(jet["tau"], rel=1e-6)
        particles = jet["particles"]
        assert row["jet_nparticles"] == len(particles) == len(row["part_px"])
        for name in ("px", "py", "pz", "energy", "deta", "dphi", "d0val", "d0err", "dzval",
                     "dzerr"):
            assert row[f"part_{name}"] == pytest.approx([p[name] for p in particles],
                                                        rel=2e-6, abs=2e-6), name
        for name in ("charge", "isElectron", "isMuon", "isPhoton", "isChargedHadron",
                     "isNeutralHadron"):
            assert row[f"part_{name}"] == [p[name] for p in particles], name
        assert row["jet_label"] == -1


def test_example_file_matches_a_plain_reading(converted, plain_jets):
    report, table = converted
    assert table.schema.equals(DELPHES_SCHEMA)
    assert len(plain_jets) == 22 and report.events == 10 and report.jets == 22
    _compare(table, plain_jets)
    # the file's PUPPI jets hold zero-pT pileup candidates, which the selection drops, and every
    # kept constituent is pT-ordered
    assert report.failed_selection > 0
    assert report.constituents == sum(len(j["particles"]) for j in plain_jets)
    assert all(np.all(np.diff(np.hypot(px, py)) <= 1e-4 * np.hypot(px, py)[:-1])
               for px, py in zip(table["part_px"].to_pylist(), table["part_py"].to_pylist()))


def test_generator_jets_take_their_constituents_from_particle(delphes_path, tmp_path):
    """GenJetAK8's constituents are GenParticles: found in Particle, with zero impact parameters."""
    output = tmp_path / "genjets.parquet"
    report = convert_delphes(delphes_path, output, jet_branch="GenJetAK8", progress=False)
    table = pq.read_table(output)
    assert report.unresolved_references == 0 and report.constituents > 0
    _compare(table, _plain_reading(delphes_path, "GenJetAK8"))
    assert not any(any(v) for v in table["part_d0val"].to_pylist())


def test_chunking_does_not_change_the_result(delphes_path, converted):
    whole = DelphesFile(delphes_path, step_events=1000).read_table()
    # the generator-jet columns are NaN (a Delphes file has no JetClass-II truth): NaN != NaN
    genjet = [f"genjet_{n}" for n in ("pt", "eta", "phi", "energy", "sdmass")]
    assert all(np.isnan(whole[name].to_numpy()).all() for name in genjet)
    assert whole.drop_columns(genjet).equals(converted[1].drop_columns(genjet))
    batches = list(DelphesFile(delphes_path, step_events=4).iter_batches(batch_size=5,
                                                                         columns=["jet_pt"]))
    assert max(b.num_rows for b in batches) <= 5
    assert np.concatenate([b.column(0).to_numpy() for b in batches]).tolist() == \
        whole["jet_pt"].to_pylist()


def test_a_range_without_jets_gives_an_empty_table(delphes_path):
    source = DelphesFile(delphes_path)
    names = [f"JetPUPPIAK8/JetPUPPIAK8.{leaf}" for leaf in ("PT", "Eta", "Phi", "Mass", "Tau[5]",
                                                             "SoftDroppedP4[5]", "Constituents")]
    names += [f"ParticleFlowCandidate/ParticleFlowCandidate.{leaf}" for leaf in (
        "fUniqueID", "PT", "Eta", "Phi", "Mass", "Charge", "PID", "D0", "ErrorD0", "DZ", "ErrorDZ")]
    table = source._chunk_table(source._read(names + ["Vertex/Vertex.Z"], 3, 3), 3, 3,
                                ConversionReport())
    assert table.num_rows == 0 and table.schema.equals(DELPHES_SCHEMA)


def test_delphes_schema_extends_the_jetclass_schema():
    # the JetClass-II schema itself is checked against the reference file in test_generate.py
    from sophon.jetclass import JETCLASS_SCHEMA

    assert DELPHES_SCHEMA.names[:len(JETCLASS_SCHEMA)] == JETCLASS_SCHEMA.names
    assert all(DELPHES_SCHEMA.field(f.name).equals(f) for f in JETCLASS_SCHEMA)


def test_jet_radius_follows_the_branch_name():
    assert jet_radius("JetPUPPIAK15") == 1.5
    assert jet_radius("JetPUPPIAK8") == 0.8 and jet_radius("GenJetAK8") == 0.8


def test_score_reads_root_directly_and_equals_scoring_the_conversion(delphes_path, converted,
                                                                     tmp_path, capsys):
    parquet = tmp_path / "events_delphes_example.parquet"
    pq.write_table(converted[1], parquet)
    for source, folder in ((delphes_path, "from_root"), (parquet, "from_parquet")):
        assert sophon_main(["score", str(source), "--model", MODEL, "-o", str(tmp_path / folder),
                            "--device", "cpu", "-q"]) == 0
    from_root = pq.read_table(tmp_path / "from_root" / "part-events_delphes_example.parquet")
    from_parquet = pq.read_table(tmp_path / "from_parquet" / "part-events_delphes_example.parquet")
    assert from_root.num_rows == 22
    scores = [c for c in from_root.column_names if c.startswith("score_")]
    assert len(scores) == 188
    root_scores = np.stack([from_root[c].to_numpy() for c in scores], axis=1)
    assert np.allclose(root_scores.sum(axis=1), 1, atol=2e-3)
    assert np.array_equal(root_scores,
                          np.stack([from_parquet[c].to_numpy() for c in scores], axis=1))
    assert from_root["event_id"].to_pylist() == converted[1]["event_id"].to_pylist()


def test_convert_command_line(delphes_path, tmp_path, capsys):
    output = tmp_path / "cli.parquet"
    assert sophon_main(["convert", "delphes", str(delphes_path), "-o", str(output), "--process",
                        "ttbar", "--event-id-offset", "100"]) == 0
    table = pq.read_table(output)
    assert set(table["process"].to_pylist()) == {"ttbar"}
    assert table["event_id"].to_pylist()[0] == 100
    assert "22 jets of JetPUPPIAK8" in capsys.readouterr().err


def test_missing_branch_names_file_and_branch(delphes_path, tmp_path, capsys):
    with pytest.raises(DelphesError, match=r"events_delphes_example\.root.*'JetNope'.*"
                                           r"JetPUPPIAK8"):
        DelphesFile(delphes_path, jet_branch="JetNope")
    # a ROOT file with a Delphes tree that lacks the jets and candidates
    foreign = tmp_path / "foreign.root"
    with uproot.recreate(foreign) as file:
        file.mktree("Delphes", {"x": np.int32}).extend({"x": np.arange(3, dtype=np.int32)})
    with pytest.raises(DelphesError, match=r"foreign\.root.*no branch 'JetPUPPIAK8'"):
        DelphesFile(foreign)
    with uproot.recreate(foreign) as file:
        file.mktree("Events", {"x": np.int32}).extend({"x": np.arange(3, dtype=np.int32)})
    with pytest.raises(DelphesError, match=r"foreign\.root.*no readable tree 'Delphes'.*"
                                           r"Events \(TTree\)"):
        DelphesFile(foreign)
    # the command line shows it without a traceback and exits 2
    assert sophon_main(["convert", "delphes", str(delphes_path), "-o", str(tmp_path / "o.parquet"),
                        "--jet-branch", "JetNope"]) == 2
    assert "'JetNope'" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_damaged_files_are_named(delphes_path, tmp_path):
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(delphes_path.read_bytes()[:200_000])
    with pytest.raises(DelphesError, match=r"truncated\.root"):
        DelphesFile(truncated).read_table()
    not_root = tmp_path / "text.root"
    not_root.write_text("this is not a ROOT file\n")
    with pytest.raises(DelphesError, match=r"text\.root: not a readable ROOT file"):
        DelphesFile(not_root)
    # damaged baskets: the header and directory intact, the data in the middle overwritten
    damaged = tmp_path / "damaged.root"
    shutil.copyfile(delphes_path, damaged)
    data = bytearray(damaged.read_bytes())
    data[100_000:900_000] = bytes(800_000)
    damaged.write_bytes(bytes(data))
    with pytest.raises(DelphesError, match=r"damaged\.root: cannot read branch '[^']+' in "
                                           r"entries 0 to 9"):
        output = tmp_path / "out.parquet"
        try:
            convert_delphes(damaged, output, step_events=100, progress=False)
        finally:
            assert not output.exists()


def _constituents_fail_in(events: set[int] | None, monkeypatch) -> None:
    """Every candidate and generator particle of ``events`` (tree entries; None: all) reads
    with pT = 0, so every constituent of their jets fails the selection."""
    read = DelphesFile._read

    def read_with_zero_pt(self, names, start, stop):
        arrays = read(self, names, start, stop)
        for branch in ("ParticleFlowCandidate", "Particle"):
            key = f"{branch}/{branch}.PT"
            if key in arrays:
                counts = ak.num(arrays[key], axis=1)
                pt = np.array(ak.to_numpy(ak.flatten(arrays[key], axis=1)))
                offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(counts))])
                for entry in range(start, stop):
                    if events is None or entry in events:
                        pt[offsets[entry - start]:offsets[entry - start + 1]] = 0.0
                arrays[key] = ak.unflatten(pt, counts)
        return arrays

    monkeypatch.setattr(DelphesFile, "_read", read_with_zero_pt)


def test_jets_without_a_constituent_are_dropped_by_convert_and_score(delphes_path, plain_jets,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
    """A jet whose constituents all fail the selection is neither converted nor scored, both
    say how many, and the rest are what a plain reading gives (ranks kept)."""
    _constituents_fail_in({0}, monkeypatch)
    kept = [jet for jet in plain_jets if jet["event"] != 0]
    dropped = len(plain_jets) - len(kept)
    assert 0 < dropped < len(plain_jets)

    output = tmp_path / "jets.parquet"
    assert sophon_main(["convert", "delphes", str(delphes_path), "-o", str(output),
                        "--step-events", "3"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {len(kept)} jets" in err and f"note: {dropped} jet(s) of JetPUPPIAK8" in err
    table = pq.read_table(output)
    _compare(table, kept)
    assert min(table["jet_nparticles"].to_pylist()) > 0
    report = convert_delphes(delphes_path, tmp_path / "again.parquet", progress=False)
    assert (report.jets, report.jets_without_constituents, report.jets_written) == \
        (len(plain_jets), dropped, len(kept))

    scored = tmp_path / "scored"
    command = ["score", str(delphes_path), "--model", MODEL, "-o", str(scored), "--device", "cpu"]
    assert sophon_main(command) == 0
    err = capsys.readouterr().err
    assert f"{dropped} of {len(plain_jets)} jets not scored" in err
    part = scored / "part-events_delphes_example.parquet"
    part_table = pq.read_table(part)
    assert part_table.num_rows == len(kept)
    assert list(zip(part_table["event_id"].to_pylist(), part_table["jet_rank"].to_pylist())) == \
        [(jet["event"], jet["rank"]) for jet in kept]
    from sophon.store import read_metadata

    extra = read_metadata(part_table.schema).extra
    assert extra["jets_without_constituents"] == dropped
    assert extra["source_rows"] == len(plain_jets)
    # a rerun finds the part complete
    assert sophon_main(command) == 0
    assert "already scored" in capsys.readouterr().err


def test_a_file_whose_jets_all_lose_their_constituents_is_named(delphes_path, tmp_path,
                                                               monkeypatch, capsys):
    _constituents_fail_in(None, monkeypatch)
    assert sophon_main(["score", str(delphes_path), "--model", MODEL, "-o",
                        str(tmp_path / "scored"), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "events_delphes_example.root: none of its 22 jets keeps a constituent" in err
    assert not list((tmp_path / "scored").glob("*.parquet"))
