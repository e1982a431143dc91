"""HEADER encoding refuses every control character that HTTP stacks mishandle:
C0 except HT, DEL, NEL (U+0085) and the Unicode line and paragraph separators."""

from __future__ import annotations

import pytest

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import Encoding, compile_template, scan_template

FORBIDDEN = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f", "\u0085", "\u2028", "\u2029"]
ALLOWED = ["\t", " ", "~", "\u00a0", "\u0080", "\u0084", "\u0086", "\u00e9", "\u2027", "\U0001f511"]


@pytest.mark.parametrize("char", FORBIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_header_value_with_a_control_character_is_refused(char: str) -> None:
    compiled = compile_template("Bearer {{secret:api_key}}", Encoding.HEADER)
    value = f"sk_live{char}tail"
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(lambda kind, name: value, field="headers[Authorization]")
    assert caught.value.reason == "INVALID_HEADER_VALUE"
    assert caught.value.message.startswith("headers[Authorization]: ")
    assert "{{secret:api_key}}" in caught.value.message
    assert "sk_live" not in caught.value.message and char not in caught.value.message


@pytest.mark.parametrize("char", FORBIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_header_template_with_a_control_character_is_invalid(char: str) -> None:
    template = f"Bearer{char} {{{{secret:api_key}}}}"
    compiled, problems = scan_template(template, Encoding.HEADER)
    assert compiled is None
    assert [p.reason for p in problems] == ["INVALID_TEMPLATE"]
    assert problems[0].offset == len("Bearer")
    assert f"U+{ord(char):04X}" in problems[0].message
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, Encoding.HEADER)
    assert caught.value.reason == "INVALID_TEMPLATE"


@pytest.mark.parametrize("char", ALLOWED, ids=lambda c: f"U+{ord(c):04X}")
def test_tab_and_other_characters_stay_allowed(char: str) -> None:
    compiled = compile_template(f"a{char}{{{{input.x}}}}", Encoding.HEADER)
    assert compiled.render(lambda kind, name: char) == f"a{char}{char}"
