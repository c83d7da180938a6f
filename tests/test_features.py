"""sophon.features against hand computation on real JetClass-II jets (the published contract)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from sophon.features import (MAX_PARTICLES, PARTICLE_COLUMNS, MissingColumnError, build_inputs,
                             ragged_inputs)



@pytest.fixture(scope="module")
def table(reference_table) -> pa.Table:
    return reference_table


@pytest.fixture(scope="module")
def inputs(table):
    return build_inputs(table)


def clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def hand_features(row: dict, k: int) -> tuple[list[float], list[float]]:
    """The contract, particle by particle in float64 with the math module."""
    jet_pt, jet_energy = row["jet_pt"], row["jet_energy"]
    px, py, pz, e = (row[f"part_{c}"][k] for c in ("px", "py", "pz", "energy"))
    s = 500.0 / jet_pt
    pt = math.hypot(px, py)
    features = [
        clip((math.log(math.hypot(px * s, py * s)) - 1.7) * 0.7, -5, 5),
        clip((math.log(e * s) - 2.0) * 0.7, -5, 5),
        clip((math.log(pt / jet_pt) + 4.7) * 0.7, -5, 5),
        clip((math.log(e / jet_energy) + 4.7) * 0.7, -5, 5),
        clip((math.hypot(row["part_deta"][k], row["part_dphi"][k]) - 0.2) * 4.0, -5, 5),
        float(row["part_charge"][k]),
        float(row["part_isChargedHadron"][k]),
        float(row["part_isNeutralHadron"][k]),
        float(row["part_isPhoton"][k]),
        float(row["part_isElectron"][k]),
        float(row["part_isMuon"][k]),
        math.tanh(row["part_d0val"][k]),
        clip(row["part_d0err"][k], 0, 1),
        math.tanh(row["part_dzval"][k]),
        clip(row["part_dzerr"][k], 0, 1),
        row["part_deta"][k],
        row["part_dphi"][k],
    ]
    return features, [px * s, py * s, pz * s, e * s]


def test_shapes_dtypes_and_mask(table, inputs):
    n = table.num_rows
    assert inputs.pf_features.shape == (n, 17, MAX_PARTICLES)
    assert inputs.pf_vectors.shape == (n, 4, MAX_PARTICLES)
    assert inputs.pf_mask.shape == (n, 1, MAX_PARTICLES)
    for array in (inputs.pf_features, inputs.pf_vectors, inputs.pf_mask):
        assert array.dtype == np.float32
    lengths = pa.compute.list_value_length(table["part_px"]).to_numpy()
    np.testing.assert_array_equal(inputs.multiplicity, lengths)
    np.testing.assert_array_equal(inputs.multiplicity, table["jet_nparticles"].to_numpy())
    np.testing.assert_array_equal(inputs.pf_mask[:, 0].sum(axis=1), lengths)
    # Mask is 1 exactly on the first n slots; every channel is exactly zero beyond them.
    slots = np.arange(MAX_PARTICLES)
    real = slots[None, :] < lengths[:, None]
    np.testing.assert_array_equal(inputs.pf_mask[:, 0] == 1, real)
    assert not inputs.pf_features.transpose(0, 2, 1)[~real].any()
    assert not inputs.pf_vectors.transpose(0, 2, 1)[~real].any()
    assert np.isfinite(inputs.pf_features).all() and np.isfinite(inputs.pf_vectors).all()


@pytest.mark.parametrize("jet", [0, 5, 8, "longest"])
def test_every_channel_matches_hand_computation(table, inputs, jet):
    lengths = inputs.multiplicity
    jet = int(np.argmax(lengths)) if jet == "longest" else jet
    row = {name: table[name][jet].as_py() for name in table.schema.names if
           name.startswith("part_") or name in ("jet_pt", "jet_energy")}
    for k in range(int(lengths[jet])):
        features, vectors = hand_features(row, k)
        np.testing.assert_allclose(inputs.pf_features[jet, :, k], features, rtol=2e-5, atol=2e-5,
                                   err_msg=f"jet {jet} particle {k}")
        np.testing.assert_allclose(inputs.pf_vectors[jet, :, k], vectors, rtol=1e-5, atol=1e-4,
                                   err_msg=f"jet {jet} particle {k}")


def test_scaled_jet_pt_is_500_gev(table, inputs):
    # The four-vectors of a jet's constituents add up to (roughly) the jet: scaled pT ~ 500 GeV.
    # JetClass-II jets keep all their constituents, so the sum is the jet up to float rounding.
    px = inputs.pf_vectors[:, 0].sum(axis=1, dtype=np.float64)
    py = inputs.pf_vectors[:, 1].sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(np.hypot(px, py), 500.0, rtol=2e-3)


def test_awkward_pyarrow_and_mapping_sources_agree(table, inputs):
    import awkward as ak

    from_awkward = build_inputs(ak.from_arrow(table))
    from_mapping = build_inputs({name: table[name] for name in table.schema.names})
    for other in (from_awkward, from_mapping):
        for name in ("pf_features", "pf_vectors", "pf_mask", "multiplicity"):
            np.testing.assert_array_equal(getattr(other, name), getattr(inputs, name))


def test_sliced_table_gives_the_slice(table, inputs):
    sliced = build_inputs(table.slice(10, 20))
    np.testing.assert_array_equal(sliced.pf_features, inputs.pf_features[10:30])
    np.testing.assert_array_equal(sliced.multiplicity, inputs.multiplicity[10:30])


def test_ragged_padding_of_a_subset_and_shorter_length(table, inputs):
    ragged = ragged_inputs(table)
    jets = np.array([7, 3, 3, 42])
    length = int(inputs.multiplicity[jets].max())
    part = ragged.padded(jets, length)
    np.testing.assert_array_equal(part.pf_features, inputs.pf_features[jets, :, :length])
    np.testing.assert_array_equal(part.pf_vectors, inputs.pf_vectors[jets, :, :length])
    np.testing.assert_array_equal(part.pf_mask, inputs.pf_mask[jets, :, :length])
    with pytest.raises(ValueError, match="shorter"):
        ragged.padded(jets, length - 1)


def _synthetic_table(lengths: list[int], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {}
    for name in PARTICLE_COLUMNS:
        chunks = []
        for n in lengths:
            if name == "part_charge":
                chunks.append(pa.array(rng.integers(-1, 2, n), pa.int32()))
            elif name.startswith("part_is"):
                chunks.append(pa.array(rng.random(n) < 0.3))
            elif name == "part_energy":
                chunks.append(pa.array(rng.uniform(1, 100, n), pa.float32()))
            else:
                chunks.append(pa.array(rng.normal(0, 1, n), pa.float32()))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
        columns[name] = pa.ListArray.from_arrays(offsets, pa.concat_arrays(chunks))
    columns["jet_pt"] = pa.array(rng.uniform(200, 1000, len(lengths)), pa.float32())
    columns["jet_energy"] = pa.array(rng.uniform(300, 2000, len(lengths)), pa.float32())
    return pa.table(columns)


def test_truncates_at_128_keeping_the_leading_particles():
    table = _synthetic_table([150, 3, 128])
    inputs = build_inputs(table)
    np.testing.assert_array_equal(inputs.multiplicity, [128, 3, 128])
    assert inputs.pf_mask[0].sum() == 128
    # Slot 127 of jet 0 is particle 127 of the file; particles 128..149 are gone.
    px = table["part_px"][0].as_py()
    scale = 500.0 / table["jet_pt"][0].as_py()
    np.testing.assert_allclose(inputs.pf_vectors[0, 0], np.array(px[:128]) * scale, rtol=1e-5)
    # The next jet starts with its own first particle (offsets stay aligned after truncation).
    px1 = table["part_px"][1].as_py()
    scale1 = 500.0 / table["jet_pt"][1].as_py()
    np.testing.assert_allclose(inputs.pf_vectors[1, 0, :3], np.array(px1) * scale1, rtol=1e-5)


def test_clipping_of_extreme_values():
    table = _synthetic_table([2])
    columns = {name: table[name] for name in table.schema.names}
    columns["part_d0err"] = pa.array([[7.0, -3.0]], pa.list_(pa.float32()))
    columns["part_energy"] = pa.array([[0.0, 1e9]], pa.list_(pa.float32()))
    columns["part_deta"] = pa.array([[5.0, 0.0]], pa.list_(pa.float32()))
    inputs = build_inputs(pa.table(columns))
    assert inputs.pf_features[0, 12, :2].tolist() == [1.0, 0.0]  # d0err clipped to [0, 1]
    assert inputs.pf_features[0, 1, 0] == -5.0  # log(0) -> -inf -> clip -5
    assert inputs.pf_features[0, 1, 1] == 5.0  # huge energy -> clip 5
    assert inputs.pf_features[0, 3, 1] == 5.0
    assert inputs.pf_features[0, 4, 0] == 5.0  # deltaR 5 -> (5 - 0.2) * 4 -> clip 5
    assert inputs.pf_features[0, 15, 0] == 5.0  # deta itself is not clipped


def test_missing_column_is_named_with_its_source(table):
    with pytest.raises(MissingColumnError, match=r"jets\.parquet: missing column 'part_dzerr'"):
        build_inputs(table.drop_columns(["part_dzerr"]), source_name="jets.parquet")
    with pytest.raises(MissingColumnError, match="'jet_energy'"):
        build_inputs(table.drop_columns(["jet_energy"]))


def test_particle_columns_must_agree_on_multiplicity():
    table = _synthetic_table([3, 4])
    columns = {name: table[name] for name in table.schema.names}
    columns["part_dphi"] = pa.array([[0.1, 0.2, 0.3], [0.1]], pa.list_(pa.float32()))
    with pytest.raises(ValueError, match=r"'part_dphi' disagrees .*\(jet 1\)"):
        build_inputs(pa.table(columns))
