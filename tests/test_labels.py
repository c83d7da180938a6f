import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sophon import labels
from sophon.labels import (CONTENTS, GROUPS, LABELS, REWEIGHT_GROUPS, QueryError, index_of,
                           mask, select)


def test_labels_match_the_published_order(reference_dir):
    published = json.loads((reference_dir / "jetclass2_labels.json").read_text())["labels"]
    assert list(LABELS) == published


def test_group_sizes_follow_the_paper():
    assert len(LABELS) == 188
    assert len(GROUPS["QCD"]) == 27
    assert len(GROUPS["two_prong"]) == 15
    assert len(GROUPS["three_four_prong"]) == 146
    assert set(GROUPS["resonant"]) == set(GROUPS["two_prong"]) | set(GROUPS["three_four_prong"])


def test_thirty_reweighting_groups_partition_the_classes():
    assert len(REWEIGHT_GROUPS) == 30
    members = [name for group in REWEIGHT_GROUPS.values() for name in group]
    assert sorted(members) == sorted(LABELS)
    assert set(REWEIGHT_GROUPS["X_QQ"]) == {"X_bb", "X_cc", "X_ss", "X_qq", "X_bc", "X_cs",
                                            "X_bq", "X_cq", "X_sq"}
    assert set(REWEIGHT_GROUPS["X_ll"]) == {"X_ee", "X_mm"}
    assert "X_YY_ggb" in REWEIGHT_GROUPS["X_YY_Qgg"]
    assert "X_YY_bctauev" in REWEIGHT_GROUPS["X_YY_QQtaulv"]
    assert REWEIGHT_GROUPS["QCD"] == GROUPS["QCD"]


@pytest.mark.parametrize("name, expected", [
    ("X_YY_bctauev", dict(b=1, c=1, tau_e=1, neutrinos=1, prongs=4, resonant=True)),
    ("X_tauhtaum", dict(tau_h=1, tau_mu=1, prongs=2)),
    ("X_YY_gmm", dict(g=1, mu=2, prongs=3)),
    ("X_YY_qqqb", dict(q=3, b=1, prongs=4)),
    ("QCD_bbcs", dict(b=2, c=1, s=1, resonant=False)),
    ("QCD_light", dict(b=0, c=0, s=0, resonant=False)),
])
def test_class_content_is_parsed_from_the_name(name, expected):
    content = CONTENTS[index_of(name)]
    for field, value in expected.items():
        assert getattr(content, field) == value, field


def test_prongs_count_the_decay_products():
    for content in CONTENTS:
        if content.resonant:
            assert content.prongs == (2 if not content.name.startswith("X_YY_") else
                                      content.prongs)
            assert content.prongs in ((2,) if not content.name.startswith("X_YY_") else (3, 4))
            assert content.quarks + content.g + content.leptons == content.prongs


def test_paper_a3_example():
    query = "resonant and quarks == 3 and b == 1 and gluons == 0 and leptons == 0"
    assert set(select(query)) == {"X_YY_ccb", "X_YY_ssb", "X_YY_qqb", "X_YY_bcs", "X_YY_bcq",
                                  "X_YY_bsq"}


def test_globs_groups_and_set_operations():
    assert select("X_YY_bbb*") == ["X_YY_bbbb", "X_YY_bbb"]
    assert select("X_bb | X_cc") == ["X_bb", "X_cc"]
    assert select("X_bb, X_cc") == ["X_bb", "X_cc"]
    assert select("QCD & b >= 1") == [n for n in GROUPS["QCD"] if "b" in n[4:]]
    assert select("two_prong - X_QQ") == ["X_gg", "X_ee", "X_mm", "X_tauhtaue", "X_tauhtaum",
                                          "X_tauhtauh"]
    assert select("not resonant") == list(GROUPS["QCD"])
    assert select("(X_bb | X_cc) & c == 2") == ["X_cc"]
    assert select("prongs == 2 & quarks == 3") == []  # valid and empty
    assert mask("X_cs").sum() == 1 and mask("X_cs")[index_of("X_cs")]


def test_results_come_in_label_order_whatever_the_query_order():
    assert select("X_cc | X_bb") == ["X_bb", "X_cc"]


@pytest.mark.parametrize("query, fragment", [
    ("X_bbb", "X_bb"),           # unknown name: suggestion
    ("QDC", "QCD"),
    ("quark == 3", "quarks"),    # unknown field: suggestion
    ("b", "needs a comparison"),
    ("b == x", "whole number"),
    ("(X_bb", "parenthesis"),
    ("X_bb |", "end of query"),
    ("X_bb $", "unexpected character"),
    ("", "empty"),
    ("X_ZZ*", "matches no class"),
])
def test_bad_queries_raise_the_projects_error(query, fragment):
    with pytest.raises(QueryError) as info:
        select(query)
    assert fragment in str(info.value)


def test_deep_nesting_is_refused_cleanly():
    with pytest.raises(QueryError):
        select("(" * 500 + "X_bb" + ")" * 500)
    with pytest.raises(QueryError):
        select("not " * 500 + "X_bb")


_ALPHABET = st.sampled_from(["X_bb", "QCD", "b", "==", "1", "and", "or", "not", "(", ")", "&",
                             "|", "-", ",", "*", "X_YY_*", "quarks", ">=", " ", "3", "~", "!="])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzzed_text_raises_only_query_errors(text):
    try:
        result = select(text)
    except QueryError:
        return
    assert set(result) <= set(LABELS)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=12).map(" ".join))
def test_fuzzed_token_soup_raises_only_query_errors(text):
    try:
        result = select(text)
    except QueryError:
        return
    assert result == [n for n in LABELS if n in set(result)]


def test_select_rejects_non_text():
    with pytest.raises(QueryError):
        select(None)  # type: ignore[arg-type]


def test_no_eval_in_the_parser():
    source = open(labels.__file__).read()
    assert "eval(" not in source and "exec(" not in source


def test_families_and_truth_groups_follow_the_class_names():
    import numpy as np

    from sophon.labels import (FAMILIES, FAMILY_OF_CLASS, REWEIGHT_GROUP_OF_CLASS,
                               REWEIGHT_GROUPS, TRUTH_GROUP_OF_CLASS, TRUTH_GROUPS)

    names = np.array(LABELS)
    family = np.array(FAMILIES)[FAMILY_OF_CLASS]
    # from the names alone: QCD_*, X_YY_* (three or four prongs), other X_* (two prongs)
    expected = np.where(np.char.startswith(names, "QCD"), "QCD",
                        np.where(np.char.startswith(names, "X_YY_"), "three_four_prong",
                                 "two_prong"))
    np.testing.assert_array_equal(family, expected)
    assert (family == "QCD").sum() == 27
    truth = np.array(TRUTH_GROUPS)[TRUTH_GROUP_OF_CLASS]
    assert truth[LABELS.index("X_bb")] == "X→2 prongs, hadronic"
    assert truth[LABELS.index("X_tauhtaue")] == "X→2 prongs, leptonic"
    assert truth[LABELS.index("X_YY_qqqq")] == "X→YY 3/4 prongs, hadronic"
    assert truth[LABELS.index("X_YY_qqee")] == "X→YY 3/4 prongs, leptonic"
    assert all(truth[i] == "QCD" for i in np.flatnonzero(family == "QCD"))
    groups = tuple(REWEIGHT_GROUPS)
    assert all(LABELS[i] in REWEIGHT_GROUPS[groups[g]] for i, g in enumerate(REWEIGHT_GROUP_OF_CLASS))
