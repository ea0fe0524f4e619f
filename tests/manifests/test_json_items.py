"""One-line JSON item lists (what API clients send) read as the careful YAML load reads them."""

from __future__ import annotations

import json

import pytest

from controller.manifests import loader
from controller.manifests.validate import validate_texts


def job(name: str, **spec: object) -> dict[str, object]:
    return {"apiVersion": "ffrtmp.io/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"scenario": "enc", **spec}}


BODIES = [
    {"items": [job("a", parameters={"n": 1, "f": 1.5, "s": "x", "b": True, "z": None}), job("b")]},
    [job("c", priority="live", nodeSelector={"zone": "eu"})],
    {"items": []},
    [],
    {"items": [job("d", parameters={"list": [1, [2, [3]]], "unicode": "é\u2603", "esc": "a\\nb\"q"})]},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_json_reading_matches_the_careful_one(body: object) -> None:
    text = json.dumps(body)
    quick = loader._load_json_line(text, "body")
    careful = loader._load_careful(text, "body", item_lists=True)
    assert quick is not None and not careful.problems
    assert [(d.index, d.data) for d in quick] == [(d.index, d.data) for d in careful.documents]
    assert [d.line for d in quick] == [d.line for d in careful.documents]
    assert [d.lines for d in quick] == [d.lines for d in careful.documents]


@pytest.mark.parametrize("text", [
    '{"items": [{"kind": "Job", "kind": "Job"}]}',  # a duplicate key
    '[{"kind": "Job", "spec": {"x": 1e5}}]',  # a string to YAML 1.1
    '[{"kind": "Job", "spec": {"x": NaN}}]',
    '[{"kind": "Job"}, 3]',  # an item that is not a mapping
    '{"items": [\n{"kind": "Job"}]}',  # several lines: the careful load knows the lines
    "[" * 150 + "]" * 150,  # deeper than the careful load allows
    "kind: Job",
])
def test_anything_the_yaml_reading_judges_differently_is_left_to_it(text: str) -> None:
    assert loader._load_json_line(text, "body") is None


def test_an_error_in_a_json_body_still_points_at_its_field() -> None:
    body = json.dumps({"items": [job("a"), job("b", priority="urgent")]})
    report = validate_texts({"body": body}, item_lists=True)
    (problem,) = report.problems
    assert (problem.line, problem.field) == (1, "spec.priority")
    assert [o.name for o in report.objects] == ["a"]
    pretty = json.dumps({"items": [job("a"), job("b", priority="urgent")]}, indent=1)
    (problem,) = validate_texts({"body": pretty}, item_lists=True).problems
    assert problem.field == "spec.priority" and problem.line > 1


def test_surrogate_escapes_are_left_to_the_careful_load() -> None:
    text = json.dumps([job("a", parameters={"\U00010000": None})])
    assert "\\ud800" in text
    assert loader._load_json_line(text, "body") is None
