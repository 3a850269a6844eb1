"""yamlsource's quick reader builds the tree ruamel's round-trip loader builds, or gives up.

ruamel's pure-Python scanner takes about a millisecond per rule of a large rule file,
so yamlsource reads the part of YAML that hand-written files use with a reader of its
own and leaves everything else to ruamel. Every diagnostic's line and column comes
from the loaded tree and YAML 1.2 decides what a scalar is, so a tree from the quick
reader must be ruamel's tree: the same keys, values, scalar types, positions (of each
key, value and item) and flow or block style. The tests compare the two readers on
files inside the subset, on files just outside it (where the quick reader must give
up and ruamel answer), and on mutations of both.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from policyd.diagnostics import DiagnosticError
from policyd.grammar.dsl import parse_policy
from policyd.grammar.printers import to_yaml
from policyd.yamlsource import _NotQuick, _QuickReader, _yaml, parse_yaml
from tests.grammar.test_examples import EXAMPLE
from tests.grammar.test_fuzz import FUZZ, mutated
from tests.grammar.test_yaml_rules import SECTION_6


def shape(node: Any) -> Any:
    """Everything of a loaded tree that the code after the loader can see."""
    if isinstance(node, CommentedMap):
        return (
            "map",
            (node.lc.line, node.lc.col),
            node.fa.flow_style(),
            [
                (shape(key), (node.lc.data or {}).get(key), shape(value))
                for key, value in node.items()
            ],
        )
    if isinstance(node, CommentedSeq):
        return (
            "seq",
            (node.lc.line, node.lc.col),
            node.fa.flow_style(),
            [(node.lc.data[index], shape(item)) for index, item in enumerate(node)],
        )
    if isinstance(node, float) and math.isnan(node):
        return type(node), "nan"
    return type(node), node, getattr(node, "__dict__", None)


def quick(text: str) -> Any:
    """The quick reader's tree, or `_NotQuick` when it gives up."""
    try:
        return _QuickReader(text).document()
    except _NotQuick:
        return _NotQuick


def ruamel(text: str) -> Any:
    return _yaml().load(text)


def assert_same_or_declined(text: str) -> None:
    tree = quick(text)
    if tree is _NotQuick:
        return
    assert shape(tree) == shape(ruamel(text)), text


# Inside the subset: the quick reader reads each of these, as ruamel does.
SUBSET = [
    "a: 1\nb: two\n",
    "a:\nb: 1\n",  # an empty value sits at the next token
    "a:",
    "a: # note\nb: 2\n",  # ... or just after the `:` when a comment and a key follow
    "x:\n  a: # note\ny: 1\n",
    "custom: # note\n",  # ... but at the end of the text when no key follows
    "a:\n  # note\n  b: 1\n",
    "a:\n- x\n-\n- y\nb: [p, q]\n",  # an indentless list; an empty item sits after its `-`
    "x:\n  - a: 1\n    b:\n  -\n",
    "- # note\n- 1\n",
    "-\n  a: 1\n",
    "- a:\n  - x\n- b\n",
    "a:\n  -   b: 1\n      c: 2\n",
    "  a: 1\n  b: 2\n",
    "a: {b: 1, c: [d, e]}\n",
    "a: {}\nb: []\nc: [ ]\n",
    "a: [[1, [2]], {b: {c: d}}]\n",
    "a: [\n  x,   # note\n  y,\n]\nb: {\n  c: 1,\n}\n",
    "a: [b\n, c]\n",
    "a: [a, # note\n b]\n",
    "on: yes\nno: off\nyes: on\ny: n\n",  # YAML 1.2: all text
    "a: true\nb: True\nc: FALSE\nd: tRue\ne: null\nf: Null\ng: ~\nh:\n",
    "a: 1_000\nb: 0o17\nc: 0b101\nd: +5\ne: -0\nf: 1e3\ng: .inf\nh: -.inf\ni: .nan\n",
    "a: 0\nb: 00\nc: 09\nd: 0x1F\ne: 1:30\nf: 1.5\ng: 6.8523015e+5\nh: .5\n",
    "a: 2024-01-01\nb: 2001-12-14t21:59:43.10-05:00\nc: 12:30\n",
    "1: a\n2: b\nnull: c\n",
    "a: user:bob\nb: [user:bob, group:8idi-staff]\nc: {x: a:b}\n",
    "a: x #note\nb: x#y\nc: b]\nd: e,f\ne: x?y\nf: -x\n",
    "a: 'it''s'\nb: \"tab\\there \\u00e9\\x41\\N\\\\\"\nc: 'x' # note\n",
    "a: é\nb: 日本\nc: 😀\né: [😀, é]\nd: \u00a0x\n",
    "---\na: 1\n",
    "a: x\r\nb:\r\n  - 1\r\n",
    "# only a comment\n\na: 1 # note\n# another\n  # indented\n",
    "k-1: a b\nx.y: c  d\n",
    SECTION_6,
]


@pytest.mark.parametrize("text", SUBSET)
def test_the_subset_reads_as_ruamel_reads_it(text: str) -> None:
    tree = quick(text)
    assert tree is not _NotQuick, "the quick reader gave up"
    assert shape(tree) == shape(ruamel(text))


# Just outside it: the quick reader gives up and parse_yaml is ruamel's answer.
OUTSIDE = [
    "",
    "# only a comment\n",
    "just text\n",
    "[a, b]\n",
    "a: &anchor x\nb: *anchor\n",
    "a: !!float 1\n",
    "a: |\n  block\n",
    "a: >\n  folded\n",
    "a: plain\n  on two lines\n",
    "a: 'quoted\n  on two lines'\n",
    '"a": 1\n',
    "? a\n: b\n",
    "a : 1\n",
    "<<: {a: 1}\n",
    "%YAML 1.1\n---\non: yes\n",
    "a: 1\n---\nb: 2\n",
    "a: 1\n...\n",
    "a:\n\tb: 1\n",
    "a: x\rb: 1\n",
    "\ufeffa: 1\n",
    "a: [a,#b]\n",
    "a: [a: b]\n",
    "a: {b}\n",
    "a: {b: }\n",
    "a: [a, b,,]\n",
    "- - a\n",
    "a: b: c\n",
    "a: 1\na: 2\n",
    "a: [1, 2\n",
    'a: "\\q"\n',
    "a: 2024-13-45\n",
]


@pytest.mark.parametrize("text", OUTSIDE)
def test_outside_the_subset_ruamel_answers(text: str) -> None:
    assert quick(text) is _NotQuick
    try:
        loaded = ruamel(text)
    except Exception as exc:  # a YAMLError, or what ruamel lets through (a bad date's)
        with pytest.raises(DiagnosticError if isinstance(exc, YAMLError) else type(exc)):
            parse_yaml(text, "doc.yaml")
    else:
        assert shape(parse_yaml(text, "doc.yaml")) == shape(loaded)


def test_yaml_1_1_only_through_a_directive() -> None:
    assert parse_yaml("on: yes\nno: off\n", "doc.yaml") == {"on": "yes", "no": "off"}
    assert parse_yaml("%YAML 1.1\n---\non: yes\n", "doc.yaml") == {True: True}


def test_duplicate_keys_are_ruamels_diagnostic() -> None:
    with pytest.raises(DiagnosticError) as caught:
        parse_yaml("a: 1\nb: 2\na: 3\n", "doc.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "duplicate-key"
    assert (diagnostic.span.line, diagnostic.span.col) == (3, 1)


def test_rule_files_take_the_quick_path() -> None:
    tree, diagnostics = parse_policy(EXAMPLE, "example.policy")
    assert tree is not None, diagnostics
    for text in (SECTION_6, to_yaml(tree)):
        assert shape(quick(text)) == shape(ruamel(text))


# Mutations: documents built from the subset's pieces, and those with a few changes.
_SCALARS = [
    "x",
    "1",
    "-1",
    "1.5",
    "0x1f",
    "true",
    "yes",
    "on",
    "null",
    "~",
    "'s'",
    "'it''s'",
    '"d\\tq"',
    "user:bob",
    "a b",
    "2024-01-01",
    "1_0",
    "07",
    ".inf",
    "-x",
    "x?y",
    "a#b",
    "é",
    "'a: b'",
    "80%",
    "7 days",
    "12:30",
    "b]",
]
_KEYS = ["a", "b", "on", "no", "1", "true", "null", "a b", "k-1", "where", "~"]


@st.composite
def documents(draw: st.DrawFn, indent: int = 0, depth: int = 0) -> str:
    """A block mapping or list of scalars, flow collections and nested blocks."""
    step = draw(st.sampled_from([1, 2, 4]))
    lines = []
    as_list = draw(st.booleans())
    keys = draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3, unique=True))
    for key in keys:
        head = " " * indent + ("-" if as_list else f"{key}:")
        kind = draw(
            st.sampled_from(["scalar", "flow", "empty", "block"] if depth < 2 else ["scalar"])
        )
        comment = draw(st.sampled_from(["", "", " # note"]))
        if kind == "scalar":
            lines.append(f"{head} {draw(st.sampled_from(_SCALARS))}{comment}")
        elif kind == "flow":
            items = draw(
                st.lists(st.sampled_from([s for s in _SCALARS if "]" not in s]), max_size=3)
            )
            separator = draw(st.sampled_from([", ", ",", ",\n" + " " * (indent + step)]))
            lines.append(f"{head} [{separator.join(items)}]{comment}")
        elif kind == "empty":
            lines.append(f"{head}{comment}")
        else:
            lines.append(head + comment)
            lines.append(draw(documents(indent + step, depth + 1)))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", " " * indent + "# note"])))
    return "\n".join(lines)


@FUZZ
@given(documents())
def test_built_documents_read_as_ruamel_reads_them(text: str) -> None:
    assert_same_or_declined(text)
    assert_same_or_declined(text + "\n")


@FUZZ
@given(st.data())
def test_mutated_documents_read_as_ruamel_reads_them_or_not_at_all(data: st.DataObject) -> None:
    text = data.draw(documents())
    pieces = [piece for line in text.splitlines(keepends=True) for piece in line.split(" ")]
    spaced = [piece for part in pieces for piece in (part, " ")][:-1]
    odd = ["-", ":", "#", ",", "[", "]", "{", "}", "'", '"', "&", "*", "!", "|", "\t", "\n", " "]
    assert_same_or_declined(data.draw(mutated(spaced, odd)))
