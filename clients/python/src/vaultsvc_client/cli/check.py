"""``vaultctl check``: lint a tool's templates; problems grouped under their field."""

from __future__ import annotations

import argparse
from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

from .._common import encoding_name
from .exits import EXIT_OK, EXIT_PROBLEMS
from .options import add_command, connect
from .output import cell, print_json, problem_kind, wants_json
from .templatefile import FILE_HELP, load_template_file


def register(groups: Any) -> None:
    check = add_command(
        groups,
        "check",
        check_templates,
        "Lint a tool's templates (exit 9 on problems).",
        "Lint a tool's templates: list what each field references and report missing "
        "secrets/configs and malformed placeholders (exit 9 when there are problems). "
        "Resolves nothing. " + FILE_HELP,
    )
    check.add_argument("file", metavar="FILE", help="the template file ('-': stdin)")


def check_templates(args: argparse.Namespace) -> int:
    template = load_template_file(args.file)
    with connect(args) as client:
        response = client.check_template(template.fields)
    encodings = {field.key: encoding_name(field.encoding) for field in template.fields}
    fields = grouped(response, encodings)
    problems = sum(len(field["problems"]) for field in fields)
    if wants_json(args):
        print_json({"ok": not problems, "fields": fields})
    else:
        for field in fields:
            print(_field_line(field))
            for problem in field["problems"]:
                what = problem["message"] or problem["placeholder"]
                print(f"  {problem['kind']} at {problem['offset']}: {cell(what)}")
        print(f"\n{problems} problem(s)" if problems else "\nno problems")
    return EXIT_PROBLEMS if problems else EXIT_OK


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
