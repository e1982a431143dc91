"""``vaultctl resolve``: the one command that prints values (to stdout, resolver token)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .exits import EXIT_OK, CliError
from .options import add_command, connect
from .output import print_json, wants_json
from .templatefile import FILE_HELP, load_template_file


def register(groups: Any) -> None:
    resolve = add_command(
        groups,
        "resolve",
        resolve_templates,
        "Resolve a tool's templates and PRINT THE VALUES (resolver token).",
        "Resolve a tool's templates with a resolver token and print the fields WITH "
        "their values on stdout. " + FILE_HELP + " The structured form may also "
        'hold "inputs" and "tool".',
    )
    resolve.add_argument("file", metavar="FILE", help="the template file ('-': stdin)")
    resolve.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for {{input.NAME}} (repeatable; overrides the file's inputs)",
    )
    resolve.add_argument("--tool", default=None, help="the calling tool's id, for the audit trail")
    resolve.add_argument(
        "--strict",
        action="store_true",
        help="refuse near-miss placeholders such as {{secrets:x}} instead of leaving them literal",
    )
    resolve.add_argument(
        "--destination-host",
        default="",
        metavar="HOST",
        help="the host the request goes to (bound secrets need one when no field is a URL)",
    )


def resolve_templates(args: argparse.Namespace) -> int:
    template = load_template_file(args.file)
    inputs = dict(template.inputs)
    for item in args.inputs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--input expects NAME=VALUE, got {name or '(empty)'!r}")
        inputs[name] = value
    tool = args.tool if args.tool is not None else template.tool
    with connect(args) as client:
        response = client.resolve_template(
            template.fields,
            inputs,
            tool,
            strict=args.strict,
            destination_host=args.destination_host,
        )
    fields = [{"key": field.key, "value": field.value} for field in response.fields]
    if wants_json(args):
        print_json({"fields": fields})
    else:
        for field in fields:
            sys.stdout.write(f"{field['key']}: {field['value']}\n")
    return EXIT_OK
