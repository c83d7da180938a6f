"""Hostile input (issue 15), library and view level: each case asserts the exact visible outcome.

Classes: 1 user text reaches the page as text (HTML-escaped, KaTeX-escaped); 2 YAML imports are
bounded (no aliases, no deep nesting, a size cap); 3 a class query costs a bounded time; 5 every
failure is the project's error with a message naming the field and value; 6 the store validates
types, ranges and magnitudes at load. Browser cases: tests/test_hostile_browser.py.
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
                    "significance, events, latent-space, rescoring"),
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
def _jets(n, rng):
    return {"jet_pt": rng.uniform(200, 800, n).astype(np.float32),
            "jet_eta": rng.uniform(-2, 2, n).astype(np.float32),
            "jet_phi": rng.uniform(-3, 3, n).astype(np.float32),
            "jet_energy": rng.uniform(300, 900, n).astype(np.float32),
            "jet_sdmass": rng.uniform(0, 300, n).astype(np.float32),
            "process": np.array(["QCD", "ttbar"] * (n // 2), dtype=object),
            "weight": rng.uniform(0.1, 2, n)}


def _probabilities(n, rng):
    raw = rng.random((n, 188)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


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
