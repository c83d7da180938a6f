"""Hostile input (issue 15), library and view level: each case asserts the exact visible outcome.

Classes: 1 user text reaches the page as text (HTML-escaped, KaTeX-escaped); 2 YAML imports are
bounded (no aliases, no deep nesting, a size cap); 3 a class query costs a bounded time; 5 every
failure is the project's error with a message naming the field and value; 6 the store validates
types, ranges and magnitudes at load; 4 every failure to open a dataset (twelve bad datasets) is
a DatasetProblem, the page's message, naming file, column and value; 7 a file data_manifest.yaml
lists is verified by the library too, hashed once per size and mtime. Browser cases:
tests/test_hostile_browser.py; ``sophon score`` cases (item 8): tests/test_hostile_scoring.py.
"""

from __future__ import annotations

import fnmatch
import html
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sophon import labels
from sophon.discriminant import (MAX_DEFINITION_CHARACTERS, PRESETS, Discriminant,
                                 DiscriminantError, Term)
from sophon.labels import LABELS, MAX_PATTERNS, MAX_QUERY_LENGTH, QueryError, mask, select
from sophon.store import DatasetError, DatasetMetadata, JetDataset, write_dataset
from test_store import _columns as _jets, _scores as _probabilities

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `app` is a package beside `sophon` in the repository root
    sys.path.insert(0, str(ROOT))

from app.explorer import Explorer  # noqa: E402
from app.page import SophonApp  # noqa: E402
from app.urlstate import decode_discriminant  # noqa: E402
from app.views import ComposerView  # noqa: E402

SCRIPT = '<img src=x onerror="window.__pwned=1">'
BILLION_LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
name: *i
numerator: [{classes: X_bb}]
"""


def _message(error_type, function, *args) -> str:
    with pytest.raises(error_type) as info:
        function(*args)
    assert type(info.value) is error_type  # the project's error, not a plain ValueError
    return str(info.value)


def worst_globs(count: int = MAX_PATTERNS) -> list[str]:
    """Distinct 64-character globs that each match some class: every position a wildcard."""
    patterns = []
    for k in range(count):
        body = "*?" * (k % 6) + "*" + ("[bcsq]", "[bc]", "[sq]")[k // 30] + "*?" * (k // 6 % 5)
        patterns.append((body + "*" * 64)[:64])
    assert len(set(patterns)) == count
    return patterns


# --- class 3 and 5: the class-query parser ---------------------------------------------------------
def test_overlong_query_is_refused_at_once():
    started = time.perf_counter()
    message = _message(QueryError, select, "[" * 20_000)
    assert message == "the class query is 20,000 characters long; at most 4,000 are accepted"
    assert time.perf_counter() - started < 0.05


def test_overlong_word_is_refused():
    assert _message(QueryError, select, "X" * 100 + " | X_bb") == (
        f"word '{'X' * 59}…' is 100 characters long; names, groups and patterns have at most 64 "
        f"(at character 0 of '{'X' * 60}…')")


def test_brackets_in_a_word_cost_linear_time():
    """fnmatch's translation is quadratic in the number of '['; the parser's own automaton is
    not: 64-character words of brackets, the longest accepted, answer at once."""
    started = time.perf_counter()
    for k in range(40):
        query = "[" * (60 + k % 4) + "]" + f" | X_bb{'c' * (k % 3)}"
        with pytest.raises(QueryError):
            select(query)
    assert time.perf_counter() - started < 0.5


def test_worst_glob_query_is_answered_quickly_and_correctly():
    patterns = worst_globs()
    query = " | ".join(patterns)
    labels._select_indices.cache_clear()
    labels._glob.cache_clear()
    started = time.perf_counter()
    result = select(query)
    assert time.perf_counter() - started < 0.5
    expected = sorted({i for p in patterns for i, n in enumerate(LABELS) if fnmatch.fnmatchcase(n, p)})
    assert result == [LABELS[i] for i in expected]


def test_too_many_patterns_are_refused():
    query = " | ".join(worst_globs(MAX_PATTERNS + 1))
    message = _message(QueryError, select, query)
    assert message.startswith("more than 32 patterns (words with *, ? or [) in one query "
                              "(at character ")


def test_unclosed_bracket_names_its_position():
    assert _message(QueryError, select, "X_[b") == (
        "pattern 'X_[b': the '[' at character 2 is not closed by ']' (at character 0 of 'X_[b')")


def test_long_number_in_a_comparison_is_a_query_error():
    assert _message(QueryError, select, "quarks >= 1234567") == (
        "number '1234567' in 'quarks >=' has 7 digits; at most 6 (counts are small) "
        "(at character 10 of 'quarks >= 1234567')")
    assert _message(QueryError, select, "b == " + "1" * 3000) == (
        f"word '{'1' * 59}…' is 3,000 characters long; names, groups and patterns have at most "
        f"64 (at character 5 of 'b == {'1' * 55}…')")


def test_query_must_be_text_for_select_and_mask():
    assert _message(QueryError, select, ["X_bb"]) == "a class query must be text, not list"
    assert _message(QueryError, mask, None) == "a class query must be text, not NoneType"


def test_long_query_messages_quote_an_excerpt():
    query = "X_bb | " * 500 + "X_zz"
    message = _message(QueryError, select, query)
    assert message.startswith("unknown class or group 'X_zz'")
    assert len(message) < 250 and message.endswith("X_bb | X_zz')")


_HOSTILE = st.sampled_from(["[", "]", "!", "*", "?", "[!", "X_", "b", "==", "<=", "1" * 7,
                            "9" * 40, "(", ")", "~", "not", "and", "|", "-", ",", " ", "\u00b2",
                            "\u0661", "\t", "X_YY_", "QCD_", "quarks", "[bc]", "*?*?*?"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_HOSTILE, max_size=40).map("".join))
def test_fuzzed_hostile_queries_raise_only_query_errors(text):
    try:
        result = select(text)
    except QueryError:
        return
    assert set(result) <= set(LABELS)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="X_YQCDbcsqgemtauhvl*?[]!", min_size=1, max_size=24))
def test_globs_match_as_fnmatch_does(pattern):
    try:
        matched = labels._glob(pattern)
    except ValueError:
        assert "[" in pattern  # only an unclosed bracket is refused
        return
    assert matched == {i for i, n in enumerate(LABELS) if fnmatch.fnmatchcase(n, pattern)}


# --- class 2 and 5: discriminant definitions -------------------------------------------------------
def test_billion_laughs_is_refused_before_expansion():
    started = time.perf_counter()
    message = _message(DiscriminantError, Discriminant.from_yaml, BILLION_LAUGHS)
    assert message == "not accepted: the YAML alias *a (line 2); write each value out"
    assert time.perf_counter() - started < 0.5


def test_merge_key_alias_is_refused():
    text = "base: &b {classes: X_bb}\nnumerator: [{<<: *b}]"
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == (
        "not accepted: the YAML alias *b (line 2); write each value out")


def test_oversized_yaml_is_refused():
    text = "numerator: [{classes: X_bb}]\n" + "#" * MAX_DEFINITION_CHARACTERS
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == (
        "the YAML is 32,029 characters long; a discriminant definition has at most 32,000")


def test_deeply_nested_lists_are_refused():
    text = "numerator: " + "[" * 10_000 + "]" * 10_000
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == (
        "the YAML nests deeper than 10 levels (line 1)")


@pytest.mark.parametrize("weight, message", [
    ("1e400", "term 1: 'weight' must be a finite number from 0 to 1e+06, got '1e400'"),
    ("1.0e+400", "term 1: 'weight' must be a finite number from 0 to 1e+06, got inf"),
    ("1e306", "term 1: 'weight' must be a finite number from 0 to 1e+06, got '1e306'"),
    (".nan", "term 1: 'weight' must be a finite number from 0 to 1e+06, got nan"),
    ("9" * 400, "term 1: 'weight' must be a finite number from 0 to 1e+06, got an integer of "
                "400 digits"),
    ("9" * 5000, "not valid YAML: a number has more digits than Python reads (4300)"),
    ("lots", "term 1: 'weight' must be a number, got text ('lots')"),
    ("true", "term 1: 'weight' must be a number, got true/false (True)"),
    ("[1]", "term 1: 'weight' must be a number, got a list ([1])"),
    ("-1", "term 1: 'weight' must be a finite number from 0 to 1e+06, got -1"),
])
def test_bad_weights_name_the_field_and_value(weight, message):
    text = f"numerator: [{{classes: X_bb, weight: {weight}}}]"
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == message


def test_yaml_weights_written_with_exponents_still_load():
    """PyYAML reads ``1e-3`` as text: numeric text is accepted as the number it spells."""
    loaded = Discriminant.from_yaml("numerator: [{classes: X_bb, weight: 1e-3}]")
    assert loaded.numerator[0].weight == 1e-3


@pytest.mark.parametrize("text, message", [
    ("numerator: [{classes: X_bb}]\nfoo: 1",
     "the discriminant: unknown key 'foo'; the keys are name, level, description, numerator, "
     "denominator"),
    ("numerator: [{classes: X_bb, colour: red}]",
     "term 1: unknown key 'colour'; the keys are classes, weight, label"),
    ("name: 12\nnumerator: [{classes: X_bb}]",
     "the discriminant: 'name' must be text, got a number (12)"),
    ("numerator: [{classes: [X_bb]}]", "term 1: 'classes' must be text, got a list (['X_bb'])"),
    ("numerator: [X_bb]",
     "term 1 must be a mapping with the keys classes, weight, label; got text ('X_bb')"),
    ("numerator: {classes: X_bb}",
     "'numerator' must be a list of terms, got a mapping ({'classes': 'X_bb'})"),
    ("numerator: [{weight: 2}]", "term 1 lacks the key 'classes' (a class query, e.g. X_bb)"),
    ("level: [jet]\nnumerator: [{classes: X_bb}]",
     "discriminant 'custom': level must be 'jet' or 'event', got ['jet']"),
    ("!!python/object/apply:os.system ['true']",
     "not valid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'\n  in \"<unicode string>\", line 1, "
     "column 1:\n    !!python/object/apply:os.system  ... \n    ^"),
    ("numerator: [{classes: X_bb}]\ndenominator: QCDD",
     "denominator: unknown class or group 'QCDD'; did you mean QCD, QCD_s, QCD_c? "
     "(at character 0 of 'QCDD')"),
])
def test_bad_definitions_name_the_field_and_value(text, message):
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == message


def test_long_texts_and_many_terms_are_refused():
    description = "x" * 2001
    text = f"description: {description}\nnumerator: [{{classes: X_bb}}]"
    assert _message(DiscriminantError, Discriminant.from_yaml, text) == (
        "the discriminant: 'description' is 2,001 characters long; at most 2,000 "
        f"('{'x' * 58}…)")
    query = "b == " + "1" * 5000
    assert _message(DiscriminantError, Discriminant.from_dict,
                    {"numerator": [{"classes": query}]}) == (
        "term 1: 'classes' is 5,005 characters long; at most 4,000 "
        "('b == 11111111111111111111111111111111111111111111111111111…)")
    terms = [{"classes": "X_bb"}] * 65
    assert _message(DiscriminantError, Discriminant.from_dict, {"numerator": terms}) == (
        "'numerator' has 65 terms; at most 64")


def test_terms_built_in_code_are_checked_the_same_way():
    assert _message(DiscriminantError, Term, "X_bb", 10 ** 400) == (
        "term 'X_bb': weight must be a finite number from 0 to 1e+06, got an integer of 401 "
        "digits")
    assert _message(DiscriminantError, Term, "X_bb", True) == (
        "term 'X_bb': weight must be a finite number from 0 to 1e+06, got True")


def test_latex_escapes_every_special_character():
    discriminant = Discriminant("x", (Term("X_bb", 1.0, "$a\\b{c}_#%&^~ d$"),))
    latex = discriminant.latex()
    assert "g_{\\mathrm{\\$a\\backslash{}b\\{c\\}\\_\\#\\%\\&\\hat{}\\sim{}\\ d\\$}}" in latex
    # no unescaped dollar: the formula cannot be ended by a label
    assert all(latex[i - 1] == "\\" for i, ch in enumerate(latex) if ch == "$")


# --- class 5: links ----------------------------------------------------------------------------------
def test_link_json_with_huge_values_gives_discriminant_errors():
    infinite = '{"numerator": [{"classes": "X_bb", "weight": 1e400}]}'
    assert _message(DiscriminantError, decode_discriminant, infinite) == (
        "term 1: 'weight' must be a finite number from 0 to 1e+06, got inf")
    digits = '{"numerator": [{"classes": "X_bb", "weight": ' + "9" * 5000 + "}]}"
    assert _message(DiscriminantError, decode_discriminant, digits) == (
        "the discriminant in the link is not valid JSON: a number has more digits than Python "
        "reads (4300)")
    deep = '{"numerator": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert _message(DiscriminantError, decode_discriminant, deep) == (
        "the discriminant in the link is 40,015 characters long; at most 32,000")
    nested = '{"numerator": ' + "[" * 5_000 + "]" * 5_000 + "}"
    assert _message(DiscriminantError, decode_discriminant, nested) == (
        "the discriminant in the link is not valid JSON: nested too deeply")
    assert _message(DiscriminantError, decode_discriminant, 12) == (
        "cannot read a discriminant from a int")


@pytest.fixture()
def explorer(synthetic_path) -> Explorer:
    return Explorer.from_path(synthetic_path)


def _open_link(synthetic_path, search: str) -> SophonApp:
    from panel.io.location import Location

    app = SophonApp(Explorer.from_path(synthetic_path))
    app.url.sync(Location(search=search))
    return app


@pytest.mark.parametrize("search, notice", [
    ("?eff=lots", "Not applied from the link: eff='lots' (expected a number from 0.0001 to 1)"),
    ("?eff=5", "Not applied from the link: eff='5' (expected a number from 0.0001 to 1)"),
    ("?eff=" + "9" * 5000, "Not applied from the link: eff is 5,000 characters long; at most 64"),
    ("?eff=%C2%B2", "Not applied from the link: eff='²' cannot be read"),
    ("?ref=XYZ", "Not applied from the link: ref='XYZ' (expected one of all, QCD)"),
    ("?norm=maybe", "Not applied from the link: norm='maybe' (expected true or false)"),
    ("?view=bogus", "Not applied from the link: view: no tab 'bogus'; the tabs are spectrum, "
                    "significance, events, latent-space, rescoring, learning"),
    ("?d=" + json.dumps({"numerator": [{"classes": "X_bb", "weight": "lots"}]}),
     "Not applied from the link: d: term 1: 'weight' must be a number, got text ('lots')"),
    ("?d=" + "[" * 100, f"Not applied from the link: d='{'[' * 59}…' cannot be read"),
])
def test_bad_link_values_give_a_notice(synthetic_path, search, notice):
    app = _open_link(synthetic_path, search)
    assert app.url.notice == notice
    assert app.link_notice.visible
    assert app.link_notice.object == f"<div class='link-notice-text'>{html.escape(notice)}</div>"
    assert app.explorer.efficiency == 0.01 and app.explorer.discriminant == PRESETS["X->bb vs QCD"]


def test_good_values_of_a_link_apply_beside_bad_ones(synthetic_path):
    app = _open_link(synthetic_path, "?eff=0.001&ref=XYZ&foo=" + "1" * 5000)
    assert app.explorer.efficiency == pytest.approx(1e-3)
    assert app.url.notice == ("Not applied from the link: foo is 5,000 characters long; at most "
                              "256; ref='XYZ' (expected one of all, QCD)")


def test_link_notice_shows_script_as_text(synthetic_path):
    app = _open_link(synthetic_path, "?d=" + SCRIPT)
    assert SCRIPT not in app.link_notice.object
    assert html.escape(SCRIPT) in app.link_notice.object


# --- class 1: the composer shows user text as text -------------------------------------------------
def _crafted() -> Discriminant:
    return Discriminant(name=f"n{SCRIPT}", description=f"<script>window.__pwned=1</script>{SCRIPT}",
                        numerator=(Term("X_bb", 1.0, f"$</span>{SCRIPT}$ \\ {{x}}"),))


def test_composer_summary_escapes_name_and_description(explorer):
    composer = ComposerView(explorer)
    explorer.discriminant = _crafted()
    summary = composer._summary.object
    assert "<script" not in summary and "<img" not in summary
    assert html.escape(f"n{SCRIPT}") in summary
    assert html.escape(f"<script>window.__pwned=1</script>{SCRIPT}") in summary
    assert isinstance(composer._summary, type(composer._alert))  # an HTML pane, not Markdown


def test_composer_formula_escapes_labels_for_katex_and_html(explorer):
    composer = ComposerView(explorer)
    explorer.discriminant = _crafted()
    formula = composer._latex.object
    assert formula.startswith("$") and formula.endswith("$")
    inner = formula[1:-1]
    assert "<" not in inner and ">" not in inner
    assert all(inner[i - 1] == "\\" for i, ch in enumerate(inner) if ch == "$")
    assert "\\$&lt;/span&gt;&lt;img\\ src=x\\ onerror=\"window.\\_\\_pwned=1\"&gt;\\$" in inner


def test_long_number_query_replaces_the_stale_status(explorer):
    composer = ComposerView(explorer)
    editor = composer._editors[0]
    editor._query.value_input = "X_bb"
    assert "✓ 1 class" in editor._status.object
    editor._query.value_input = "b == " + "1" * 5000
    assert "✓" not in editor._status.object
    assert ("✗ the class query is 5,005 characters long; at most 4,000 are accepted"
            in editor._status.object)


def test_composer_reports_bad_weights_from_the_websocket(explorer):
    composer = ComposerView(explorer)
    before = explorer.discriminant
    editor = composer._editors[0]
    for weight, shown in ((1e306, "1e+306"), (-1.0, "-1.0"), (float("nan"), "nan")):
        editor._weight.value = weight
        assert composer.status == ("Not applied: term 'X_bb': weight must be a finite number "
                                   f"from 0 to 1e+06, got {shown}")
        assert composer._alert.visible and explorer.discriminant == before


def test_billion_laughs_paste_shows_the_reason(explorer):
    composer = ComposerView(explorer)
    before = explorer.discriminant
    assert composer.import_yaml(BILLION_LAUGHS) is None
    assert composer.status == ("Could not import the YAML: not accepted: the YAML alias *a "
                               "(line 2); write each value out")
    assert composer._alert.visible and explorer.discriminant == before


def test_crafted_yaml_imports_as_text(explorer):
    composer = ComposerView(explorer)
    imported = composer.import_yaml(_crafted().to_yaml())
    assert imported == _crafted() and explorer.discriminant == _crafted()
    assert "<img" not in composer._summary.object and "<img" not in composer._latex.object


def test_uploaded_file_name_is_shown_as_text(explorer):
    composer = ComposerView(explorer)
    composer._upload.filename = f"{SCRIPT}.yaml"
    composer._upload.value = b"\xff\xfe not text"
    assert composer.status == f"Could not import {SCRIPT}.yaml: the file is not UTF-8 text."
    assert composer._alert.object == (f"<div class='composer-error-text'>"
                                      f"{html.escape(composer.status)}</div>")
    composer._upload.filename = "big.yaml"
    composer._upload.value = b"#" * (4 * MAX_DEFINITION_CHARACTERS + 1)
    assert composer.status == ("Could not import big.yaml: the file has 128,001 bytes; a "
                               "discriminant definition has at most 32,000 characters")


def test_composer_inputs_carry_the_library_limits(explorer):
    composer = ComposerView(explorer)
    assert composer._editors[0]._query.max_length == MAX_QUERY_LENGTH
    assert composer._denominator.max_length == MAX_QUERY_LENGTH
    assert composer._yaml_text.max_length == MAX_DEFINITION_CHARACTERS


# --- class 6: the store ---------------------------------------------------------------------------
@pytest.fixture()
def valid_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_dataset(tmp_path / "ok.parquet", _jets(20, rng), scores=_probabilities(20, rng),
                         latents=rng.normal(size=(20, 128)).astype(np.float32),
                         metadata=DatasetMetadata(luminosity_fb=140.0, model_id="test"))


def _column(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


def _write(table, path) -> Path:
    pq.write_table(table, path)
    return path


def _dataset_error(path) -> str:
    return _message(DatasetError, JetDataset, path)


def test_scores_outside_the_unit_interval_that_sum_to_one(valid_file, tmp_path):
    table = pq.read_table(valid_file)
    a, b = table["score_X_bb"].to_numpy().copy(), table["score_X_cc"].to_numpy().copy()
    a[3], b[3] = a[3] - 0.5, b[3] + 0.5  # the row still sums to 1
    table = _column(_column(table, "score_X_bb", pa.array(a)), "score_X_cc", pa.array(b))
    bad = _write(table, tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (f"{bad}: column 'score_X_bb' holds {a[3]} at row 3; "
                                   "probabilities must lie in [0, 1]")


@pytest.mark.parametrize("value, shown", [(1e306, "1e+306"), (np.inf, "inf"),
                                          (2e15, "2000000000000000.0")])
def test_huge_or_infinite_weights_are_refused(valid_file, tmp_path, value, shown):
    table = pq.read_table(valid_file)
    weights = table["weight"].to_numpy().copy()
    weights[7] = value
    bad = _write(_column(table, "weight", pa.array(weights)), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (f"{bad}: column 'weight' holds {shown} at row 7; weights must "
                                   "be finite, non-negative and at most 1e+15 (expected events)")


def test_latents_of_the_wrong_width(valid_file, tmp_path):
    table = pq.read_table(valid_file)
    narrow = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(20 * 127, np.float32)), 127)
    bad = _write(_column(table, "latent", narrow), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (f"{bad}: column 'latent' holds 127 numbers per jet; expected "
                                   "128 (fixed_size_list<float32>[128])")


def test_ragged_latents(valid_file, tmp_path):
    table = pq.read_table(valid_file)
    rows = [[0.5] * (127 if i == 2 else 128) for i in range(20)]
    bad = _write(_column(table, "latent", pa.array(rows, pa.list_(pa.float32()))),
                 tmp_path / "bad.parquet")
    stored = pq.read_schema(bad).field("latent").type  # list<element: float>
    assert _dataset_error(bad) == (
        f"{bad}: column 'latent' is a variable-length list ({stored}); row 2 holds 127 numbers; "
        "expected fixed_size_list<float32>[128], 128 numbers per jet")


def test_latents_that_are_not_numbers(valid_file, tmp_path):
    table = pq.read_table(valid_file)
    text = pa.FixedSizeListArray.from_arrays(pa.array(["0.5"] * (20 * 128)), 128)
    bad = _write(_column(table, "latent", text), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (f"{bad}: column 'latent' holds string values; expected "
                                   "fixed_size_list<float32>[128]")


@pytest.mark.parametrize("name", ["jet_pt", "weight", "score_QCD_light"])
def test_numeric_columns_stored_as_text(valid_file, tmp_path, name):
    table = pq.read_table(valid_file)
    as_text = pa.array([str(v) for v in table[name].to_pylist()])
    bad = _write(_column(table, name, as_text), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (f"{bad}: column {name!r} is stored as string; it must hold "
                                   "numbers (integers or floats)")


def test_a_file_without_metadata_says_so(valid_file, tmp_path):
    bad = _write(pq.read_table(valid_file).replace_schema_metadata(None), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == (
        f"{bad}: the file has no 'sophon' metadata (the parquet key-value entry with the class "
        "order, luminosity and model id); write it with sophon.store.write_dataset")


@pytest.mark.parametrize("entry, message", [
    ({"luminosity_fb": "lots"}, "metadata 'luminosity_fb' is 'lots'; expected a positive number "
                                "of fb^-1, or null for an unweighted dataset"),
    ({"luminosity_fb": -1}, "metadata 'luminosity_fb' is -1; expected a positive number of "
                            "fb^-1, or null for an unweighted dataset"),
    ({"model_id": ["a"]}, "metadata 'model_id' is ['a']; expected text of at most 500 "
                          "characters"),
    ({"schema_version": 1e400}, "unreadable 'sophon' metadata (OverflowError)"),
])
def test_bad_metadata_values(valid_file, tmp_path, entry, message):
    table = pq.read_table(valid_file)
    raw = json.dumps({**json.loads(DatasetMetadata().to_json()), **entry})
    bad = _write(table.replace_schema_metadata({b"sophon": raw}), tmp_path / "bad.parquet")
    assert _dataset_error(bad) == f"{bad}: {message}"


def test_messages_name_the_file_and_row_within_it(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(2):
        jets = _jets(10, rng)
        if part == 1:
            jets["weight"][4] = 1e20
        write_dataset(folder / f"part-{part}.parquet", jets, scores=_probabilities(10, rng),
                      metadata=DatasetMetadata(luminosity_fb=1.0))
    assert _dataset_error(folder) == (
        f"{folder / 'part-1.parquet'}: column 'weight' holds 1e+20 at row 4; weights must be "
        "finite, non-negative and at most 1e+15 (expected events)")


def test_a_refused_write_leaves_no_file_and_no_temporary(tmp_path):
    rng = np.random.default_rng(4)
    target = tmp_path / "refused.parquet"
    with pytest.raises(DatasetError) as info:
        write_dataset(target, _jets(10, rng), scores=_probabilities(10, rng),
                      latents=np.zeros((10, 127), np.float32))
    assert str(info.value) == f"{target}: latents must have shape (10, 128), got (10, 127)"
    assert list(tmp_path.iterdir()) == []


# --- class 4: every failure to open a dataset is the page with the reason -------------------------
def _metadata_entry(path: Path, entry: dict) -> Path:
    table = pq.read_table(path)
    raw = json.dumps({**json.loads(DatasetMetadata(luminosity_fb=140.0).to_json()), **entry})
    return _write(table.replace_schema_metadata({b"sophon": raw}), path)


def _replaced(path: Path, name: str, array) -> Path:
    table = pq.read_table(path)
    if name in table.column_names:
        return _write(_column(table, name, array), path)
    return _write(table.append_column(name, array), path)


def bad_datasets(folder: Path) -> dict[str, tuple[Path, str]]:
    """Twelve datasets that cannot be opened, each with the message the page shows for it (the
    text the message starts with, after the file's path). The first seven gave a blank page."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)

    def valid(name: str, jets=None, **extra) -> Path:
        return write_dataset(folder / f"{name}.parquet", _jets(20, rng) if jets is None else jets,
                             scores=_probabilities(20, rng),
                             latents=rng.normal(size=(20, 128)).astype(np.float32),
                             metadata=DatasetMetadata(luminosity_fb=140.0, model_id="test",
                                                      extra=extra))

    cases: dict[str, tuple[Path, str]] = {}
    jets = _jets(20, rng)
    jets["process"] = pa.array(["QCD", "ttbar", None, "QCD"] * 5)
    cases["null process"] = (valid("null-process", jets), "column 'process' is missing (null) at "
                             "row 2; every jet needs its physics process")
    path = valid("text-mass")
    masses = pq.read_table(path)["jet_sdmass"].to_pylist()
    cases["text jet_sdmass"] = (_replaced(path, "jet_sdmass", pa.array([f"{m}" for m in masses])),
                                "column 'jet_sdmass' is stored as string; it must hold numbers "
                                "(integers or floats)")
    jets = _jets(20, rng)
    del jets["process"]
    jets["jet_label"] = np.where(np.arange(20) == 4, 999, 0).astype(np.int32)
    cases["jet_label 999 without process"] = (
        valid("label-999", jets), "column 'jet_label' holds 999 at row 4; class indices run from "
                                  "0 to 187 (-1: no truth class)")
    compact = folder / "compact" / "data"
    compact.mkdir(parents=True)
    (folder / "compact" / "models").mkdir()
    junk = folder / "compact" / "models" / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint\n" * 4)
    table = pq.read_table(valid("full", score_head="../models/junk.pt"))
    table = table.drop_columns([c for c in table.column_names if c.startswith("score_")])
    cases["score head not a checkpoint"] = (
        _write(table, compact / "jets.parquet"),
        f"metadata 'score_head' names {junk}, which is not a loadable Sophon checkpoint (")
    cases["luminosity as text"] = (
        _metadata_entry(valid("lumi-text"), {"luminosity_fb": "138"}),
        "metadata 'luminosity_fb' is '138'; expected a positive number of fb^-1, or null for an "
        "unweighted dataset")
    cases["negative luminosity"] = (
        _metadata_entry(valid("lumi-negative"), {"luminosity_fb": -138.0}),
        "metadata 'luminosity_fb' is -138.0; expected a positive number of fb^-1, or null for an "
        "unweighted dataset")
    cases["integer model_id"] = (
        _metadata_entry(valid("model-int"), {"model_id": 42}),
        "metadata 'model_id' is 42; expected text of at most 500 characters")
    cases["missing file"] = (folder / "nowhere.parquet", "no such dataset file or directory")
    not_parquet = folder / "not-parquet.parquet"
    not_parquet.write_bytes(b"PAR1 but not really")
    cases["not a parquet file"] = (not_parquet, "unreadable or truncated parquet file (")
    path = valid("nan-score")
    values = pq.read_table(path)["score_QCD_light"].to_numpy().copy()
    values[9] = np.nan
    cases["NaN score"] = (_replaced(path, "score_QCD_light", pa.array(values)),
                          "column 'score_QCD_light' holds nan (not finite) at row 9")
    cases["process as numbers"] = (
        _replaced(valid("process-int"), "process", pa.array(np.arange(20))),
        "column 'process' is stored as int64; it must hold text (the physics process, e.g. 'QCD')")
    cases["jet_label as floats"] = (
        _replaced(valid("label-float"), "jet_label", pa.array(np.zeros(20))),
        "column 'jet_label' is stored as double; it must hold integer class indices 0 to 187")
    return cases


BAD_DATASETS = ("null process", "text jet_sdmass", "jet_label 999 without process",
                "score head not a checkpoint", "luminosity as text", "negative luminosity",
                "integer model_id", "missing file", "not a parquet file", "NaN score",
                "process as numbers", "jet_label as floats")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_datasets(tmp_path_factory.mktemp("bad-datasets"))


def _problem_file(path: Path) -> Path:
    return path if not path.is_dir() else sorted(path.glob("*.parquet"))[0]


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_every_bad_dataset_is_a_problem_naming_what_is_wrong(bad, case):
    from app import state

    assert set(bad) == set(BAD_DATASETS)
    path, reason = bad[case]
    problem = state.load_analysis(path)
    assert isinstance(problem, state.DatasetProblem)
    assert problem.message.startswith(f"{_problem_file(path)}: {reason}")
    assert "Traceback" not in problem.message and "\n" not in problem.message


@pytest.mark.parametrize("case", ["null process", "jet_label 999 without process",
                                  "score head not a checkpoint", "integer model_id"])
def test_the_page_on_a_bad_dataset_shows_the_reason(bad, case):
    path, reason = bad[case]
    app = SophonApp(data=path)
    assert not app.explorer.ready
    assert len(app.tabs) == 1 and app.tabs._names == ["Dataset"]
    shown = app.tabs[0].object
    assert "The dataset could not be opened." in shown
    assert html.escape(f"{_problem_file(path)}: {reason}") in shown


def test_an_unexpected_error_in_loading_is_still_a_problem(valid_file, monkeypatch):
    from app import state

    def broken(analysis):
        raise TypeError("'<' not supported between instances of 'NoneType' and 'str'")

    monkeypatch.setattr(state, "warm_up", broken)
    problem = state.load_analysis(valid_file)
    assert problem == state.DatasetProblem(
        valid_file, f"{valid_file}: cannot be opened (TypeError: '<' not supported between "
                    "instances of 'NoneType' and 'str')")
    assert state.cached_analysis(valid_file) is None


def test_a_failing_first_scan_is_the_page_with_the_reason(valid_file, monkeypatch):
    from app import page, state

    def failing(path, **params):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(page.Explorer, "from_path", classmethod(lambda cls, p: failing(p)))
    app = SophonApp(data=valid_file)
    assert not app.explorer.ready
    assert html.escape(f"{valid_file}: the first computation on the dataset failed (TypeError: "
                       "unsupported operand)") in app.tabs[0].object
    assert state.cached_analysis(valid_file) is None


# --- class 7: shipped files are verified by the library too ---------------------------------------
@pytest.fixture()
def shipped(tmp_path, monkeypatch, valid_file):
    """A temporary repository: data/jets.parquet listed in its own data_manifest.yaml."""
    import hashlib
    import os

    import yaml

    from sophon import manifest

    root = tmp_path / "repository"
    (root / "data").mkdir(parents=True)
    file = root / "data" / "jets.parquet"
    file.write_bytes(valid_file.read_bytes())
    content = file.read_bytes()
    listing = root / "data_manifest.yaml"
    listing.write_text(yaml.safe_dump({"project": {"datasets": [{
        "name": "jets", "path": "data/jets.parquet", "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(), "command": "make jets"}]}}))
    old = time.time() - 3600  # settled files: the digest cache may keep them
    for path in (file, listing):
        os.utime(path, (old, old))
    monkeypatch.setattr(manifest, "SHIPPED_ROOT", root)
    monkeypatch.setattr(manifest, "DEFAULT_MANIFEST", listing)
    return file, hashlib.sha256(content).hexdigest()


def _flip_one_bit(file: Path) -> str:
    import hashlib

    content = bytearray(file.read_bytes())
    content[len(content) // 2] ^= 0x01
    file.write_bytes(bytes(content))
    return hashlib.sha256(bytes(content)).hexdigest()


def test_a_listed_file_with_one_flipped_bit_is_refused(shipped):
    file, expected = shipped
    assert len(JetDataset(file)) == 20  # the intact file loads
    actual = _flip_one_bit(file)
    assert _dataset_error(file) == (f"{file}: altered: sha256 {actual[:12]}..., the manifest says "
                                    f"{expected[:12]}... (made by: make jets)")
    assert _dataset_error(file.parent) == _dataset_error(file)  # the folder too


def test_a_listed_file_is_hashed_once_per_size_and_mtime(shipped, monkeypatch):
    from sophon import manifest

    file, _ = shipped
    hashed = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda path: hashed.append(path) or real(path))
    for _ in range(3):
        JetDataset(file)
    assert hashed == [file]
    _flip_one_bit(file)  # a new mtime: hashed again, and refused
    assert "altered: sha256" in _dataset_error(file)
    assert len(hashed) == 2


def test_an_unlisted_copy_is_not_hashed(shipped, tmp_path, monkeypatch):
    from sophon import manifest

    file, _ = shipped
    copy = tmp_path / "mine.parquet"
    copy.write_bytes(file.read_bytes())
    monkeypatch.setattr(manifest, "sha256_file", lambda path: pytest.fail("hashed"))
    assert len(JetDataset(copy)) == 20


def test_the_app_shows_the_altered_shipped_file(shipped):
    from app import state

    file, expected = shipped
    actual = _flip_one_bit(file)
    problem = state.load_analysis(file)
    assert isinstance(problem, state.DatasetProblem)
    assert problem.message.endswith(f"altered: sha256 {actual[:12]}..., the manifest says "
                                    f"{expected[:12]}... (made by: make jets)")
