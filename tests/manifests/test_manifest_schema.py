"""The manifest kinds: what they accept, their defaults, identity and JSON Schema."""

from __future__ import annotations

import json

from controller.domain.states import Priority
from controller.manifests.loader import load_text
from controller.manifests.schema import (
    JobManifest,
    NodeManifest,
    ParsedObject,
    ScenarioManifest,
    check_job_placeholders,
    check_label_key,
    job_command,
    json_schema,
    parse_data,
    parse_document,
    spec_hash,
)


def _parse(text: str) -> list[ParsedObject]:
    result = load_text(text, "t.yaml")
    assert result.ok, result.problems
    parsed = [parse_document(d) for d in result.documents]
    assert all(isinstance(p, ParsedObject) for p in parsed), parsed
    return [p for p in parsed if isinstance(p, ParsedObject)]


SCENARIO = """
apiVersion: ffrtmp.io/v1
kind: Scenario
metadata: {name: sleep}
spec:
  command: [sleep, "{seconds}"]
  defaults: {seconds: 1}
"""


def test_job_defaults() -> None:
    (job,) = _parse("apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\nspec: {scenario: s}\n")
    assert isinstance(job.manifest, JobManifest)
    spec = job.manifest.spec
    assert (job.kind, job.name, job.path, job.line) == ("Job", "a", "t.yaml", 1)
    assert spec.priority is Priority.MEDIUM
    assert spec.parameters == {} and spec.node_selector == {} and job.manifest.labels == {}
    assert spec.max_retries is None and spec.active_deadline_seconds is None
    assert spec.suspend is False and spec.retry_policy.fail_on_exit_codes == []


def test_node_spec_may_be_left_out() -> None:
    (node,) = _parse("apiVersion: ffrtmp.io/v1\nkind: Node\nmetadata: {name: w1}\n")
    assert isinstance(node.manifest, NodeManifest)
    assert (node.manifest.spec.slots, node.manifest.spec.unschedulable) == (1, False)


def test_null_on_an_optional_field_means_unset() -> None:
    text = "apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a, labels: }\n"
    text += "spec: {scenario: s, maxRetries: null, parameters: ~}\n"
    (job,) = _parse(text)
    assert isinstance(job.manifest, JobManifest)
    assert job.manifest.spec.max_retries is None and job.manifest.spec.parameters == {}


def test_numbers_keep_their_type_and_seconds_take_integers() -> None:
    text = "apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\n"
    text += "spec: {scenario: s, parameters: {fps: 30, rate: 29.97, hd: true, n: '7'},\n"
    text += "       expectedDurationSeconds: 30, activeDeadlineSeconds: 0.5}\n"
    (job,) = _parse(text)
    assert isinstance(job.manifest, JobManifest)
    assert job.manifest.spec.parameters == {"fps": 30, "rate": 29.97, "hd": True, "n": "7"}
    assert job.manifest.spec.expected_duration_seconds == 30.0
    assert job.manifest.spec.active_deadline_seconds == 0.5


def test_label_keys_may_have_a_dns_prefix() -> None:
    assert check_label_key("ffrtmp.io/gpu") == "ffrtmp.io/gpu"
    for bad in ("/gpu", "Ffrtmp.io/gpu", "a/", "-a", "a b", "x" * 64):
        try:
            check_label_key(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_job_command_merges_parameters_over_defaults() -> None:
    scenario, job = _parse(
        SCENARIO + "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\n"
        "spec: {scenario: sleep, parameters: {seconds: 2}}\n"
    )
    assert isinstance(scenario.manifest, ScenarioManifest)
    assert isinstance(job.manifest, JobManifest)
    assert job_command(job.manifest.spec, scenario.manifest.spec) == ["sleep", "2"]
    assert check_job_placeholders(job, scenario.manifest) is None


def test_missing_placeholder_points_at_the_scenario_line_without_parameters() -> None:
    scenario, job = _parse(
        SCENARIO.replace("  defaults: {seconds: 1}\n", "")
        + "---\napiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\nspec:\n  scenario: sleep\n"
    )
    assert isinstance(scenario.manifest, ScenarioManifest)
    problem = check_job_placeholders(job, scenario.manifest)
    assert str(problem) == (
        "t.yaml:12: spec.scenario: missing value for placeholder {seconds} of scenario 'sleep'"
    )


def test_spec_hash_ignores_layout_comments_and_written_defaults() -> None:
    (a,) = _parse("apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\nspec: {scenario: s}\n")
    (b,) = _parse(
        "# comment\nkind: Job\napiVersion: ffrtmp.io/v1\nmetadata:\n  name: a\n"
        "spec:\n  priority: medium\n  scenario: s\n  suspend: false\n"
    )
    (c,) = _parse(
        "apiVersion: ffrtmp.io/v1\nkind: Job\nmetadata: {name: a}\nspec: {scenario: s, priority: high}\n"
    )
    assert spec_hash(a.manifest) == spec_hash(b.manifest)
    assert spec_hash(a.manifest) != spec_hash(c.manifest)
    assert len(spec_hash(a.manifest)) == 64


def test_json_schema_covers_the_three_kinds() -> None:
    schema = json_schema()
    json.dumps(schema)  # serialisable as is
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(schema["discriminator"]["mapping"]) == {"Job", "Node", "Scenario"}
    job_spec = schema["$defs"]["JobSpec"]
    assert job_spec["additionalProperties"] is False
    assert job_spec["required"] == ["scenario"]
    assert {"maxRetries", "nodeSelector", "retryPolicy", "activeDeadlineSeconds"} <= set(
        job_spec["properties"]
    )
    assert schema["$defs"]["Priority"]["enum"] == ["live", "high", "medium", "low", "batch"]
    name = schema["$defs"]["Metadata"]["properties"]["name"]
    assert name["maxLength"] == 63 and name["pattern"].startswith("^[a-z0-9]")
    slots = schema["$defs"]["NodeSpec"]["properties"]["slots"]
    assert (slots["type"], slots["minimum"], slots["default"]) == ("integer", 1, 1)


def test_parse_data_without_source_text() -> None:
    data = {"apiVersion": "ffrtmp.io/v1", "kind": "Job", "metadata": {"name": "a"}, "spec": {}}
    problems = parse_data(data, "<request>")
    assert isinstance(problems, list)
    assert [str(p) for p in problems] == ["<request>:1: spec.scenario: required field missing"]
    data["spec"] = {"scenario": "s", "priority": "high"}
    parsed = parse_data(data)
    assert isinstance(parsed, ParsedObject) and parsed.manifest.spec.priority is Priority.HIGH  # type: ignore[union-attr]
