"""The 188 JetClass-II classes, their particle content, named groups and a small query language.

The label order is the JetClass-II index order (arXiv:2405.12972, Table 1): score column ``i`` of
the model output belongs to ``LABELS[i]``. Every class name is parsed into its content so that
physicists can select classes by what they contain rather than by name::

    >>> select("resonant and quarks == 3 and b == 1 and gluons == 0 and leptons == 0")
    ['X_YY_ccb', 'X_YY_ssb', 'X_YY_qqb', 'X_YY_bcs', 'X_YY_bcq', 'X_YY_bsq']

Query language (parsed by a recursive-descent parser, never evaluated as Python):

- atoms: an exact class name (``X_bb``), a glob (``X_YY_bb*``), a group name (``QCD``,
  ``two_prong``, ``three_four_prong``, ``resonant``, ``all``, or one of the 30 reweighting
  groups such as ``X_QQ``, ``X_YY_QQQ``), or a content comparison ``FIELD OP INTEGER`` with
  ``OP`` one of ``== != < <= > >=`` (fields in :data:`FIELDS`);
- operators, loosest first: union ``|`` / ``or`` / ``,``, difference ``-``; intersection
  ``&`` / ``and``; complement ``not`` / ``~``; parentheses group.

Globs use ``*`` (any run), ``?`` (one character) and ``[...]`` / ``[!...]`` (one of / none of
the characters), matched by a small automaton of this module (never ``fnmatch``): the cost of a
query is bounded by its length. Limits, each refused with a :class:`QueryError` that names it: a
query of at most :data:`MAX_QUERY_LENGTH` characters (all 188 names joined by `` | `` take
2,317), words of at most :data:`MAX_WORD_LENGTH`, at most :data:`MAX_PATTERNS` distinct globs,
numbers of at most :data:`MAX_NUMBER_DIGITS` digits. Every failure of the parser is a
:class:`QueryError`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "LABELS",
    "N_CLASSES",
    "ClassContent",
    "CONTENTS",
    "FIELDS",
    "GROUPS",
    "REWEIGHT_GROUPS",
    "REWEIGHT_GROUP_OF_CLASS",
    "FAMILIES",
    "FAMILY_OF_CLASS",
    "TRUTH_GROUPS",
    "TRUTH_GROUP_OF_CLASS",
    "QueryError",
    "MAX_QUERY_LENGTH",
    "MAX_WORD_LENGTH",
    "MAX_PATTERNS",
    "MAX_NUMBER_DIGITS",
    "select",
    "mask",
    "index_of",
]

LABELS: tuple[str, ...] = (
    'X_bb', 'X_cc', 'X_ss', 'X_qq', 'X_bc', 'X_cs', 'X_bq', 'X_cq', 'X_sq', 'X_gg', 'X_ee',
    'X_mm', 'X_tauhtaue', 'X_tauhtaum', 'X_tauhtauh', 'X_YY_bbbb', 'X_YY_bbcc', 'X_YY_bbss',
    'X_YY_bbqq', 'X_YY_bbgg', 'X_YY_bbee', 'X_YY_bbmm', 'X_YY_bbtauhtaue', 'X_YY_bbtauhtaum',
    'X_YY_bbtauhtauh', 'X_YY_bbb', 'X_YY_bbc', 'X_YY_bbs', 'X_YY_bbq', 'X_YY_bbg', 'X_YY_bbe',
    'X_YY_bbm', 'X_YY_cccc', 'X_YY_ccss', 'X_YY_ccqq', 'X_YY_ccgg', 'X_YY_ccee', 'X_YY_ccmm',
    'X_YY_cctauhtaue', 'X_YY_cctauhtaum', 'X_YY_cctauhtauh', 'X_YY_ccb', 'X_YY_ccc', 'X_YY_ccs',
    'X_YY_ccq', 'X_YY_ccg', 'X_YY_cce', 'X_YY_ccm', 'X_YY_ssss', 'X_YY_ssqq', 'X_YY_ssgg',
    'X_YY_ssee', 'X_YY_ssmm', 'X_YY_sstauhtaue', 'X_YY_sstauhtaum', 'X_YY_sstauhtauh', 'X_YY_ssb',
    'X_YY_ssc', 'X_YY_sss', 'X_YY_ssq', 'X_YY_ssg', 'X_YY_sse', 'X_YY_ssm', 'X_YY_qqqq',
    'X_YY_qqgg', 'X_YY_qqee', 'X_YY_qqmm', 'X_YY_qqtauhtaue', 'X_YY_qqtauhtaum',
    'X_YY_qqtauhtauh', 'X_YY_qqb', 'X_YY_qqc', 'X_YY_qqs', 'X_YY_qqq', 'X_YY_qqg', 'X_YY_qqe',
    'X_YY_qqm', 'X_YY_gggg', 'X_YY_ggee', 'X_YY_ggmm', 'X_YY_ggtauhtaue', 'X_YY_ggtauhtaum',
    'X_YY_ggtauhtauh', 'X_YY_ggb', 'X_YY_ggc', 'X_YY_ggs', 'X_YY_ggq', 'X_YY_ggg', 'X_YY_gge',
    'X_YY_ggm', 'X_YY_bee', 'X_YY_cee', 'X_YY_see', 'X_YY_qee', 'X_YY_gee', 'X_YY_bmm',
    'X_YY_cmm', 'X_YY_smm', 'X_YY_qmm', 'X_YY_gmm', 'X_YY_btauhtaue', 'X_YY_ctauhtaue',
    'X_YY_stauhtaue', 'X_YY_qtauhtaue', 'X_YY_gtauhtaue', 'X_YY_btauhtaum', 'X_YY_ctauhtaum',
    'X_YY_stauhtaum', 'X_YY_qtauhtaum', 'X_YY_gtauhtaum', 'X_YY_btauhtauh', 'X_YY_ctauhtauh',
    'X_YY_stauhtauh', 'X_YY_qtauhtauh', 'X_YY_gtauhtauh', 'X_YY_qqqb', 'X_YY_qqqc', 'X_YY_qqqs',
    'X_YY_bbcq', 'X_YY_ccbs', 'X_YY_ccbq', 'X_YY_ccsq', 'X_YY_sscq', 'X_YY_qqbc', 'X_YY_qqbs',
    'X_YY_qqcs', 'X_YY_bcsq', 'X_YY_bcs', 'X_YY_bcq', 'X_YY_bsq', 'X_YY_csq', 'X_YY_bcev',
    'X_YY_csev', 'X_YY_bqev', 'X_YY_cqev', 'X_YY_sqev', 'X_YY_qqev', 'X_YY_bcmv', 'X_YY_csmv',
    'X_YY_bqmv', 'X_YY_cqmv', 'X_YY_sqmv', 'X_YY_qqmv', 'X_YY_bctauev', 'X_YY_cstauev',
    'X_YY_bqtauev', 'X_YY_cqtauev', 'X_YY_sqtauev', 'X_YY_qqtauev', 'X_YY_bctaumv',
    'X_YY_cstaumv', 'X_YY_bqtaumv', 'X_YY_cqtaumv', 'X_YY_sqtaumv', 'X_YY_qqtaumv',
    'X_YY_bctauhv', 'X_YY_cstauhv', 'X_YY_bqtauhv', 'X_YY_cqtauhv', 'X_YY_sqtauhv',
    'X_YY_qqtauhv', 'QCD_bbccss', 'QCD_bbccs', 'QCD_bbcc', 'QCD_bbcss', 'QCD_bbcs', 'QCD_bbc',
    'QCD_bbss', 'QCD_bbs', 'QCD_bb', 'QCD_bccss', 'QCD_bccs', 'QCD_bcc', 'QCD_bcss', 'QCD_bcs',
    'QCD_bc', 'QCD_bss', 'QCD_bs', 'QCD_b', 'QCD_ccss', 'QCD_ccs', 'QCD_cc', 'QCD_css', 'QCD_cs',
    'QCD_c', 'QCD_ss', 'QCD_s', 'QCD_light',
)
N_CLASSES = len(LABELS)
_INDEX = {name: i for i, name in enumerate(LABELS)}

# Decay-product tokens as they appear in class names; longest first so that "tauh" wins over "t...".
_TOKENS = ("tauh", "taue", "taum", "b", "c", "s", "q", "g", "e", "m", "v")
_TOKEN_RE = re.compile("|".join(_TOKENS))


@dataclass(frozen=True)
class ClassContent:
    """What one JetClass-II class contains.

    For resonant classes the counts are the decay products inside the jet (u and d merged as
    ``q``; taus split by decay mode). For QCD classes ``b``, ``c``, ``s`` are the numbers of such
    partons with pT > 10 GeV in the jet, capped at 2 (the class name's ``bb`` means ">= 2").
    """

    name: str
    index: int
    resonant: bool
    prongs: int  # number of decay products for resonances; 1 for QCD (one initiating parton)
    b: int = 0
    c: int = 0
    s: int = 0
    q: int = 0
    g: int = 0
    e: int = 0
    mu: int = 0
    tau_e: int = 0
    tau_mu: int = 0
    tau_h: int = 0
    neutrinos: int = 0
    reweight_group: str = ""

    @property
    def quarks(self) -> int:
        return self.b + self.c + self.s + self.q

    @property
    def taus(self) -> int:
        return self.tau_e + self.tau_mu + self.tau_h

    @property
    def charged_leptons(self) -> int:
        return self.e + self.mu + self.taus

    @property
    def leptons(self) -> int:
        """All leptons: electrons, muons, taus (any decay) and neutrinos."""
        return self.charged_leptons + self.neutrinos

    def field(self, name: str) -> int:
        return int(getattr(self, FIELDS[name]))


# Query field name -> ClassContent attribute. Aliases are spelled out, not guessed.
FIELDS: dict[str, str] = {
    "b": "b", "c": "c", "s": "s", "q": "q", "g": "g", "gluons": "g",
    "e": "e", "electrons": "e", "mu": "mu", "muons": "mu",
    "tau_e": "tau_e", "tau_mu": "tau_mu", "tau_h": "tau_h", "taus": "taus",
    "nu": "neutrinos", "neutrinos": "neutrinos",
    "quarks": "quarks", "leptons": "leptons", "charged_leptons": "charged_leptons",
    "prongs": "prongs",
}

_TOKEN_FIELD = {"b": "b", "c": "c", "s": "s", "q": "q", "g": "g", "e": "e", "m": "mu",
                "taue": "tau_e", "taum": "tau_mu", "tauh": "tau_h", "v": "neutrinos"}
# Flavour merging of the published training configuration's 30 reweighting groups.
_MERGED_TOKEN = {"b": "Q", "c": "Q", "s": "Q", "q": "Q", "g": "g", "e": "l", "m": "l",
                 "taue": "taul", "taum": "taul", "tauh": "tauh", "v": "v"}


def _tokenize_products(text: str, name: str) -> list[str]:
    tokens = _TOKEN_RE.findall(text)
    if "".join(tokens) != text:
        raise ValueError(f"cannot parse the decay products of class {name!r}")
    return tokens


def _reweight_group(prefix: str, tokens: list[str]) -> str:
    merged = [_MERGED_TOKEN[t] for t in tokens]
    hadronic = sorted((t for t in merged if t in "Qg"), key="Qg".index)
    leptonic = [t for t in merged if t not in "Qg"]
    return prefix + "".join(hadronic) + "".join(leptonic)


def _parse(index: int, name: str) -> ClassContent:
    if name.startswith("QCD_"):
        flavours = name[4:]
        counts = {} if flavours == "light" else {f: min(flavours.count(f), 2) for f in "bcs"}
        return ClassContent(name, index, resonant=False, prongs=1, reweight_group="QCD", **counts)
    prefix = "X_YY_" if name.startswith("X_YY_") else "X_"
    tokens = _tokenize_products(name[len(prefix):], name)
    counts: dict[str, int] = {}
    for token in tokens:
        field = _TOKEN_FIELD[token]
        counts[field] = counts.get(field, 0) + 1
    return ClassContent(name, index, resonant=True, prongs=len(tokens),
                        reweight_group=_reweight_group(prefix, tokens), **counts)


CONTENTS: tuple[ClassContent, ...] = tuple(_parse(i, name) for i, name in enumerate(LABELS))


def _group(predicate) -> tuple[str, ...]:
    return tuple(c.name for c in CONTENTS if predicate(c))


REWEIGHT_GROUPS: dict[str, tuple[str, ...]] = {}
for _content in CONTENTS:
    REWEIGHT_GROUPS.setdefault(_content.reweight_group, ())
    REWEIGHT_GROUPS[_content.reweight_group] += (_content.name,)

#: (188,) index of each class's reweighting group in ``tuple(REWEIGHT_GROUPS)``.
REWEIGHT_GROUP_OF_CLASS = np.array([tuple(REWEIGHT_GROUPS).index(c.reweight_group)
                                    for c in CONTENTS], dtype=np.int16)

#: The three class families, JetClass-II's three parts: QCD, X -> 2 prongs (Res2P) and
#: X -> YY -> 3 or 4 prongs (Res34P).
FAMILIES: tuple[str, ...] = ("QCD", "two_prong", "three_four_prong")
#: (188,) index of each class's family in :data:`FAMILIES`.
FAMILY_OF_CLASS = np.array([0 if not c.resonant else (1 if c.prongs == 2 else 2)
                            for c in CONTENTS], dtype=np.int8)

#: The families with the resonant ones split by leptons among the decay products: what the
#: latent view colours a jet's true class by.
TRUTH_GROUPS: tuple[str, ...] = ("QCD", "X→2 prongs, hadronic", "X→2 prongs, leptonic",
                                 "X→YY 3/4 prongs, hadronic", "X→YY 3/4 prongs, leptonic")
#: (188,) index of each class's truth group in :data:`TRUTH_GROUPS`.
TRUTH_GROUP_OF_CLASS = np.array([0 if not c.resonant else
                                 2 * int(FAMILY_OF_CLASS[c.index]) - 1 + (c.leptons > 0)
                                 for c in CONTENTS], dtype=np.int8)

GROUPS: dict[str, tuple[str, ...]] = {
    "all": LABELS,
    "QCD": _group(lambda c: not c.resonant),
    "resonant": _group(lambda c: c.resonant),
    "two_prong": _group(lambda c: c.resonant and c.prongs == 2),
    "three_four_prong": _group(lambda c: c.resonant and c.prongs >= 3),
    **{name: members for name, members in REWEIGHT_GROUPS.items() if name != "QCD"},
}
_GROUP_ALIASES = {"qcd": "QCD", "2prong": "two_prong", "multi_prong": "three_four_prong",
                  "34prong": "three_four_prong"}


#: Longest query accepted, in characters (every class name joined by " | " takes 2,317).
MAX_QUERY_LENGTH = 4000
#: Longest word (class name, group, field or glob) accepted; class names have at most 15.
MAX_WORD_LENGTH = 64
#: Most distinct globs (words with ``*``, ``?`` or ``[``) in one query.
MAX_PATTERNS = 32
#: Most digits of a number in a comparison (content counts are at most 4).
MAX_NUMBER_DIGITS = 6
_SHOWN = 60  # characters of a long query or word quoted in a message


def _shorten(text: str, limit: int = _SHOWN) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for messages."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _excerpt(query: str, position: int) -> str:
    """The part of ``query`` around ``position``, at most ~``_SHOWN`` characters."""
    if len(query) <= _SHOWN:
        return query
    start = max(0, min(position - _SHOWN // 2, len(query) - _SHOWN))
    end = start + _SHOWN
    return ("…" if start else "") + query[start:end] + ("…" if end < len(query) else "")


class QueryError(ValueError):
    """A class-set query could not be understood: names the offending text and suggests names."""

    def __init__(self, message: str, *, query: str = "", position: int | None = None,
                 suggestions: tuple[str, ...] = ()):
        self.query = query
        self.position = position
        self.suggestions = suggestions
        if suggestions:
            message += f"; did you mean {', '.join(suggestions)}?"
        if position is not None and query:
            message += f" (at character {position} of {_excerpt(query, position)!r})"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Query parser. Every sub-expression evaluates to a frozenset of class indices.

_LEX = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()|&,~-])
  | (?P<word>[A-Za-z0-9_*?\[\]!]+)
""", re.VERBOSE)
_KEYWORDS = {"and": "&", "or": "|", "not": "~"}
_ALL = frozenset(range(N_CLASSES))
_MAX_DEPTH = 64


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "punct", "word", "end"
    text: str
    position: int


def _lex(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(query):
        match = _LEX.match(query, position)
        if match is None:
            raise QueryError(f"unexpected character {query[position]!r}", query=query,
                             position=position)
        kind = match.lastgroup
        text = match.group()
        if kind == "word" and len(text) > MAX_WORD_LENGTH:
            raise QueryError(f"word {_shorten(text)!r} is {len(text):,} characters long; names, "
                             f"groups and patterns have at most {MAX_WORD_LENGTH}", query=query,
                             position=position)
        if kind == "word" and text.lower() in _KEYWORDS:
            kind, text = "punct", _KEYWORDS[text.lower()]
        if kind != "space":
            tokens.append(_Token(kind, text, position))
        position = match.end()
    tokens.append(_Token("end", "", len(query)))
    return tokens


def _known_names() -> list[str]:
    return [*LABELS, *GROUPS, *_GROUP_ALIASES, *FIELDS]


def _suggest(word: str) -> tuple[str, ...]:
    return tuple(difflib.get_close_matches(word, _known_names(), n=3, cutoff=0.6))


class _Parser:
    def __init__(self, query: str):
        self.query = query
        self.tokens = _lex(query)
        self.position = 0
        self.depth = 0
        self.patterns: set[str] = set()

    @property
    def current(self) -> _Token:
        return self.tokens[self.position]

    def error(self, message: str, token: _Token, suggestions: tuple[str, ...] = ()) -> QueryError:
        return QueryError(message, query=self.query, position=token.position,
                          suggestions=suggestions)

    def advance(self) -> _Token:
        token = self.current
        self.position += 1
        return token

    def parse(self) -> frozenset[int]:
        if self.current.kind == "end":
            raise self.error("empty class query", self.current)
        result = self.union()
        if self.current.kind != "end":
            raise self.error(f"unexpected {self.current.text!r}", self.current)
        return result

    def union(self) -> frozenset[int]:
        result = self.intersection()
        while self.current.text in ("|", ",", "-") and self.current.kind == "punct":
            operator = self.advance().text
            right = self.intersection()
            result = result - right if operator == "-" else result | right
        return result

    def intersection(self) -> frozenset[int]:
        result = self.complement()
        while self.current.kind == "punct" and self.current.text == "&":
            self.advance()
            result = result & self.complement()
        return result

    def complement(self) -> frozenset[int]:
        if self.current.kind == "punct" and self.current.text == "~":
            self.advance()
            with self.nested():
                return _ALL - self.complement()
        return self.atom()

    def nested(self):
        parser = self

        class _Depth:
            def __enter__(self):
                parser.depth += 1
                if parser.depth > _MAX_DEPTH:
                    raise parser.error("query nested too deeply", parser.current)

            def __exit__(self, *exc):
                parser.depth -= 1

        return _Depth()

    def atom(self) -> frozenset[int]:
        token = self.current
        if token.kind == "punct" and token.text == "(":
            self.advance()
            with self.nested():
                result = self.union()
            if not (self.current.kind == "punct" and self.current.text == ")"):
                raise self.error("missing closing parenthesis", self.current)
            self.advance()
            return result
        if token.kind != "word":
            found = "end of query" if token.kind == "end" else repr(token.text)
            raise self.error(f"expected a class name, group or comparison, found {found}", token)
        self.advance()
        if self.current.kind == "op":
            return self.comparison(token)
        return self.name(token)

    def comparison(self, field_token: _Token) -> frozenset[int]:
        field = field_token.text
        if field not in FIELDS:
            raise self.error(f"unknown content field {field!r}", field_token,
                             tuple(difflib.get_close_matches(field, FIELDS, n=3, cutoff=0.5)))
        operator = self.advance().text
        value_token = self.advance()
        text = value_token.text
        if value_token.kind != "word" or not (text.isascii() and text.isdigit()):
            raise self.error(f"expected a whole number after {field} {operator}", value_token)
        if len(text) > MAX_NUMBER_DIGITS:
            raise self.error(f"number {_shorten(text, 20)!r} in '{field} {operator}' has "
                             f"{len(text):,} digits; at most {MAX_NUMBER_DIGITS} (counts are "
                             "small)", value_token)
        return _comparison(field, operator, int(text))

    def name(self, token: _Token) -> frozenset[int]:
        word = token.text
        if word in _INDEX:
            return frozenset((_INDEX[word],))
        group = GROUPS.get(word) or GROUPS.get(_GROUP_ALIASES.get(word.lower(), ""))
        if group is not None:
            return frozenset(_INDEX[n] for n in group)
        if any(ch in word for ch in "*?["):
            self.patterns.add(word)
            if len(self.patterns) > MAX_PATTERNS:
                raise self.error(f"more than {MAX_PATTERNS} patterns (words with *, ? or [) in "
                                 "one query", token)
            try:
                matched = _glob(word)
            except ValueError as error:
                raise self.error(f"pattern {_shorten(word)!r}: {error}", token) from None
            if not matched:
                raise self.error(f"pattern {word!r} matches no class", token, _suggest(word))
            return matched
        if word in FIELDS:
            raise self.error(f"content field {word!r} needs a comparison, e.g. '{word} == 1'", token)
        raise self.error(f"unknown class or group {word!r}", token, _suggest(word))


_FIELD_VALUES: dict[str, tuple[int, ...]] = {
    name: tuple(c.field(name) for c in CONTENTS) for name in FIELDS}
_COMPARE = {"==": int.__eq__, "!=": int.__ne__, "<": int.__lt__, "<=": int.__le__,
            ">": int.__gt__, ">=": int.__ge__}


@lru_cache(maxsize=4096)
def _comparison(field: str, operator: str, value: int) -> frozenset[int]:
    compare = _COMPARE[operator]
    return frozenset(i for i, v in enumerate(_FIELD_VALUES[field]) if compare(v, value))


# --- globs: a bit-parallel automaton over the pattern's positions -------------------------------
_LABEL_CHARS = frozenset("".join(LABELS))
_STAR = None  # a "*" position; other positions are the frozenset of characters they accept


def _glob_positions(pattern: str) -> list[frozenset[str] | None]:
    """The pattern as positions, in one pass: ``*`` (runs merged), ``?``, ``[...]``/``[!...]``
    (``]`` right after the opening bracket is a member) or a literal character."""
    positions: list[frozenset[str] | None] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if not positions or positions[-1] is not _STAR:
                positions.append(_STAR)
            index += 1
        elif char == "?":
            positions.append(_LABEL_CHARS)
            index += 1
        elif char == "[":
            start = index + 1
            negate = pattern.startswith("!", start)
            first = start + negate
            end = pattern.find("]", first + 1)
            if first >= len(pattern) or end < 0:
                raise ValueError(f"the '[' at character {index} is not closed by ']'")
            members = frozenset(pattern[first:end])
            positions.append(_LABEL_CHARS - members if negate else members & _LABEL_CHARS)
            index = end + 1
        else:
            positions.append(frozenset((char,)) & _LABEL_CHARS)
            index += 1
    return positions


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> frozenset[int]:
    """Indices of the classes whose whole name matches the glob ``pattern``.

    A set of states (one bit per pattern position) steps once per character of a name, so a
    pattern costs (188 names) x (<= 15 characters) integer operations whatever its form."""
    positions = _glob_positions(pattern)
    stars = 0
    advance = dict.fromkeys(_LABEL_CHARS, 0)
    for bit, accepted in enumerate(positions):
        if accepted is _STAR:
            stars |= 1 << bit
        else:
            for char in accepted:
                advance[char] |= 1 << bit
    accept = 1 << len(positions)
    start = 1 | ((1 & stars) << 1)
    matched = []
    for index, name in enumerate(LABELS):
        states = start
        for char in name:
            states = ((states & advance[char]) << 1) | (states & stars)
            states |= (states & stars) << 1
            if not states:
                break
        if states & accept:
            matched.append(index)
    return frozenset(matched)


def _checked(query) -> str:
    if not isinstance(query, str):
        raise QueryError(f"a class query must be text, not {type(query).__name__}")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"the class query is {len(query):,} characters long; at most "
                         f"{MAX_QUERY_LENGTH:,} are accepted")
    return query


@lru_cache(maxsize=1024)
def _select_indices(query: str) -> tuple[int, ...]:
    return tuple(sorted(_Parser(query).parse()))


def select(query: str) -> list[str]:
    """Class names matching ``query``, in JetClass-II index order.

    Raises :class:`QueryError` (naming the offending text and suggesting close names) for anything
    it cannot parse. An empty result is allowed (e.g. ``b == 3``): it is a valid, empty class set.
    """
    return [LABELS[i] for i in _select_indices(_checked(query))]


def mask(query: str) -> np.ndarray:
    """Boolean mask of shape (188,) selecting the classes of ``query``."""
    result = np.zeros(N_CLASSES, dtype=bool)
    result[list(_select_indices(_checked(query)))] = True
    return result


def index_of(name: str) -> int:
    """The JetClass-II index of one class name; QueryError with suggestions if unknown."""
    try:
        return _INDEX[name]
    except KeyError:
        raise QueryError(f"unknown class {name!r}", suggestions=_suggest(name)) from None
