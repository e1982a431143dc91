"""The template FILE of ``check`` and ``resolve``: structured or a plain ``{key: template}``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

from .._common import template_fields
from .exits import CliError
from .stdio import MAX_FILE_BYTES, os_reason, read_stdin_text

FILE_HELP = (
    'FILE is JSON: {"fields": [{"key": "url", "template": "...", '
    '"encoding": "URL"}]} (encodings RAW, URL, HEADER, JSON, FORM), or a plain '
    '{"key": "template"} object (RAW). \'-\' reads stdin.'
)


@dataclass
class TemplateFile:
    fields: list[resolver_pb.TemplateField]
    inputs: dict[str, str]
    tool: str


def load_template_file(path: str) -> TemplateFile:
    """Reads a check/resolve FILE (``-`` is stdin); raises CliError on bad input."""
    if path == "-":
        text = read_stdin_text(MAX_FILE_BYTES, "template file")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {path}: {os_reason(exc)}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON (line {exc.lineno} column {exc.colno})") from exc
    return parse_template_document(document, path)


def parse_template_document(document: object, source: str = "FILE") -> TemplateFile:
    """The structured form ``{"fields": [...], "inputs"?, "tool"?}`` or ``{key: template}``."""
    if not isinstance(document, dict):
        raise CliError(f"{source}: expected a JSON object")
    inputs: dict[str, str] = {}
    tool = ""
    if isinstance(document.get("fields"), list):
        unknown = set(document) - {"fields", "inputs", "tool"}
        if unknown:
            raise CliError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        raw_fields: Any = document["fields"]
        for index, field in enumerate(raw_fields):
            if not isinstance(field, dict):
                raise CliError(f"{source}: fields[{index}] is not an object")
        raw_inputs = document.get("inputs", {})
        if not isinstance(raw_inputs, dict) or not all(
            isinstance(v, str) for v in raw_inputs.values()
        ):
            raise CliError(f"{source}: inputs must be an object of strings")
        inputs = {str(k): v for k, v in raw_inputs.items()}
        raw_tool = document.get("tool", "")
        if not isinstance(raw_tool, str):
            raise CliError(f"{source}: tool must be a string")
        tool = raw_tool
    elif all(isinstance(value, str) for value in document.values()):
        raw_fields = {str(k): v for k, v in document.items()}
    else:
        raise CliError(
            f'{source}: expected {{"fields": [...]}} or an object mapping keys to templates'
        )
    try:
        fields = template_fields(raw_fields)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{source}: {exc}") from exc
    if not fields:
        raise CliError(f"{source}: no fields")
    return TemplateFile(fields, inputs, tool)
