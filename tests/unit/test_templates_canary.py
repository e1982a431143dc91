"""No error from the template engine ever carries a value."""

from __future__ import annotations

import pytest

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import Encoding, compile_template, scan_template

CANARY = "CANARY-9f2c41-must-never-appear"


def assert_clean(error: InvalidArgument) -> None:
    texts = [error.message, str(error), repr(error), *map(str, error.args)]
    texts += [*error.metadata.keys(), *error.metadata.values()]
    for text in texts:
        assert CANARY not in text
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("encoding", "template", "value", "reason"),
    [
        (
            Encoding.HEADER,
            "Bearer {{secret:api_key}}",
            CANARY + "\r\nX-Evil: 1",
            "INVALID_HEADER_VALUE",
        ),
        (Encoding.HEADER, "{{input.x}}", "\x00" + CANARY, "INVALID_HEADER_VALUE"),
        (Encoding.HEADER, "{{config:x}}", CANARY + "\n", "INVALID_HEADER_VALUE"),
        (Encoding.URL, "https://h/{{secret:api_key}}", CANARY + "\ud800", "INVALID_VALUE"),
        (Encoding.URL, "https://h/?k={{input.x}}", "\udfff" + CANARY, "INVALID_VALUE"),
        (Encoding.FORM, "a={{secret:k}}", CANARY + "\ud800", "INVALID_VALUE"),
    ],
)
@pytest.mark.parametrize("field", ["", "headers[Authorization]"])
def test_render_errors_never_carry_the_value(
    encoding: Encoding, template: str, value: str, reason: str, field: str
) -> None:
    compiled = compile_template(template, encoding)
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(lambda kind, name: value, field=field)
    assert caught.value.reason == reason
    assert caught.value.message.startswith(f"{field}: " if field else "the value of ")
    assert_clean(caught.value)


def test_dot_segment_error_names_the_placeholder_only() -> None:
    compiled = compile_template("https://h/a/{{input.id}}/b", Encoding.URL)
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(lambda kind, name: "..")
    assert caught.value.message == "the value of {{input.id}} makes a URL path segment '.' or '..'"


@pytest.mark.parametrize(
    ("encoding", "template"),
    [
        (Encoding.JSON, '{"a": "' + CANARY + '" "{{secret:x}}"}'),
        (Encoding.JSON, '{"a": ' + CANARY + "}"),
        (Encoding.JSON, '{"' + CANARY + '": {{secret:x}}}'),
        (Encoding.HEADER, CANARY + "\r\n{{secret:x}}"),
        (Encoding.URL, CANARY + "/x?{{secret:x}}"),
        (Encoding.URL, "ht tp" + CANARY + "://h/"),
        (Encoding.URL, "https://" + CANARY + "{{secret:x}}/"),
        (99, CANARY),
    ],
)
def test_template_errors_do_not_echo_literal_template_text(
    encoding: Encoding | int, template: str
) -> None:
    """Admins sometimes paste a real key into a template; errors quote at most
    the placeholder itself, never the surrounding literal text."""
    _, problems = scan_template(template, encoding)
    assert problems
    for problem in problems:
        assert CANARY not in problem.message
        assert CANARY not in problem.placeholder
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, encoding, field="body")
    assert_clean(caught.value)
