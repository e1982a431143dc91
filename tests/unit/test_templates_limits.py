"""CPU bounds of one request: limits are checked while scanning, each distinct value
is encoded once per request, and the rendered size is known before anything is built."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import vaultsvc.templates.compiler as compiler_module
from vaultsvc.errors import InvalidArgument, ResourceExhausted
from vaultsvc.templates import (
    MAX_PROBLEMS,
    CompiledTemplate,
    Encoding,
    PlaceholderKind,
    compile_template,
    find_placeholders,
    render_fields,
    scan_template,
)
from vaultsvc.templates.encodings import ValueMode


def test_compile_stops_at_the_first_placeholder_over_the_cap() -> None:
    # The malformed placeholder after the 1001st is never reached: the scan stops first.
    template = "{{input.a}}" * 1001 + "{{secret:}}"
    with pytest.raises(ResourceExhausted) as caught:
        compile_template(template, Encoding.RAW, max_placeholders=1000)
    assert caught.value.reason == "TOO_MANY_PLACEHOLDERS"
    assert (
        len(
            compile_template("{{input.a}}" * 1000, Encoding.RAW, max_placeholders=1000).placeholders
        )
        == 1000
    )


def test_the_cap_applies_to_large_uncached_templates_too() -> None:
    template = "x" * 20_000 + "{{input.a}}" * 11 + "{{secret:}}"
    with pytest.raises(ResourceExhausted) as caught:
        compile_template(template, Encoding.URL, max_placeholders=10)
    assert caught.value.reason == "TOO_MANY_PLACEHOLDERS"
    with pytest.raises(ResourceExhausted):
        scan_template(template, Encoding.URL, max_placeholders=10)
    with pytest.raises(ResourceExhausted):
        find_placeholders(template, max_placeholders=10)


def test_a_cached_template_still_honours_a_smaller_cap() -> None:
    template = "https://h.example/?" + "{{input.a}}" * 5
    assert len(compile_template(template, Encoding.URL).placeholders) == 5
    with pytest.raises(ResourceExhausted):
        compile_template(template, Encoding.URL, max_placeholders=4)


def test_scanning_stops_after_max_problems_malformed_placeholders() -> None:
    template = "{{secret:" * (MAX_PROBLEMS + 1) + "{{secret:late}}"
    compiled, problems = scan_template(template, Encoding.RAW)
    assert compiled is None
    assert len(problems) == MAX_PROBLEMS
    # References past the point where scanning gave up are not looked for either.
    assert find_placeholders(template) == ()
    assert [p.name for p in find_placeholders("{{secret:" * 3 + "{{secret:early}}")] == ["early"]


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[ValueMode, str]]]:
    calls: list[tuple[ValueMode, str]] = []
    real = compiler_module.encode_value

    def counting(mode: ValueMode, value: str, *args: object, **kwargs: object) -> str:
        calls.append((mode, value))
        return real(mode, value, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compiler_module, "encode_value", counting)
    yield calls


def test_each_distinct_value_is_encoded_once_per_request(
    encode_calls: list[tuple[ValueMode, str]],
) -> None:
    url = compile_template("https://h.example/?a=" + "{{input.x}}{{input.y}}" * 500, Encoding.URL)
    form = compile_template("{{input.x}}&{{input.z}}", Encoding.FORM)
    values = {"x": "\U0001f600" * 100, "y": "\U0001f600" * 100, "z": "1"}
    out = render_fields(
        [("u", url), ("u2", url), ("f", form)],
        lambda kind, name: values[name],
        max_chars=1 << 24,
    )
    assert [key for key, _ in out] == ["u", "u2", "f"]
    assert out[0][1] == out[1][1] == "https://h.example/?a=" + "%F0%9F%98%80" * 100_000
    # x and y hold the same value: one PERCENT encoding; x again for FORM, and z.
    assert sorted((mode.name, len(value)) for mode, value in encode_calls) == [
        ("FORM", 1),
        ("FORM", 100),
        ("PERCENT", 100),
    ]


def test_render_of_one_template_encodes_each_value_once(
    encode_calls: list[tuple[ValueMode, str]],
) -> None:
    compiled = compile_template("https://h.example/?q=" + "{{input.x}}" * 1000, Encoding.URL)
    assert compiled.render(lambda kind, name: "\u00e9") == "https://h.example/?q=" + "%C3%A9" * 1000
    assert len(encode_calls) == 1


@pytest.mark.parametrize(
    ("template", "encoding", "value", "size"),
    [
        (
            "https://h.example/?q=" + "{{input.x}}" * 1000,
            Encoding.URL,
            "\U0001f600" * 8000,
            21 + 96_000_000,
        ),
        ("{{input.x}}" * 1000, Encoding.FORM, "a b\u00e9" * 1000, 1000 * 1000 * 9),
        (
            '{"a": "' + "{{input.x}}" * 1000 + '"}',
            Encoding.JSON,
            '"\n\u2028' * 1000,
            9 + 1000 * 1000 * 10,
        ),
        ("Bearer " + "{{input.x}}" * 1000, Encoding.HEADER, "v" * 9000, 7 + 9_000_000),
        ("{{input.x}}" * 1000, Encoding.RAW, "\U0001f600" * 9000, 9_000_000),
    ],
)
def test_rendered_size_is_bounded_before_any_value_is_encoded(
    encode_calls: list[tuple[ValueMode, str]],
    template: str,
    encoding: Encoding,
    value: str,
    size: int,
) -> None:
    compiled = compile_template(template, encoding)
    with pytest.raises(ResourceExhausted) as caught:
        render_fields([("f", compiled)], lambda kind, name: value, max_chars=size - 1)
    assert caught.value.reason == "RESPONSE_TOO_LARGE"
    assert encode_calls == []
    # The computed size is exact: one character more and it renders.
    if size < 20_000_000:
        ((_, rendered),) = render_fields(
            [("f", compiled)], lambda kind, name: value, max_chars=size
        )
        assert len(rendered) == size


def test_the_bound_counts_every_field_of_the_request() -> None:
    compiled = compile_template("{{input.x}}", Encoding.RAW)
    fields: list[tuple[str, CompiledTemplate]] = [(f"f{n}", compiled) for n in range(10)]
    assert len(render_fields(fields, lambda kind, name: "abc", max_chars=30)) == 10
    with pytest.raises(ResourceExhausted):
        render_fields(fields, lambda kind, name: "abc", max_chars=29)


def test_an_unencodable_value_is_still_invalid_not_too_large() -> None:
    compiled = compile_template("https://h.example/{{input.x}}", Encoding.URL)
    with pytest.raises(InvalidArgument) as caught:
        render_fields([("f", compiled)], lambda kind, name: "\ud800", max_chars=100)
    assert caught.value.reason == "INVALID_VALUE"


def test_lookup_is_called_once_per_distinct_placeholder_per_request() -> None:
    calls: list[tuple[PlaceholderKind, str]] = []

    def lookup(kind: PlaceholderKind, name: str) -> str:
        calls.append((kind, name))
        return "v"

    compiled = compile_template("{{input.x}}{{secret:s}}{{input.x}}", Encoding.RAW)
    render_fields([("a", compiled), ("b", compiled)], lookup, max_chars=100)
    assert sorted(calls, key=str) == sorted(
        [(PlaceholderKind.INPUT, "x"), (PlaceholderKind.SECRET, "s")], key=str
    )
