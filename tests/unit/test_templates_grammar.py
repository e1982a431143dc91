"""Placeholder grammar: what is a placeholder, what is malformed, what is literal."""

from __future__ import annotations

import pytest

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import (
    CACHEABLE_TEMPLATE_LENGTH,
    MAX_PROBLEMS,
    MAX_TEMPLATE_BYTES,
    CompiledTemplate,
    Encoding,
    Placeholder,
    PlaceholderKind,
    compile_template,
    scan_template,
)

SECRET = PlaceholderKind.SECRET
CONFIG = PlaceholderKind.CONFIG
INPUT = PlaceholderKind.INPUT


def echo(kind: PlaceholderKind, name: str) -> str:
    """A lookup that writes back what was asked, to see what render substituted."""
    return f"<{kind.value}:{name}>"


def raw(template: str) -> CompiledTemplate:
    return compile_template(template, Encoding.RAW)


def malformed(template: str) -> None:
    compiled, problems = scan_template(template, Encoding.RAW)
    assert compiled is None
    assert [p.reason for p in problems] == ["MALFORMED_PLACEHOLDER"]
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, Encoding.RAW)
    assert caught.value.reason == "MALFORMED_PLACEHOLDER"


@pytest.mark.parametrize(
    ("template", "kind", "name"),
    [
        ("{{secret:x}}", SECRET, "x"),
        ("{{secret:Orders_API-key9}}", SECRET, "Orders_API-key9"),
        ("{{config:api_base}}", CONFIG, "api_base"),
        ("{{input.order_id}}", INPUT, "order_id"),
        ("{{input.9lives}}", INPUT, "9lives"),
        ("{{input._private}}", INPUT, "_private"),
        ("{{input.customer.address.zip}}", INPUT, "customer.address.zip"),
        ("{{input.a-b..c}}", INPUT, "a-b..c"),
        ("{{ secret:x }}", SECRET, "x"),
        ("{{    config:k}}", CONFIG, "k"),
        ("{{secret:x      }}", SECRET, "x"),
        ("{{\tsecret:x\t}}", SECRET, "x"),
        ("{{secret:" + "a" * 128 + "}}", SECRET, "a" * 128),
        ("{{input." + "1" * 128 + "}}", INPUT, "1" * 128),
    ],
)
def test_valid_placeholders(template: str, kind: PlaceholderKind, name: str) -> None:
    compiled = raw(template)
    assert compiled.placeholders == (Placeholder(kind, name, 0, len(template), template),)
    assert compiled.render(echo) == f"<{kind.value}:{name}>"


@pytest.mark.parametrize(
    "template",
    [
        "{{secret:}}",
        "{{config:}}",
        "{{input.}}",
        "{{secret: x}}",
        "{{input. x}}",
        "{{secret:x}",
        "{{secret:x",
        "{{secret:",
        "{{ input.",
        "{{secret:x }",
        "{{secret:a b}}",
        "{{secret:a$b}}",
        "{{secret:1abc}}",
        "{{secret:_abc}}",
        "{{secret:-abc}}",
        "{{secret:a.b}}",
        "{{config:a.b}}",
        "{{input.-x}}",
        "{{input..x}}",
        "{{input.a/b}}",
        "{{input.é}}",
        "{{secret:" + "a" * 129 + "}}",
        "{{input." + "a" * 129 + "}}",
        "{{secret:" + "a" * 5000,
        "text {{secret:x}} then {{secret:bad name}} end",
        "{{secret:x}}{{secret:x}",
        "{{secret:x}\n}",
    ],
)
def test_malformed_placeholders(template: str) -> None:
    malformed(template)


@pytest.mark.parametrize(
    "template",
    [
        "{{foo}}",
        "{{ Secret:x }}",
        "{{SECRET:x}}",
        "{{secretx}}",
        "{{secret.x}}",
        "{{input:x}}",
        "{{config.x}}",
        "{{ inputs.x }}",
        "{secret:x}",
        "{ {secret:x}}",
        "{{}}",
        "}}{{",
        "{{",
        "}}",
        "{{{{",
        "plain text, no braces at all",
        "",
    ],
)
def test_other_double_braces_are_literal(template: str) -> None:
    compiled = raw(template)
    assert compiled.placeholders == ()
    assert compiled.render(echo) == template


def test_left_to_right_scan_with_extra_braces() -> None:
    compiled = raw("{{{secret:x}}}")
    assert compiled.placeholders == (Placeholder(SECRET, "x", 1, 13, "{{secret:x}}"),)
    assert compiled.render(echo) == "{<secret:x>}"
    assert raw("{{{{secret:x}}}}").render(echo) == "{{<secret:x>}}"
    assert raw("{{foo}}{{secret:x}}").render(echo) == "{{foo}}<secret:x>"


def test_malformed_placeholder_does_not_hide_the_next_one() -> None:
    compiled, problems = scan_template("{{secret:{{secret:x}}", Encoding.RAW)
    assert compiled is None
    assert [(p.reason, p.offset) for p in problems] == [("MALFORMED_PLACEHOLDER", 0)]


def test_offsets_raw_text_and_names_in_order_of_first_appearance() -> None:
    template = "a{{ input.id }}b{{secret:K}}{{config:base}}{{secret:k}}{{input.id}}{{secret:K}}"
    compiled = raw(template)
    for placeholder in compiled.placeholders:
        assert template[placeholder.start : placeholder.end] == placeholder.raw
    assert compiled.placeholders[0] == Placeholder(INPUT, "id", 1, 15, "{{ input.id }}")
    assert compiled.secret_names == ("K", "k")
    assert compiled.config_keys == ("base",)
    assert compiled.input_names == ("id",)
    assert len(compiled.placeholders) == 6


def test_lookup_is_called_once_per_distinct_placeholder() -> None:
    calls: list[tuple[PlaceholderKind, str]] = []

    def lookup(kind: PlaceholderKind, name: str) -> str:
        calls.append((kind, name))
        return "v"

    result = raw("{{secret:a}}{{ secret:a }}{{input.a}}{{config:a}}{{secret:a}}").render(lookup)
    assert result == "vvvvv"
    assert calls == [(SECRET, "a"), (INPUT, "a"), (CONFIG, "a")]


def test_values_are_never_scanned_again() -> None:
    calls: list[tuple[PlaceholderKind, str]] = []

    def lookup(kind: PlaceholderKind, name: str) -> str:
        calls.append((kind, name))
        return "{{secret:stripe_key}}" if kind is INPUT else "s3cr3t"

    result = raw("id={{input.id}} key={{secret:api}}").render(lookup)
    assert result == "id={{secret:stripe_key}} key=s3cr3t"
    assert calls == [(INPUT, "id"), (SECRET, "api")]


def test_scan_collects_every_problem_and_compile_raises_the_first() -> None:
    template = "{{secret:a b}} ok {{input.}} {{config:x}} {{secret:"
    compiled, problems = scan_template(template, Encoding.RAW, field="headers[0]")
    assert compiled is None
    assert [p.offset for p in problems] == [0, 18, 42]
    assert all(p.reason == "MALFORMED_PLACEHOLDER" for p in problems)
    assert all(p.message.startswith("headers[0]: ") for p in problems)
    assert problems[0].placeholder == "{{secret:a b}}"
    assert problems[0].name == "a"
    assert problems[1].placeholder == "{{input.}}"
    assert problems[2].placeholder == "{{secret:"
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, Encoding.RAW, field="headers[0]")
    assert caught.value.reason == "MALFORMED_PLACEHOLDER"
    assert caught.value.message == problems[0].message
    assert caught.value.metadata == {
        "field": "headers[0]",
        "offset": "0",
        "placeholder": "{{secret:a b}}",
    }


def test_scan_of_a_good_template_has_no_problems() -> None:
    compiled, problems = scan_template("x {{secret:a}}", 1)
    assert problems == []
    assert compiled is not None
    assert compiled.secret_names == ("a",)


@pytest.mark.parametrize("number", [-1, 6, 99, 2**31])
def test_unknown_encoding(number: int) -> None:
    compiled, problems = scan_template("x", number)
    assert compiled is None
    assert [p.reason for p in problems] == ["INVALID_ENCODING"]
    with pytest.raises(InvalidArgument) as caught:
        compile_template("x", number, field="url")
    assert caught.value.reason == "INVALID_ENCODING"
    assert caught.value.message.startswith("url: ")


def test_unknown_encoding_still_reports_grammar_problems() -> None:
    _, problems = scan_template("{{secret:}}", 42)
    assert [p.reason for p in problems] == ["INVALID_ENCODING", "MALFORMED_PLACEHOLDER"]


def test_encoding_accepts_plain_ints() -> None:
    assert compile_template("x", 2 + 2 - 4).encoding is Encoding.UNSPECIFIED
    assert compile_template('"{{input.a}}"', 4).encoding is Encoding.JSON


def test_small_templates_are_cached_and_large_ones_are_not() -> None:
    small = "cached {{secret:a}}"
    assert compile_template(small, Encoding.RAW) is compile_template(small, 1)
    large = "x" * (CACHEABLE_TEMPLATE_LENGTH + 1) + "{{secret:a}}"
    first = compile_template(large, Encoding.RAW)
    assert compile_template(large, Encoding.RAW) is not first
    assert first.render(lambda kind, name: "v").endswith("xv")


def test_template_size_limit() -> None:
    at_limit = "a" * MAX_TEMPLATE_BYTES
    assert raw(at_limit).placeholders == ()
    for too_large in ("a" * (MAX_TEMPLATE_BYTES + 1), "é" * (MAX_TEMPLATE_BYTES // 2 + 1)):
        with pytest.raises(InvalidArgument) as caught:
            raw(too_large)
        assert caught.value.reason == "TEMPLATE_TOO_LARGE"


# A quadratic scan of these megabyte inputs would run for many minutes; the
# timeout turns such a regression into a failure instead of a hung run.
ADVERSARIAL = {
    "prefixes": "{{secret:" * ((MAX_TEMPLATE_BYTES - 16) // 9),
    "prefixes-with-space": "{{ input." * ((MAX_TEMPLATE_BYTES - 16) // 9),
    "braces": "{" * (MAX_TEMPLATE_BYTES - 16),
    "open-then-spaces": "{{" + " " * (MAX_TEMPLATE_BYTES - 16),
    "long-name": "{{secret:" + "a" * (MAX_TEMPLATE_BYTES - 16),
    "unclosed-then-many": ("{{secret:a " + "}" * 3) * ((MAX_TEMPLATE_BYTES - 16) // 14),
    "valid": "{{secret:a}}" * ((MAX_TEMPLATE_BYTES - 16) // 12),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("encoding", list(Encoding))
def test_megabyte_adversarial_templates_finish(name: str, encoding: Encoding) -> None:
    template = ADVERSARIAL[name]
    compiled, problems = scan_template(template, encoding)
    assert len(problems) <= MAX_PROBLEMS
    if name == "prefixes":
        assert len(problems) == MAX_PROBLEMS
    if name == "valid" and encoding in (Encoding.RAW, Encoding.HEADER, Encoding.FORM):
        assert compiled is not None
        assert len(compiled.placeholders) == len(template) // 12
        assert compiled.render(lambda kind, name: "") == ""
