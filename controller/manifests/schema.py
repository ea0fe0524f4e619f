"""The manifest kinds (Job, Node, Scenario): strict models, placeholders and friendly errors."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from controller.domain.states import Priority
from controller.manifests.loader import Document, FieldPath, LineMap, Problem, format_field

API_VERSION = "ffrtmp.io/v1"
KINDS = ("Job", "Node", "Scenario")

NAME_MAX = 63
NAME_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_NAME_PATTERN = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_PREFIX_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
LABEL_PREFIX_MAX = 253
PLACEHOLDER_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"

_NAME = re.compile(NAME_PATTERN)
_LABEL_NAME = re.compile(LABEL_NAME_PATTERN)
_LABEL_PREFIX = re.compile(LABEL_PREFIX_PATTERN)
_PLACEHOLDER = re.compile(PLACEHOLDER_PATTERN)
# `{{` and `}}` are literal braces, `{...}` a placeholder, any other brace is unbalanced.
_BRACE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

Scalar = str | int | float | bool
"""A parameter or default value."""


class PlaceholderError(ValueError):
    """A command with a malformed placeholder, or rendered without a value for one."""

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.missing = frozenset(missing)


# --- names, labels and placeholders ------------------------------------------------------


def check_name(value: str) -> str:
    """Return `value` if it is a valid object name, else raise ValueError saying why."""
    if len(value) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters (got {len(value)})")
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be lowercase letters, digits and '-', starting and ending with a letter "
            f"or digit (got {value!r})"
        )
    return value


def check_label_key(key: str) -> str:
    """Return `key` if it is a valid label key (`[prefix/]name`), else raise ValueError."""
    prefix, slash, name = key.rpartition("/")
    if slash and (
        not prefix or len(prefix) > LABEL_PREFIX_MAX or not _LABEL_PREFIX.fullmatch(prefix)
    ):
        raise ValueError(
            f"invalid label key {key!r}: the prefix before '/' must be lowercase letters, "
            "digits, '-' and '.'"
        )
    if len(name) > NAME_MAX or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"invalid label key {key!r}: at most {NAME_MAX} letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return key


def check_label_value(value: str) -> str:
    """Return `value` if it is a valid label value (may be empty), else raise ValueError."""
    if value and (len(value) > NAME_MAX or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(
            f"invalid label value {value!r}: at most {NAME_MAX} letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit"
        )
    return value


def check_parameter_name(key: str) -> str:
    """Return `key` if it can name a placeholder, else raise ValueError."""
    if len(key) > NAME_MAX or not _PLACEHOLDER.fullmatch(key):
        raise ValueError(
            f"invalid parameter name {key!r}: letters, digits, '_' and '-', "
            "starting with a letter or '_'"
        )
    return key


def _segments(arg: str) -> list[tuple[str, str | None]]:
    """Split one argument into (literal text, placeholder name or None) pieces."""
    out: list[tuple[str, str | None]] = []
    literal, pos = "", 0
    for match in _BRACE_TOKEN.finditer(arg):
        literal += arg[pos : match.start()]
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
        elif token in ("{", "}"):
            raise PlaceholderError(
                f"unbalanced {token!r} in {arg!r} (write {token * 2!r} for a literal brace)"
            )
        else:
            name = match.group(1)
            if not _PLACEHOLDER.fullmatch(name):
                raise PlaceholderError(
                    f"invalid placeholder {token!r} in {arg!r} (a placeholder is {{name}}: "
                    "letters, digits, '_' and '-', starting with a letter or '_')"
                )
            out.append((literal, name))
            literal = ""
    out.append((literal + arg[pos:], None))
    return out


def placeholders(command: Sequence[str]) -> set[str]:
    """Names of the `{name}` placeholders in an argv; PlaceholderError if one is malformed."""
    return {name for arg in command for _, name in _segments(arg) if name is not None}


def render_value(value: Scalar) -> str:
    """A parameter value as it appears in an argument (`true`/`false` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_command(command: Sequence[str], values: Mapping[str, Scalar]) -> list[str]:
    """Substitute placeholders in an argv (one pass, no shell); PlaceholderError if missing."""
    missing = placeholders(command) - set(values)
    if missing:
        raise PlaceholderError(_missing_message(missing), missing)
    return [
        "".join(
            text + (render_value(values[name]) if name is not None else "")
            for text, name in _segments(arg)
        )
        for arg in command
    ]


def _missing_message(missing: Iterable[str]) -> str:
    names = sorted(missing)
    noun = "placeholder" if len(names) == 1 else "placeholders"
    return f"missing value for {noun} " + ", ".join(f"{{{n}}}" for n in names)


# --- field types -------------------------------------------------------------------------


def _validate_scalar(value: Any) -> Scalar:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number (got {value})")
        return value
    raise ValueError(f"must be a string, number or boolean (got {_describe(value)})")


def _validate_arg(value: str) -> str:
    try:
        _segments(value)
    except PlaceholderError as exc:
        raise ValueError(str(exc)) from None
    return value


_LABEL_KEY_SCHEMA = {"type": "string", "maxLength": LABEL_PREFIX_MAX + 1 + NAME_MAX}
_LABEL_VALUE_SCHEMA = {"type": "string", "maxLength": NAME_MAX, "pattern": f"^({LABEL_NAME_PATTERN})?$"}

Name = Annotated[
    str,
    Strict(),
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "maxLength": NAME_MAX, "pattern": f"^{NAME_PATTERN}$"}),
]
LabelKey = Annotated[str, Strict(), AfterValidator(check_label_key), WithJsonSchema(_LABEL_KEY_SCHEMA)]
LabelValue = Annotated[
    str, Strict(), AfterValidator(check_label_value), WithJsonSchema(_LABEL_VALUE_SCHEMA)
]
Labels = dict[LabelKey, LabelValue]
ParameterName = Annotated[
    str,
    Strict(),
    AfterValidator(check_parameter_name),
    WithJsonSchema({"type": "string", "pattern": f"^{PLACEHOLDER_PATTERN}$"}),
]
ScalarValue = Annotated[
    Scalar,
    PlainValidator(_validate_scalar),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
Parameters = dict[ParameterName, ScalarValue]
Argument = Annotated[str, Strict(), AfterValidator(_validate_arg)]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
ExitCode = Annotated[int, Strict(), Field(ge=1, le=255)]


class _Strict(BaseModel):
    """Manifest mappings: camelCase keys only, unknown keys refused, no type coercion."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """An explicit `null` on an optional field means "not set" (as kubectl reads it)."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        optional = _optional_fields(cls)
        return {k: v for k, v in data.items() if not (v is None and k in optional)}


@cache
def _optional_fields(model: type[BaseModel]) -> frozenset[str]:
    """The names, as written in a manifest, of a model's optional fields."""
    return frozenset(f.alias or n for n, f in model.model_fields.items() if not f.is_required())


class Metadata(_Strict):
    """An object's name and labels."""

    name: Name
    labels: Labels = Field(default_factory=dict)


class ScenarioSpec(_Strict):
    """A command template and what it needs."""

    command: Annotated[list[Argument], Field(min_length=1)]
    defaults: Parameters = Field(default_factory=dict)
    expected_duration_seconds: Seconds | None = None
    requires: Labels = Field(default_factory=dict)

    @field_validator("command", mode="before")
    @classmethod
    def _argv_not_shell(cls, value: Any) -> Any:
        """A string here is a shell command line; we never run a shell."""
        if isinstance(value, str):
            raise ValueError("must be a list of arguments (argv), not a shell string")
        return value

    @field_validator("command")
    @classmethod
    def _program_named(cls, value: list[str]) -> list[str]:
        """The first argument names the program to run."""
        if not value[0].strip():
            raise ValueError("the first argument (the program) must not be empty")
        return value


class RetryPolicy(_Strict):
    """How a failed attempt is retried."""

    fail_on_exit_codes: list[ExitCode] = Field(default_factory=list)


_NO_RETRY_POLICY = RetryPolicy()
"""The default policy, shared (the models are frozen): building one per Job costs a validation."""


class JobSpec(_Strict):
    """One run of a Scenario with parameters."""

    scenario: Name
    parameters: Parameters = Field(default_factory=dict)
    priority: Annotated[Priority, Strict(False)] = Priority.MEDIUM
    max_retries: Annotated[int, Strict(), Field(ge=0)] | None = None
    expected_duration_seconds: Seconds | None = None
    active_deadline_seconds: Seconds | None = None
    node_selector: Labels = Field(default_factory=dict)
    suspend: bool = False
    retry_policy: RetryPolicy = Field(default_factory=lambda: _NO_RETRY_POLICY)


class NodeSpec(_Strict):
    """A worker's capacity and cordon flag."""

    slots: Annotated[int, Strict(), Field(ge=1)] = 1
    unschedulable: bool = False


class _Object(_Strict):
    api_version: Literal["ffrtmp.io/v1"]
    metadata: Metadata

    @property
    def name(self) -> str:
        """The object's `metadata.name`."""
        return self.metadata.name

    @property
    def labels(self) -> dict[str, str]:
        """The object's `metadata.labels`."""
        return self.metadata.labels


class JobManifest(_Object):
    """A declared Job."""

    kind: Literal["Job"]
    spec: JobSpec


class NodeManifest(_Object):
    """A declared Node."""

    kind: Literal["Node"]
    spec: NodeSpec = Field(default_factory=NodeSpec)


class ScenarioManifest(_Object):
    """A declared Scenario."""

    kind: Literal["Scenario"]
    spec: ScenarioSpec


Manifest = JobManifest | NodeManifest | ScenarioManifest
"""Any declared object."""

_MODELS: dict[str, type[JobManifest] | type[NodeManifest] | type[ScenarioManifest]] = {
    "Job": JobManifest,
    "Node": NodeManifest,
    "Scenario": ScenarioManifest,
}


@dataclass(frozen=True)
class ParsedObject:
    """A valid manifest object and the document it came from."""

    manifest: Manifest
    document: Document

    @property
    def kind(self) -> str:
        """`Job`, `Node` or `Scenario`."""
        return self.manifest.kind

    @property
    def name(self) -> str:
        """The object's name."""
        return self.manifest.name

    @property
    def path(self) -> str:
        """The file (or input) that declared it."""
        return self.document.path

    @property
    def line(self) -> int:
        """The line where its document starts."""
        return self.document.line

    def problem(self, field: FieldPath, message: str) -> Problem:
        """A Problem about this object, at the line of `field`."""
        return Problem(self.path, self.document.lines.line_of(field), format_field(field), message)


# --- pydantic errors as Problems -------------------------------------------------------------


def _describe(value: Any) -> str:
    """A value as a user wrote it in YAML, for 'got ...' in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _bound(value: Any) -> str:
    """A limit from pydantic's error context; a bound of 0 on a float field reads as 0.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _message(error: Mapping[str, Any]) -> str:
    """A pydantic error in the words of the manifest format."""
    kind: str = error["type"]
    got = _describe(error.get("input"))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field missing"
    if kind in _TYPE_WORDS:
        # YAML reads yes/no/on/off/true/false as booleans; a label wants the string.
        hint = "; quote it" if kind == "string_type" and got in ("true", "false") else ""
        return f"must be {_TYPE_WORDS[kind]} (got {got}{hint})"
    if kind == "enum":
        return f"must be one of {', '.join(p.value for p in Priority)} (got {got})"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"must be {expected.replace(' or ', ', ')} (got {got})"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(ctx['ge'])} (got {got})"
    if kind == "greater_than":
        return f"must be greater than {_bound(ctx['gt'])} (got {got})"
    if kind == "less_than_equal":
        return f"must be at most {_bound(ctx['le'])} (got {got})"
    if kind == "too_short":
        return "must not be empty"
    if kind == "finite_number":
        return f"must be a finite number (got {got})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _problems(exc: ValidationError, doc: Document) -> list[Problem]:
    """Each pydantic error as a Problem at the line of the offending value (or mapping)."""
    out: list[Problem] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        path: FieldPath = tuple(p for p in loc if p != "[key]")
        kind = error["type"]
        if kind == "missing":
            line = doc.lines.line_of(path[:-1])
        elif kind == "extra_forbidden" or is_key:
            line = doc.lines.key_line_of(path)
        else:
            line = doc.lines.line_of(path)
        out.append(Problem(doc.path, line, format_field(path), _message(error)))
    return out


def parse_document(doc: Document) -> ParsedObject | list[Problem]:
    """Validate one document against its kind; the object, or the problems found."""
    kind = doc.data.get("kind")
    if "kind" not in doc.data:
        return [Problem(doc.path, doc.line, "kind", "required field missing")]
    if not isinstance(kind, str) or kind not in _MODELS:
        return [
            Problem(
                doc.path,
                doc.lines.line_of(("kind",)),
                "kind",
                f"must be one of {', '.join(KINDS)} (got {_describe(kind)})",
            )
        ]
    try:
        manifest = _MODELS[kind].model_validate(doc.data)
    except ValidationError as exc:
        return _problems(exc, doc)
    return ParsedObject(manifest, doc)


def parse_data(data: Mapping[str, Any], path: str = "<input>") -> ParsedObject | list[Problem]:
    """Validate a manifest given as plain data (no source text: problems are at line 1)."""
    return parse_document(Document(path, 0, 1, dict(data), LineMap({})))


# --- judging a Job against its Scenario ------------------------------------------------------


def job_values(job: JobSpec, scenario: ScenarioSpec) -> dict[str, Scalar]:
    """The placeholder values of a job: its parameters merged over the scenario's defaults."""
    return {**scenario.defaults, **job.parameters}


def missing_placeholders(job: JobSpec, scenario: ScenarioSpec) -> set[str]:
    """Placeholders of the scenario's command that the job leaves without a value."""
    return placeholders(scenario.command) - set(job_values(job, scenario))


def job_command(job: JobSpec, scenario: ScenarioSpec) -> list[str]:
    """The argv a worker runs for this job; PlaceholderError if a value is missing."""
    return render_command(scenario.command, job_values(job, scenario))


def check_job_placeholders(job: ParsedObject, scenario: ScenarioManifest) -> Problem | None:
    """A Problem when the Job leaves a placeholder of its Scenario without a value."""
    if not isinstance(job.manifest, JobManifest):
        raise TypeError(f"{job.kind}/{job.name} is not a Job")
    missing = missing_placeholders(job.manifest.spec, scenario.spec)
    if not missing:
        return None
    where: FieldPath = ("spec", "parameters")
    if not job.document.lines.has(where):
        where = ("spec", "scenario")
    return job.problem(where, f"{_missing_message(missing)} of scenario '{scenario.name}'")


# --- identity and schema -----------------------------------------------------------------


def spec_hash(manifest: Manifest) -> str:
    """sha256 of a canonical JSON of what the object declares (kind, metadata, spec)."""
    # Defaults are filled in, so writing a default out (`priority: medium`) is no change.
    declared = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    return hashlib.sha256(_CANONICAL.encode(declared).encode("utf-8")).hexdigest()


# One encoder for every hash (json.dumps builds one per call); a model dump has no cycles.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def json_schema() -> dict[str, Any]:
    """One JSON Schema (draft 2020-12) of the three manifest kinds, for editors and CI."""
    adapter: TypeAdapter[Manifest] = TypeAdapter(
        Annotated[Manifest, Field(discriminator="kind")]
    )
    schema = adapter.json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ffrtmp.io/schemas/v1/manifest.json",
        "title": "ffrtmp manifest (Job, Node or Scenario)",
        **schema,
    }

