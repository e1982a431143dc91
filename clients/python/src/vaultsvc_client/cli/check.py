"""``vaultctl check``: lint a tool's templates; problems grouped under their field."""

from __future__ import annotations

import argparse
from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

from .._common import encoding_name
from .exits import EXIT_OK, EXIT_PROBLEMS
from .options import add_command, connect
from .output import cell, print_json, problem_kind, severity_name, wants_json
from .templatefile import FILE_HELP, load_template_file


def register(groups: Any) -> None:
    check = add_command(
        groups,
        "check",
        check_templates,
        "Lint a tool's templates (exit 9 on errors; with --strict on warnings too).",
        "Lint a tool's templates: list what each field references and report missing "
        "secrets/configs (with the closest existing names), malformed placeholders "
        "(errors: a resolve would fail) and near-miss placeholders such as {{secrets:x}} "
        "(warnings: left as literal text). Exit 9 on errors, and with --strict on "
        "warnings too. Resolves nothing. " + FILE_HELP,
    )
    check.add_argument("file", metavar="FILE", help="the template file ('-': stdin)")
    check.add_argument(
        "--strict", action="store_true", help="exit 9 on warnings (near-miss placeholders) too"
    )


def check_templates(args: argparse.Namespace) -> int:
    template = load_template_file(args.file)
    with connect(args) as client:
        response = client.check_template(template.fields)
    encodings = {field.key: encoding_name(field.encoding) for field in template.fields}
    fields = grouped(response, encodings)
    found = [problem for field in fields for problem in field["problems"]]
    errors = sum(1 for problem in found if problem["severity"] == "ERROR")
    warnings = len(found) - errors
    failed = errors > 0 or (args.strict and warnings > 0)
    if wants_json(args):
        print_json({"ok": not failed, "errors": errors, "warnings": warnings, "fields": fields})
    else:
        for field in fields:
            print(_field_line(field))
            for problem in field["problems"]:
                what = problem["message"] or problem["placeholder"]
                level = " (warning)" if problem["severity"] == "WARNING" else ""
                print(f"  {problem['kind']}{level} at {problem['offset']}: {cell(what)}")
        if warnings:
            print(f"\n{errors} error(s), {warnings} warning(s)")
        else:
            print(f"\n{errors} problem(s)" if errors else "\nno problems")
    return EXIT_PROBLEMS if failed else EXIT_OK


def grouped(
    response: resolver_pb.CheckTemplateResponse, encodings: dict[str, str]
) -> list[dict[str, Any]]:
    """One entry a field: its references, then its problems (the field key said once)."""
    fields: dict[str, dict[str, Any]] = {}

    def field(key: str) -> dict[str, Any]:
        if key not in fields:
            fields[key] = {
                "key": key,
                "encoding": encodings.get(key, ""),
                "secret_names": [],
                "config_keys": [],
                "input_names": [],
                "problems": [],
            }
        return fields[key]

    for ref in response.references:
        entry = field(ref.key)
        entry["secret_names"] = list(ref.secret_names)
        entry["config_keys"] = list(ref.config_keys)
        entry["input_names"] = list(ref.input_names)
    for problem in response.problems:
        field(problem.field_key)["problems"].append(
            {
                "kind": problem_kind(problem.kind),
                "placeholder": problem.placeholder,
                "name": problem.name,
                # the server's message starts with the field key: it stands above already
                "message": problem.message.removeprefix(f"{problem.field_key}: "),
                "offset": int(problem.offset),
                "severity": severity_name(problem.severity),
                "suggestions": list(problem.suggestions),
            }
        )
    return list(fields.values())


def _field_line(field: dict[str, Any]) -> str:
    parts = [cell(field["key"]), field["encoding"] or "?"]
    for label, names in (
        ("secrets", field["secret_names"]),
        ("configs", field["config_keys"]),
        ("inputs", field["input_names"]),
    ):
        if names:
            parts.append(f"{label}: {cell(', '.join(names))}")
    return "  ".join(parts)
