"""Placeholders in a Scenario's argv, and rendering them without a shell."""

from __future__ import annotations

import pytest

from controller.manifests.schema import PlaceholderError, placeholders, render_command

COMMAND = ["ffmpeg", "-i", "testsrc2=size={resolution}:rate={fps}", "-t", "{duration}", "-"]


def test_placeholders_of_a_command() -> None:
    assert placeholders(COMMAND) == {"resolution", "fps", "duration"}
    assert placeholders(["true"]) == set()


def test_render_substitutes_each_argument() -> None:
    argv = render_command(COMMAND, {"resolution": "640x360", "fps": 29.97, "duration": 2})
    assert argv == ["ffmpeg", "-i", "testsrc2=size=640x360:rate=29.97", "-t", "2", "-"]


def test_doubled_braces_are_literal() -> None:
    command = ["echo", "{{not}} a placeholder {x}", "}}{{"]
    assert placeholders(command) == {"x"}
    assert render_command(command, {"x": 1}) == ["echo", "{not} a placeholder 1", "}{"]


def test_values_are_not_expanded_again_nor_split() -> None:
    # One pass, no shell: a value with braces, spaces or `;` stays one argument as is.
    argv = render_command(["echo", "{msg}"], {"msg": "{other}; rm -rf / $HOME"})
    assert argv == ["echo", "{other}; rm -rf / $HOME"]


def test_booleans_render_as_yaml_words() -> None:
    assert render_command(["x", "{a}", "{b}"], {"a": True, "b": False}) == ["x", "true", "false"]


def test_missing_values_are_all_named() -> None:
    with pytest.raises(PlaceholderError) as caught:
        render_command(COMMAND, {"fps": 30})
    assert caught.value.missing == {"resolution", "duration"}
    assert str(caught.value) == "missing value for placeholders {duration}, {resolution}"


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("{a", "unbalanced '{' in '{a' (write '{{' for a literal brace)"),
        ("a}", "unbalanced '}' in 'a}' (write '}}' for a literal brace)"),
        ("{}", "invalid placeholder '{}' in '{}'"),
        ("{a:>5}", "invalid placeholder '{a:>5}' in '{a:>5}'"),
        ("{0}", "invalid placeholder '{0}' in '{0}'"),
        ("{a.b}", "invalid placeholder '{a.b}' in '{a.b}'"),
    ],
)
def test_malformed_placeholders_are_refused(arg: str, message: str) -> None:
    with pytest.raises(PlaceholderError) as caught:
        placeholders(["x", arg])
    assert str(caught.value).startswith(message)
