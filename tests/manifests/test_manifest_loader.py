"""The strict YAML loader: documents, line numbers, and what it refuses."""

from __future__ import annotations

from pathlib import Path

from controller.manifests.loader import (
    MAX_ALIAS_NODES,
    MAX_MANIFEST_BYTES,
    LineMap,
    Problem,
    format_field,
    load_file,
    load_text,
)


def test_several_documents_and_empty_ones() -> None:
    text = "---\n# only a comment\n---\na: 1\n---\n---\nb: 2\n...\n"
    result = load_text(text, "m.yaml")
    assert result.ok
    assert [d.data for d in result.documents] == [{"a": 1}, {"b": 2}]
    assert [(d.index, d.line) for d in result.documents] == [(0, 4), (1, 7)]
    assert all(d.path == "m.yaml" for d in result.documents)


def test_empty_file_declares_nothing() -> None:
    for text in ("", "\n\n", "# nothing here\n", "---\n", b""):
        result = load_text(text, "e.yaml")
        assert result.ok and result.documents == ()


def test_lines_of_nested_values_and_lists() -> None:
    text = (
        "kind: Scenario\n"  # 1
        "spec:\n"  # 2
        "  command:\n"  # 3
        "    - ffmpeg\n"  # 4
        "    - '{size}'\n"  # 5
        "  defaults: {size: 720p,\n"  # 6
        "             fps: 30}\n"  # 7
        "  note:\n"  # 8
        "    long text\n"  # 9
    )
    (doc,) = load_text(text, "s.yaml").documents
    lines = doc.lines
    assert lines.line_of(()) == 1
    assert lines.line_of(("spec",)) == 2
    assert lines.line_of(("spec", "command")) == 3
    assert lines.line_of(("spec", "command", 1)) == 5
    assert lines.line_of(("spec", "defaults", "fps")) == 7
    # A scalar is located where it is written, its key where the key is.
    assert lines.line_of(("spec", "note")) == 9
    assert lines.key_line_of(("spec", "note")) == 8
    # An absent path falls back to its nearest ancestor.
    assert lines.line_of(("spec", "defaults", "missing", 3)) == 6
    assert lines.has(("spec", "command")) and not lines.has(("spec", "missing"))


def test_scalars_follow_yaml_types_but_dates_stay_text() -> None:
    text = "a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: 2026-01-01\ng: !!str 3\n"
    (doc,) = load_text(text, "t.yaml").documents
    assert doc.data == {"a": 1, "b": 1.5, "c": True, "d": None, "e": "1", "f": "2026-01-01", "g": "3"}


def test_aliases_expand_within_the_limit() -> None:
    text = "base: &b {fps: 30}\ncopy: *b\n"
    (doc,) = load_text(text, "a.yaml").documents
    assert doc.data["copy"] == {"fps": 30}
    assert doc.lines.line_of(("copy", "fps")) == 1  # where the value is written


def test_alias_bomb_is_refused() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    result = load_text("\n".join(levels) + "\n", "bomb.yaml")
    assert result.documents == ()
    (problem,) = result.problems
    assert problem.message == f"aliases expand to more than {MAX_ALIAS_NODES} nodes"


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\x00\xff" * (5 * 1024 * 1024 // 2))
    result = load_file(junk)
    assert [str(p) for p in result.problems] == [
        f"{junk}:1: file too large: 5242880 bytes (limit {MAX_MANIFEST_BYTES} bytes)"
    ]
    # The same for in-memory text (a request body).
    (problem,) = load_text("a: 1\n" * (MAX_MANIFEST_BYTES // 5 + 1), "body").problems
    assert problem.message.startswith("file too large: ")


def test_text_with_a_nul_is_binary() -> None:
    (problem,) = load_text("a: 1\nb: \0\n", "t").problems
    assert str(problem) == "t:2: binary data (NUL character at offset 8); a manifest must be text"


def test_control_characters_are_refused_with_their_line() -> None:
    (problem,) = load_text("a: 1\nb: \x07\n", "t").problems
    assert str(problem) == "t:2: invalid character U+0007 (control characters are not allowed)"


def test_byte_order_mark_is_accepted() -> None:
    (doc,) = load_text("\ufeffa: 1\n".encode(), "bom.yaml").documents
    assert doc.data == {"a": 1}


def test_documents_before_a_syntax_error_are_kept() -> None:
    result = load_text("a: 1\n---\nb: [\n", "half.yaml")
    assert [d.data for d in result.documents] == [{"a": 1}]
    assert [p.line for p in result.problems] == [4]


def test_item_lists_declare_one_document_per_item() -> None:
    body = '{"items": [\n  {"kind": "Job"},\n  {"kind": "Node",\n   "spec": {"slots": 2}}\n]}'
    result = load_text(body, "body.json", item_lists=True)
    assert [d.data["kind"] for d in result.documents] == ["Job", "Node"]
    assert [d.line for d in result.documents] == [2, 3]
    assert result.documents[1].lines.line_of(("spec", "slots")) == 4
    listed = load_text('[{"kind": "Job"}, 3]', "body.json", item_lists=True)
    assert [d.data for d in listed.documents] == [{"kind": "Job"}]
    assert [p.message for p in listed.problems] == [
        "a manifest document must be a mapping (got a scalar)"
    ]


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    (problem,) = load_file(tmp_path / "gone.yaml", display="gone.yaml").problems
    assert str(problem).startswith("gone.yaml:1: cannot read: ")


def test_problem_text() -> None:
    assert str(Problem("a.yaml", 3, "spec.command[2]", "must be a string")) == (
        "a.yaml:3: spec.command[2]: must be a string"
    )
    assert str(Problem("a.yaml", 1, "", "YAML syntax error: x")) == "a.yaml:1: YAML syntax error: x"


def test_field_paths_are_dotted_with_indexes() -> None:
    assert format_field(("spec", "command", 3)) == "spec.command[3]"
    assert format_field(("metadata", "labels", "ffrtmp.io/zone")) == (
        'metadata.labels["ffrtmp.io/zone"]'
    )
    assert format_field(()) == ""


def test_line_map_rooted_at() -> None:
    lines = LineMap({(): 1, ("items",): 1, ("items", 0): 2, ("items", 0, "a"): 3})
    assert lines.rooted_at(("items", 0)).line_of(("a",)) == 3
    assert lines.rooted_at(("items", 0)).line_of(()) == 2


def test_line_map_children_match_rooted_at() -> None:
    lines = LineMap(
        {(): 1, (0,): 2, (0, "a"): 3, (1,): 4, (1, "b", 0): 5},
        {(0, "a"): 3, (1, "b"): 5},
    )
    children = lines.children()
    assert set(children) == {0, 1}
    for head, child in children.items():
        assert child == lines.rooted_at((head,))


def test_item_list_documents_keep_their_own_lines() -> None:
    text = '[\n{"kind": "Job",\n "metadata": {"name": "a"}},\n{"kind": "Job",\n "metadata": {"name": "b"}}\n]'
    docs = load_text(text, "<body>", item_lists=True).documents
    assert [d.line for d in docs] == [2, 4]
    assert [d.lines.line_of(("metadata", "name")) for d in docs] == [3, 5]
