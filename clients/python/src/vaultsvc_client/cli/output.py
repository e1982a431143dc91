"""What vaultctl prints: one JSON document (``--json``) or tables for people; errors on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

PROG = "vaultctl"


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Mapping[str, Any], human: str) -> None:
    if wants_json(args):
        print_json(data)
    else:
        print(human)


def print_json(data: object, stream: Any = None) -> None:
    out = stream if stream is not None else sys.stdout
    json.dump(data, out, indent=2, ensure_ascii=False)
    out.write("\n")


def note(text: str) -> None:
    print(text, file=sys.stderr)


def error(
    as_json: bool,
    code: str,
    message: str,
    *,
    reason: str | None = None,
    request_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> None:
    """One failure on stderr: a line ``vaultctl: CODE: message``, or one JSON object."""
    if as_json:
        document: dict[str, Any] = {
            "code": code,
            "reason": reason,
            "message": one_line(message),
            "request_id": request_id,
        }
        document.update(extra or {})
        print_json(document, sys.stderr)
    else:
        print(f"{PROG}: {code}: {one_line(message)}", file=sys.stderr)


def one_line(text: str) -> str:
    return " ".join(text.split())


def cell(text: str) -> str:
    """Control characters shown escaped, so table cells stay on one line and inert."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or unicodedata.category(ch) == "Zs"
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def print_table(headers: list[str], rows: Iterable[Sequence[str | None]]) -> None:
    cells = [headers] + [[cell(value or "") for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )


def vertical(data: Mapping[str, Any]) -> str:
    width = max(len(key) for key in data)
    lines = []
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        shown = "" if value is None else str(value)
        lines.append(f"{key.ljust(width)}  {cell(shown)}".rstrip())
    return "\n".join(lines)


def timestamp(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    moment = getattr(message, field).ToDatetime(tzinfo=UTC)
    return str(moment.isoformat().replace("+00:00", "Z"))


def secret_dict(secret: Any) -> dict[str, Any]:
    return {
        "name": secret.name,
        "description": secret.description,
        "create_time": timestamp(secret, "create_time"),
        "update_time": timestamp(secret, "update_time"),
        "etag": secret.etag,
        "allowed_hosts": list(secret.allowed_hosts),
        "current_version": int(secret.current_version),
        "delete_time": timestamp(secret, "delete_time"),
        "purge_time": timestamp(secret, "purge_time"),
        "last_resolve_time": timestamp(secret.usage, "last_resolve_time"),
        "resolve_count": int(secret.usage.resolve_count),
    }


def usage_dict(item: Any) -> dict[str, Any]:
    """A secret's or config value's usage: last resolve, count and the recent tools."""
    usage = item.usage
    return {
        "last_resolve_time": timestamp(usage, "last_resolve_time"),
        "resolve_count": int(usage.resolve_count),
        "tools": [
            {
                "tool": t.tool,
                "last_resolve_time": timestamp(t, "last_resolve_time"),
                "resolve_count": int(t.resolve_count),
            }
            for t in usage.tools
        ],
    }


def config_dict(config: Any) -> dict[str, Any]:
    return {
        "key": config.key,
        "value": config.value,
        "description": config.description,
        "create_time": timestamp(config, "create_time"),
        "update_time": timestamp(config, "update_time"),
        "last_resolve_time": timestamp(config.usage, "last_resolve_time"),
        "resolve_count": int(config.usage.resolve_count),
    }


def problem_kind(kind: resolver_pb.ProblemKind.ValueType) -> str:
    try:
        name = str(resolver_pb.ProblemKind.Name(kind))
    except ValueError:
        return str(kind)
    return name.removeprefix("PROBLEM_KIND_")


def severity_name(severity: resolver_pb.Severity.ValueType) -> str:
    """``ERROR`` / ``WARNING`` (a server that predates severities sends neither: ERROR)."""
    if severity == resolver_pb.SEVERITY_WARNING:
        return "WARNING"
    return "ERROR"


def show_usage(args: Any, kind: str, name: str, usage: dict[str, Any]) -> None:
    """``vaultctl secrets usage`` / ``configs usage``: a summary line and a table of tools."""
    if wants_json(args):
        print_json({"name": name, **usage})
        return
    if usage["last_resolve_time"] is None:
        print(f"{kind} {name} was never resolved")
        return
    print(
        f"{kind} {name}: {usage['resolve_count']} resolve(s), last at {usage['last_resolve_time']}"
    )
    if usage["tools"]:
        print_table(
            ["TOOL", "LAST USED", "RESOLVES"],
            [[t["tool"], t["last_resolve_time"], str(t["resolve_count"])] for t in usage["tools"]],
        )
