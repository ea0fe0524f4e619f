"""The quick load (plain files, lines deferred) gives exactly what the careful load gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.manifests.loader import _load_careful, _load_quick, _YamlLoader, load_text

HERE = Path(__file__).parent
CORPUS = sorted((HERE / "good").glob("*.yaml")) + sorted((HERE / "bad").glob("*.yaml"))

TRICKY = [
    "",
    "---\n---\n",
    "a: 1\n---\nb: [1, 2, {c: d}]\n",
    "a: &x {b: 1}\nc: *x\n",  # an alias: only the careful load takes it
    "a: 1\na: 2\n",  # duplicate key
    "<<: {a: 1}\n",  # merge key
    "'<<': quoted merge is a plain key\n",
    "1: int key\n",
    "[a, b]\n",  # not a mapping
    "a: 1\n--- 3\n",  # a scalar document after a good one
    "a: !!binary aGVsbG8=\n",
    "a: !!str 1\nb: !!int '7'\nc: !custom x\n",
    "a: {b: [1, 2\n",  # syntax error after nothing
    "a: 1\n---\nb: [1, 2\n",  # syntax error after a good document
    "n: [0, 007, 0x1F, 0b11, 1_000, -3, +4, 1:30, 0.5, .inf, -.Inf, .nan, 1e3, 6.02e+23]\n",
    "b: [yes, No, on, OFF, true, False, ~, null, '', 2026-01-01, 2026-01-01 10:00:00Z, =]\n",
    "deep: " + "[" * 120 + "]" * 120 + "\n",
    "big: " + "9" * 5000 + "\n",
    "k: v\n...\n---\n# comment only\n---\nx: y\n",
    "\ufeffa: bom\n",
    "a:\n  - b: 1\n    c: [x, {d: e}]\n  - 'two'\n",
]


def _same(text: str | bytes, path: str) -> None:
    quick = load_text(text, path)
    try:
        decoded = text.decode("utf-8-sig") if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        return  # refused before any YAML is read
    if "\0" in decoded:
        return  # likewise
    careful = _load_careful(decoded, path, False)
    assert quick.problems == careful.problems
    assert [(d.index, d.line, d.data) for d in quick.documents] == [
        (d.index, d.line, d.data) for d in careful.documents
    ]
    for mine, theirs in zip(quick.documents, careful.documents, strict=True):
        assert mine.lines == theirs.lines  # the deferred map, worked out, is the careful one
        assert mine.lines.values == theirs.lines.values and mine.lines.keys == theirs.lines.keys


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_loads_the_same_either_way(path: Path) -> None:
    _same(path.read_bytes(), str(path))


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_load_the_same_either_way(text: str) -> None:
    _same(text, "t.yaml")


def test_plain_files_take_the_quick_load_and_others_the_careful_one() -> None:
    assert _load_quick("kind: Job\nmetadata: {name: a, labels: {x: 'y'}}\nspec: [1, 2.5, no]\n", "p")
    assert _load_quick("a: &x 1\nb: *x\n", "p") is None  # aliases are counted
    assert _load_quick("a: 1\na: 2\n", "p") is None  # a duplicate key is reported
    assert _load_quick("- 1\n", "p") is None  # not a mapping


def test_lines_of_a_clean_file_are_worked_out_when_first_read() -> None:
    text = "kind: Job\nmetadata:\n  name: a\n---\nkind: Job\nmetadata: {name: b}\nspec:\n  x: 1\n"
    first, second = load_text(text, "j.yaml").documents
    assert (first.line, second.line) == (1, 5)
    assert second.lines.line_of(("metadata", "name")) == 6
    assert second.lines.key_line_of(("spec", "x")) == 8
    assert first.lines.line_of(("metadata", "name")) == 3
    assert not first.lines.has(("spec",))


def test_tags_resolve_as_the_safe_loader_resolves_them() -> None:
    scalars = [
        "yes", "No", "on", "OFF", "true", "False", "~", "null", "Null", "", "0", "007", "0x1F",
        "0b11", "1_000", "-3", "+4", "1:30", "0.5", ".inf", "-.Inf", ".nan", "1e3", "6.02e+23",
        "2026-01-01", "2026-01-01 10:00:00Z", "=", "<<", "1920x1080", "team-3", "news",
        "'7'", '"true"', "medium", "-x", ".", "n", "y",
    ]
    text = "".join(f"k{i}: {s}\n" for i, s in enumerate(scalars)) + "".join(
        f"? {s}\n: v\n" for s in scalars if s not in ("", "~")
    )
    for _ in range(2):  # the second round reads the remembered tags
        ours = yaml.compose(text, Loader=_YamlLoader)
        theirs = yaml.compose(text, Loader=yaml.SafeLoader)
        assert ours is not None and theirs is not None
        assert [(k.tag, v.tag) for k, v in ours.value] == [(k.tag, v.tag) for k, v in theirs.value]
