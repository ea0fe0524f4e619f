"""Judging manifest files together: each document is valid, names are unique per kind, and
every Job has a value for each placeholder of its Scenario when that Scenario is among them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.manifests.loader import LoadResult, Problem, load_file, load_text
from controller.manifests.schema import (
    JobManifest,
    ParsedObject,
    ScenarioManifest,
    check_job_placeholders,
    parse_document,
)

__all__ = [
    "MANIFEST_SUFFIXES",
    "Problem",
    "Report",
    "is_manifest_name",
    "manifest_files",
    "validate_paths",
    "validate_texts",
]

MANIFEST_SUFFIXES = (".yaml", ".yml")
_LEFTOVER_SUFFIXES = ("~", ".swp")
_NAME_FIELD = ("metadata", "name")


@dataclass(frozen=True)
class Report:
    """The valid objects of a set of manifest files, and every problem found in them."""

    files: tuple[str, ...]
    objects: tuple[ParsedObject, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def is_manifest_name(name: str) -> bool:
    """True for `*.yaml`/`*.yml` names that are not hidden nor editor leftovers (`*~`, `*.swp`)."""
    return (
        name.endswith(MANIFEST_SUFFIXES)
        and not name.startswith(".")  # hidden files, and Emacs lock files `.#*`
        and not name.endswith(_LEFTOVER_SUFFIXES)
    )


def manifest_files(directory: str | Path) -> list[Path]:
    """Manifest files under `directory`, recursively, skipping hidden folders, in path order."""
    root = Path(directory)
    found: list[Path] = []
    # Symlinked sub-folders are not followed (no loops); a symlinked root and symlinked
    # files are, so a git-sync style `manifests -> .rev-abc` works.
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found.extend(Path(folder, n) for n in names if is_manifest_name(n))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _judge(results: Iterable[LoadResult]) -> tuple[list[ParsedObject], list[Problem]]:
    """Judge loaded files together, in the order given (the first declaration of a name
    keeps it); the valid objects and the problems, by path then line."""
    results = list(results)
    problems = [p for r in results for p in r.problems]
    first: dict[tuple[str, str], ParsedObject] = {}
    unique: list[ParsedObject] = []
    for result in results:
        for doc in result.documents:
            parsed = parse_document(doc)
            if isinstance(parsed, list):
                problems.extend(parsed)
                continue
            earlier = first.get((parsed.kind, parsed.name))
            if earlier is not None:
                where = f"{earlier.path}:{earlier.document.lines.line_of(_NAME_FIELD)}"
                problems.append(
                    parsed.problem(
                        _NAME_FIELD,
                        f"duplicate {parsed.kind} name '{parsed.name}' (first declared at {where})",
                    )
                )
                continue
            first[(parsed.kind, parsed.name)] = parsed
            unique.append(parsed)

    scenarios = {
        obj.name: obj.manifest
        for obj in unique
        if isinstance(obj.manifest, ScenarioManifest)
    }
    objects: list[ParsedObject] = []
    for obj in unique:
        # A Job whose Scenario is not among these files is valid: it waits for it.
        if isinstance(obj.manifest, JobManifest) and obj.manifest.spec.scenario in scenarios:
            problem = check_job_placeholders(obj, scenarios[obj.manifest.spec.scenario])
            if problem is not None:
                problems.append(problem)
                continue
        objects.append(obj)

    problems.sort(key=lambda p: (p.path, p.line))
    return objects, problems


def validate_paths(paths: Sequence[str | Path]) -> Report:
    """Judge files and directories (expanded like the watched directory) together."""
    files: dict[Path, str] = {}
    missing: list[Problem] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            candidates = manifest_files(path)
        elif path.exists():
            candidates = [path]
        else:
            missing.append(Problem(str(given), 1, "", "no such file or directory"))
            continue
        for candidate in candidates:
            # The same file named twice (itself and through its folder) is judged once.
            files.setdefault(candidate.resolve(), str(candidate))
    ordered = sorted(files.values())
    objects, problems = _judge(load_file(path) for path in ordered)
    problems = sorted((*problems, *missing), key=lambda p: (p.path, p.line))
    return Report(tuple(ordered), tuple(objects), tuple(problems))


def validate_texts(
    texts: Mapping[str, str | bytes], *, item_lists: bool = False
) -> Report:
    """Judge in-memory manifest texts together, keyed by the name shown in their problems."""
    ordered = sorted(texts)
    objects, problems = _judge(load_text(texts[n], n, item_lists=item_lists) for n in ordered)
    return Report(tuple(ordered), tuple(objects), tuple(problems))
