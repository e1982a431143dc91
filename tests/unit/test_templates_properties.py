"""Hypothesis properties of the template engine: whatever the values, the
result keeps the template's structure and every value comes back exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import (
    CompiledTemplate,
    Encoding,
    PlaceholderKind,
    compile_template,
    scan_template,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNICODE = st.characters(exclude_categories=["Cs"])
SPECIAL_PIECES = [
    *"\r\n\x00\t {}&=#?/\"\\%+.:@~;,[]'<>",
    "\u2028",
    "\u2029",
    "é",
    "😀",
    "{{secret:stripe_key}}",
    "{{ config:base }}",
    "{{input.x}}",
    "{{",
    "}}",
    "..",
    "%2e",
    "%25",
    "&admin=1",
    "\r\nX-Injected: 1",
    "https://evil.example/",
]
VALUES = st.one_of(
    st.text(UNICODE, max_size=40),
    st.lists(
        st.one_of(st.sampled_from(SPECIAL_PIECES), st.text(UNICODE, max_size=3)), max_size=8
    ).map("".join),
)
UNRESERVED = st.text(
    st.sampled_from("ABCXYZabcxyz0189-._~"), max_size=4
)  # literal text that percent-decoding leaves unchanged
# What a header value or template may never hold (C0 but tab, DEL, NEL, U+2028/9).
HEADER_BAD = "".join(chr(c) for c in range(0x20) if c != 0x09) + "\x7f\x85\u2028\u2029"
KINDS = st.sampled_from([PlaceholderKind.SECRET, PlaceholderKind.CONFIG, PlaceholderKind.INPUT])
VALUE_KINDS = st.sampled_from([PlaceholderKind.SECRET, PlaceholderKind.INPUT])


def written(kind: PlaceholderKind, name: str, spaced: bool = False) -> str:
    separator = "." if kind is PlaceholderKind.INPUT else ":"
    pad = " " if spaced else ""
    return "{{" + pad + kind.value + separator + name + pad + "}}"


@dataclass
class Values:
    """Draws a fresh value per placeholder and records every lookup."""

    draw: Callable[[st.SearchStrategy[str]], str]
    table: dict[tuple[PlaceholderKind, str], str] = field(default_factory=dict)
    calls: list[tuple[PlaceholderKind, str]] = field(default_factory=list)

    def placeholder(self, kind: PlaceholderKind, value: str | None = None) -> tuple[str, str]:
        """A new placeholder's text and the value it will resolve to."""
        name = f"v{len(self.table)}"
        drawn = self.draw(VALUES) if value is None else value
        self.table[(kind, name)] = drawn
        return written(kind, name, spaced=len(self.table) % 3 == 0), drawn

    def lookup(self, kind: PlaceholderKind, name: str) -> str:
        self.calls.append((kind, name))
        return self.table[(kind, name)]

    def render(self, compiled: CompiledTemplate) -> str:
        result = compiled.render(self.lookup)
        self.check_lookups(compiled)
        return result

    def check_lookups(self, compiled: CompiledTemplate) -> None:
        """Only the template's own placeholders were looked up, each at most once."""
        assert len(self.calls) == len(set(self.calls))
        assert set(self.calls) <= set(self.table)
        assert {(p.kind, p.name) for p in compiled.placeholders} == set(self.table)
        assert set(compiled.secret_names) == {
            name for kind, name in self.table if kind is PlaceholderKind.SECRET
        }


# ------------------------------------------------------------------ URL


@PROPERTY
@given(st.data())
def test_url_keeps_origin_and_parameter_names_and_decodes_back(data: st.DataObject) -> None:
    values = Values(data.draw)
    scheme = data.draw(st.sampled_from(["http", "https"]))
    host = data.draw(st.sampled_from(["api.example.com", "127.0.0.1", "[::1]", "h-1.example"]))
    port = data.draw(st.one_of(st.none(), st.integers(1, 65535)))
    origin = f"{scheme}://{host}" + (f":{port}" if port else "")

    path_expected: list[str] = []
    path_written: list[str] = []
    dot_segment_from_value = False
    for with_value in data.draw(st.lists(st.booleans(), max_size=4)):
        prefix = data.draw(UNRESERVED)
        text, value = values.placeholder(data.draw(VALUE_KINDS)) if with_value else ("", "")
        if not with_value and not prefix:
            prefix = "p"
        path_written.append(prefix + text)
        path_expected.append(prefix + value)
        dot_segment_from_value |= with_value and prefix + value in (".", "..")

    names = data.draw(
        st.lists(
            st.text(st.sampled_from("abcdefgh_"), min_size=1, max_size=4), unique=True, max_size=4
        )
    )
    query_expected: list[tuple[str, str]] = []
    query_written: list[str] = []
    for name in names:
        prefix = data.draw(UNRESERVED)
        text, value = values.placeholder(data.draw(VALUE_KINDS))
        query_written.append(f"{name}={prefix}{text}")
        query_expected.append((name, prefix + value))

    fragment: tuple[str, str] | None = None
    if data.draw(st.booleans()):
        prefix = data.draw(UNRESERVED)
        text, value = values.placeholder(data.draw(VALUE_KINDS))
        fragment = (prefix + text, prefix + value)

    template = origin + "/" + "/".join(path_written)
    if query_written:
        template += "?" + "&".join(query_written)
    if fragment is not None:
        template += "#" + fragment[0]

    compiled = compile_template(template, Encoding.URL)
    if dot_segment_from_value:
        with pytest.raises(InvalidArgument) as caught:
            compiled.render(values.lookup)
        assert caught.value.reason == "INVALID_URL_VALUE"
        return
    result = values.render(compiled)

    expected_origin = urlsplit(origin + "/")
    parts = urlsplit(result)
    assert (parts.scheme, parts.hostname, parts.port) == (
        expected_origin.scheme,
        expected_origin.hostname,
        expected_origin.port,
    )
    assert parts.netloc == expected_origin.netloc
    assert [unquote(segment) for segment in parts.path.split("/")[1:]] == (path_expected or [""])
    decoded = parse_qsl(parts.query, keep_blank_values=True)
    assert [name for name, _ in decoded] == names
    assert decoded == query_expected
    if fragment is None:
        assert parts.fragment == ""
    else:
        assert unquote(parts.fragment) == fragment[1]


@PROPERTY
@given(st.data())
def test_url_config_base_keeps_its_origin(data: st.DataObject) -> None:
    values = Values(data.draw)
    base_text, _ = values.placeholder(PlaceholderKind.CONFIG, "https://api.example.com:8443")
    path_text, path_value = values.placeholder(data.draw(VALUE_KINDS))
    query_text, query_value = values.placeholder(data.draw(VALUE_KINDS))
    template = f"{base_text}/v1/x{path_text}?q={query_text}"
    result = values.render(compile_template(template, Encoding.URL))
    parts = urlsplit(result)
    assert parts.netloc == "api.example.com:8443"
    assert unquote(parts.path) == "/v1/x" + path_value
    assert parse_qsl(parts.query, keep_blank_values=True) == [("q", query_value)]


# ----------------------------------------------------------------- JSON


@PROPERTY
@given(st.data())
def test_json_result_parses_and_every_field_is_the_raw_value(data: st.DataObject) -> None:
    values = Values(data.draw)
    expected: dict[str, object] = {}
    members: list[str] = []
    for index in range(data.draw(st.integers(0, 4))):
        written_parts: list[str] = []
        expected_parts: list[str] = []
        for with_value in data.draw(st.lists(st.booleans(), min_size=1, max_size=3)):
            literal = data.draw(st.text(UNICODE, max_size=5))
            written_parts.append(json.dumps(literal, ensure_ascii=data.draw(st.booleans()))[1:-1])
            expected_parts.append(literal)
            if with_value:
                text, value = values.placeholder(data.draw(KINDS))
                written_parts.append(text)
                expected_parts.append(value)
        string = '"' + "".join(written_parts) + '"'
        value_expected = "".join(expected_parts)
        if data.draw(st.booleans()):
            members.append(f'"f{index}": [1, {string}, null]')
            expected[f"f{index}"] = [1, value_expected, None]
        else:
            members.append(f'"f{index}" : {string}')
            expected[f"f{index}"] = value_expected
    if data.draw(st.booleans()):
        text, value = values.placeholder(data.draw(KINDS))
        members.append(f'"k{text}": true')
        expected["k" + value] = True
    template = "{" + ", ".join(members) + "}"

    result = values.render(compile_template(template, Encoding.JSON))
    assert json.loads(result) == expected


# --------------------------------------------------------------- HEADER


@PROPERTY
@given(st.data())
def test_header_never_holds_a_control_character(data: st.DataObject) -> None:
    values = Values(data.draw)
    pieces = ["Bearer "]
    expected = "Bearer "
    for _ in range(data.draw(st.integers(1, 3))):
        text, value = values.placeholder(data.draw(KINDS))
        literal = data.draw(st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=4))
        pieces += [text, literal]
        expected += value + literal
    compiled = compile_template("".join(pieces), Encoding.HEADER)
    if any(bad in value for value in values.table.values() for bad in HEADER_BAD):
        with pytest.raises(InvalidArgument) as caught:
            compiled.render(values.lookup)
        error = caught.value
        assert error.reason == "INVALID_HEADER_VALUE"
        for value in values.table.values():
            if any(bad in value for bad in HEADER_BAD):
                assert value not in error.message
                assert value not in str(error)
        return
    result = values.render(compiled)
    assert result == expected
    assert not any(bad in result for bad in HEADER_BAD)


# ----------------------------------------------------------------- FORM


@PROPERTY
@given(st.data())
def test_form_gives_back_the_same_keys_and_the_raw_values(data: st.DataObject) -> None:
    values = Values(data.draw)
    keys = data.draw(
        st.lists(
            st.text(st.sampled_from("abcxyz_-"), min_size=1, max_size=4),
            unique=True,
            min_size=1,
            max_size=5,
        )
    )
    written_pairs: list[str] = []
    expected: list[tuple[str, str]] = []
    for key in keys:
        prefix = data.draw(UNRESERVED)
        suffix = data.draw(UNRESERVED)
        text, value = values.placeholder(data.draw(KINDS))
        written_pairs.append(f"{key}={prefix}{text}{suffix}")
        expected.append((key, prefix + value + suffix))
    result = values.render(compile_template("&".join(written_pairs), Encoding.FORM))
    assert parse_qsl(result, keep_blank_values=True, strict_parsing=True) == expected


# ------------------------------------------------- single pass, any encoding

LITERAL_NO_BRACES = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="{}" + HEADER_BAD), max_size=6
)


@PROPERTY
@given(
    st.data(), st.sampled_from([Encoding.RAW, Encoding.UNSPECIFIED, Encoding.HEADER, Encoding.FORM])
)
def test_only_template_placeholders_are_looked_up(data: st.DataObject, encoding: Encoding) -> None:
    """Values that look like placeholders are output, never looked up."""
    values = Values(data.draw)
    written_parts: list[str] = []
    expected_parts: list[str] = []
    secrets_in_template: list[str] = []
    for _ in range(data.draw(st.integers(0, 5))):
        literal = data.draw(LITERAL_NO_BRACES)
        kind = data.draw(KINDS)
        if kind is PlaceholderKind.INPUT and data.draw(st.booleans()):
            text, value = values.placeholder(kind, "{{secret:stripe_key}}")
        else:
            text, value = values.placeholder(kind)
        if kind is PlaceholderKind.SECRET:
            secrets_in_template.append(text.strip("{} ").split(":", 1)[1])
        written_parts += [literal, text]
        expected_parts += [literal, value]
    template = "".join(written_parts)
    compiled = compile_template(template, encoding)
    assert list(compiled.secret_names) == secrets_in_template
    try:
        result = values.render(compiled)
    except InvalidArgument as error:
        assert encoding is Encoding.HEADER
        assert error.reason == "INVALID_HEADER_VALUE"
        return
    if encoding in (Encoding.RAW, Encoding.UNSPECIFIED, Encoding.HEADER):
        assert result == "".join(expected_parts)
    assert ("stripe_key" in compiled.secret_names) is ("stripe_key" in secrets_in_template)


# ---------------------------------------------------------------- fuzzing

GRAMMAR_SOUP = st.lists(
    st.sampled_from(
        [
            "{{",
            "}}",
            "{",
            "}",
            " ",
            "\t",
            "secret:",
            "config:",
            "input.",
            "a",
            "Z",
            "9",
            "_",
            "-",
            ".",
            ":",
            "/",
            "?",
            "#",
            "&",
            "=",
            '"',
            "\\",
            "\\u",
            "[",
            "]",
            ",",
            "://",
            "https",
            "\r",
            "\n",
            "\x00",
            "é",
            "%2e",
            "NaN",
            "1",
        ]
    ),
    max_size=40,
).map("".join)
TEMPLATES = st.one_of(
    st.text(UNICODE, max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", errors="replace")),
    GRAMMAR_SOUP,
)
ENCODINGS = st.sampled_from([*Encoding, 6, -1, 1 << 40])


@settings(max_examples=600, deadline=None)
@given(TEMPLATES, ENCODINGS, VALUES)
def test_arbitrary_templates_only_ever_raise_invalid_argument(
    template: str, encoding: int, value: str
) -> None:
    compiled, problems = scan_template(template, encoding, field="f")
    assert (compiled is None) == bool(problems)
    for problem in problems:
        assert problem.reason.isupper()
        assert problem.message.startswith("f: ")
        assert template[problem.offset : problem.offset + len(problem.placeholder)] == (
            problem.placeholder
        )
    try:
        strict = compile_template(template, encoding)
    except InvalidArgument as error:
        assert problems
        assert error.reason == problems[0].reason
        return
    assert compiled is not None
    assert strict.placeholders == compiled.placeholders
    for placeholder in strict.placeholders:
        assert template[placeholder.start : placeholder.end] == placeholder.raw
    try:
        result = strict.render(lambda kind, name: value)
    except InvalidArgument as error:
        assert error.reason in (
            "INVALID_HEADER_VALUE",
            "INVALID_URL_ORIGIN",
            "INVALID_URL_VALUE",
            "INVALID_VALUE",
        )
    else:
        if strict.encoding is Encoding.JSON:
            json.loads(result, parse_int=str)
        if strict.encoding is Encoding.HEADER:
            assert not any(bad in result for bad in HEADER_BAD)
    if strict.encoding in (Encoding.RAW, Encoding.UNSPECIFIED):
        # Putting each placeholder's own text back gives the template again.
        raw_by_key: dict[tuple[PlaceholderKind, str], str] = {}
        if all(
            raw_by_key.setdefault((p.kind, p.name), p.raw) == p.raw for p in strict.placeholders
        ):
            assert strict.render(lambda kind, name: raw_by_key[(kind, name)]) == template
