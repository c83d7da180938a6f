import numpy as np
import pytest

from sophon.discriminant import PRESETS, Discriminant, DiscriminantError, Term, event_sum
from sophon.labels import GROUPS, LABELS, index_of, select


def _scores(rng, n=500):
    logits = rng.normal(size=(n, len(LABELS))) * 2
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def test_hand_computed_value():
    scores = np.zeros((1, 188), dtype=np.float32)
    scores[0, index_of("X_bb")] = 0.6
    scores[0, index_of("QCD_light")] = 0.15
    scores[0, index_of("QCD_b")] = 0.05
    scores[0, index_of("X_cc")] = 0.2  # neither numerator nor denominator
    discriminant = PRESETS["X->bb vs QCD"]
    assert discriminant.evaluate(scores)[0] == pytest.approx(0.6 / (0.6 + 0.2))
    assert discriminant.log_odds(scores)[0] == pytest.approx(np.log(0.6 / 0.2), rel=1e-5)


def test_weighted_terms():
    scores = np.zeros((1, 188), dtype=np.float32)
    scores[0, index_of("X_cs")] = 0.2
    scores[0, index_of("X_YY_qqq")] = 0.4
    scores[0, index_of("QCD_light")] = 0.4
    discriminant = Discriminant("w", (Term("X_cs", 0.5), Term("X_YY_qqq", 2.0)))
    g_a = 0.5 * 0.2 + 2.0 * 0.4
    assert discriminant.evaluate(scores)[0] == pytest.approx(g_a / (g_a + 0.4))


def test_numerator_counts_once_when_also_in_the_denominator(rng=np.random.default_rng(1)):
    scores = _scores(rng)
    plain = Discriminant("a", (Term("X_bb"),))
    overlapping = Discriminant("b", (Term("X_bb"),), denominator="QCD | X_bb")
    np.testing.assert_array_equal(plain.evaluate(scores), overlapping.evaluate(scores))


def test_class_division_property():
    """Merging classes by summing their scores leaves D unchanged (paper, section 3)."""
    rng = np.random.default_rng(2)
    scores = _scores(rng)
    discriminant = Discriminant("bqq", (Term(
        "resonant & quarks == 3 & b == 1 & gluons == 0 & leptons == 0"),))
    merged = scores.copy()
    numerator = [index_of(n) for n in discriminant.numerator_classes]
    qcd = [index_of(n) for n in GROUPS["QCD"]]
    # merge the six numerator classes into the first, and all 27 QCD classes into QCD_light
    merged[:, numerator[0]] = scores[:, numerator].sum(axis=1)
    merged[:, numerator[1:]] = 0
    merged[:, index_of("QCD_light")] = scores[:, qcd].sum(axis=1)
    merged[:, [i for i in qcd if i != index_of("QCD_light")]] = 0
    np.testing.assert_allclose(discriminant.evaluate(merged), discriminant.evaluate(scores),
                               rtol=2e-6)


def test_every_preset_evaluates_into_the_unit_interval():
    scores = _scores(np.random.default_rng(3))
    for discriminant in PRESETS.values():
        values = discriminant.evaluate(scores)
        assert values.shape == (len(scores),)
        assert np.all((values >= 0) & (values <= 1))
        order = np.argsort(values, kind="stable")
        assert np.all(np.diff(discriminant.log_odds(scores)[order]) >= -1e-4)


def test_triboson_preset_follows_eqs_7_to_9():
    triboson = PRESETS["W'->WWW triboson"]
    assert triboson.level == "event"
    assert [t.weight for t in triboson.numerator] == [0.3, 0.1, 0.6]
    assert [t.label for t in triboson.numerator] == ["W(2)", "WW(4)", "WW(3)"]
    assert set(select(triboson.numerator[0].classes)) == {"X_qq", "X_cs", "X_cq", "X_sq"}
    # no b quarks and no gluons anywhere in a W-like term
    for term in triboson.numerator:
        for name in select(term.classes):
            assert "b" not in name[2:].replace("YY_", "") and "g" not in name[2:]


def test_a3_preset_is_the_paper_set():
    assert set(PRESETS["A3: X->b q q"].numerator_classes) == {
        "X_YY_ccb", "X_YY_ssb", "X_YY_qqb", "X_YY_bcs", "X_YY_bcq", "X_YY_bsq"}


def test_yaml_round_trip_for_every_preset():
    scores = _scores(np.random.default_rng(4))
    for discriminant in PRESETS.values():
        again = Discriminant.from_yaml(discriminant.to_yaml())
        assert again == discriminant
        np.testing.assert_array_equal(again.evaluate(scores), discriminant.evaluate(scores))


@pytest.mark.parametrize("text, fragment", [
    ("numerator: [{classes: X_bbx}]", "X_bbx"),
    ("name: x", "numerator"),
    ("numerator: [{classes: X_bb, weight: -1}]", "weight"),
    ("numerator: []", "no numerator"),
    ("numerator: [{classes: 'prongs == 2 & quarks == 3'}]", "empty"),
    ("numerator: [{classes: X_bb}]\nlevel: galaxy", "level"),
    (": : :", "YAML"),
    ("[1, 2]", "mapping"),
])
def test_bad_definitions_raise_clear_errors(text, fragment):
    with pytest.raises(DiscriminantError) as info:
        Discriminant.from_yaml(text)
    assert fragment in str(info.value)


def test_wrong_class_count_is_refused():
    with pytest.raises(DiscriminantError, match="188"):
        PRESETS["A1: X->cs"].evaluate(np.zeros((3, 187), dtype=np.float32))


def test_zero_scores_give_zero():
    assert PRESETS["A1: X->cs"].evaluate(np.zeros((2, 188), dtype=np.float32)).tolist() == [0, 0]


def test_event_sum_adds_the_leading_jets():
    values = np.array([0.1, 0.2, 0.7, 0.4, 0.9])
    event = np.array([0, 0, 0, 1, 1])
    leading = np.array([True, True, False, True, True])
    np.testing.assert_allclose(event_sum(values, event, 2, leading), [0.3, 1.3])


def test_latex_names_every_term():
    latex = PRESETS["W'->WWW triboson"].latex()
    assert "0.3" in latex and "W(2)" in latex and "\\frac" in latex


def test_cut_on_d_is_the_logistic_of_the_log_odds_cut():
    from sophon.discriminant import cut_on_d

    for log_odds in (-3.0, 0.0, 2.0, 9.0):
        g_a, g_b = np.exp(log_odds), 1.0  # any pair with this ratio
        assert cut_on_d(log_odds) == pytest.approx(g_a / (g_a + g_b), rel=1e-12)
    assert cut_on_d(float("inf")) == 1.0 and cut_on_d(-float("inf")) == 0.0
    assert cut_on_d(1000.0) == 1.0
    assert np.isnan(cut_on_d(float("nan")))


def test_preset_name_finds_only_equal_presets():
    from sophon.discriminant import preset_name

    for name, preset in PRESETS.items():
        assert preset_name(preset) == name
    edited = Discriminant.from_dict({**PRESETS["A1: X->cs"].to_dict(), "name": "my X->cs"})
    assert preset_name(edited) is None


@pytest.mark.parametrize("numerator, denominator", [
    ("X_cs", "X_cs"),                       # equal to the numerator
    ("X_cs | X_cq", "X_cs"),                # inside the numerator
    ("two_prong", "X_bb | X_cc"),           # inside a group numerator
])
def test_a_denominator_inside_the_numerator_is_refused(numerator, denominator):
    with pytest.raises(DiscriminantError) as error:
        Discriminant("d", (Term(numerator),), denominator=denominator)
    message = str(error.value)
    assert repr(denominator) in message and "g_B would be empty" in message
    # from a file or a link too, with the same message
    with pytest.raises(DiscriminantError, match="g_B would be empty"):
        Discriminant.from_dict({"numerator": [{"classes": numerator}], "denominator": denominator})


def test_classes_in_both_sets_are_named_and_counted_in_g_a_only():
    overlapping = Discriminant("d", (Term("X_cs"),), denominator="QCD | X_cs | X_bb")
    assert overlapping.classes_in_both == ["X_cs"]
    assert "X_cs" not in overlapping.denominator_classes
    assert sorted(overlapping.denominator_classes) == sorted([*select("QCD"), "X_bb"])
    assert PRESETS["A1: X->cs"].classes_in_both == []
