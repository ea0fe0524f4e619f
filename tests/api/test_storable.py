"""`storable` judges like the plain recursive definition, at every depth."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.schemas import MAX_DEPTH, MAX_INT, storable


def reference(value: Any, depth: int = 0) -> str | None:
    """The rule as first written: one call per value."""
    if depth > MAX_DEPTH:
        return "nested too deeply"
    if isinstance(value, str):
        if "\x00" in value:
            return "strings must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "strings must be valid Unicode (no lone surrogates)"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -MAX_INT - 1 <= value <= MAX_INT else "integers must fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = reference(key, depth + 1) or reference(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for item in value:
            problem = reference(item, depth + 1)
            if problem:
                return problem
    return None


TEXT = st.text(st.sampled_from(["a", "\x00", "\ud800", "é", "b"]), max_size=4)
LEAF = (TEXT | st.integers(-(2**70), 2**70) | st.booleans() | st.none()
        | st.floats(allow_nan=True, allow_infinity=True))
TREE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
                    | st.tuples(inner), max_leaves=40)


def nested(levels: int, value: Any) -> Any:
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@settings(max_examples=400, deadline=None)
@given(TREE, st.integers(0, MAX_DEPTH + 4))
def test_storable_matches_the_reference(value: Any, levels: int) -> None:
    assert storable(value) == reference(value)
    assert storable(value, levels) == reference(value, levels)
    deep = nested(levels, value)  # around the depth limit
    assert storable(deep) == reference(deep)
