"""Proto3 JSON in and out of the console API, on the very messages the gRPC API uses.

Parse errors are reworded: protobuf's own messages may quote the offending input, and
an input may be a secret value. Ours name the field, never its content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vaultsvc.domain import safe_label
from vaultsvc.errors import InvalidArgument, Reason

M = TypeVar("M", bound=Message)

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)
_TIMESTAMP = "google.protobuf.Timestamp"
#: What a Timestamp query parameter may be (protobuf's parser accepts a little more).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
_FIELD_REASONS = {"page_size": Reason.INVALID_PAGE_SIZE, "page_token": Reason.INVALID_PAGE_TOKEN}


def to_json(message: Message) -> dict[str, Any]:
    """lowerCamelCase proto3 JSON, fields without presence printed even when empty."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _fields_by_json_name(cls: type[Message]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for field in cls.DESCRIPTOR.fields:
        fields[field.json_name] = field
        fields[field.name] = field
    return fields


def _label(name: str) -> str:
    return safe_label(name, 64)


def from_json(cls: type[M], body: Any, *, what: str) -> M:
    """``body`` (decoded JSON) as a ``cls`` message, or INVALID_ARGUMENT naming the field."""
    if not isinstance(body, dict):
        raise InvalidArgument(f"the request body must be a JSON object ({what})")
    fields = _fields_by_json_name(cls)
    for key, value in body.items():
        field = fields.get(key)
        if field is None:
            raise InvalidArgument(f"unknown field {_label(key)!r} in {what}")
        _check_shape(field, value, f"{what}.{field.json_name}")
    message = cls()
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError:
        raise InvalidArgument(f"the request body is not a valid {what}") from None
    return message


def _check_shape(field: FieldDescriptor, value: Any, where: str) -> None:
    repeated = field.is_repeated
    if repeated:
        if not isinstance(value, list):
            raise InvalidArgument(f"field {where} must be a JSON array")
        return
    if field.type == FieldDescriptor.TYPE_STRING and not isinstance(value, str):
        raise InvalidArgument(f"field {where} must be a JSON string")
    if field.type == FieldDescriptor.TYPE_BOOL and not isinstance(value, bool):
        raise InvalidArgument(f"field {where} must be true or false")


def from_query(cls: type[M], query: Mapping[str, str], *, what: str) -> M:
    """Query parameters (lowerCamelCase or snake_case names) as a ``cls`` message."""
    fields = _fields_by_json_name(cls)
    message = cls()
    for key, text in query.items():
        field = fields.get(key)
        if field is None or field.is_repeated:
            raise InvalidArgument(f"unknown query parameter {_label(key)!r} for {what}")
        reason = _FIELD_REASONS.get(field.name, Reason.INVALID_ARGUMENT)
        value: Any = text
        if field.type in _INTEGER_TYPES:
            try:
                value = int(text.strip())
            except ValueError:
                raise InvalidArgument(
                    f"query parameter {field.json_name} must be an integer", reason=reason
                ) from None
        elif field.type == FieldDescriptor.TYPE_BOOL:
            if text not in ("true", "false"):
                raise InvalidArgument(f"query parameter {field.json_name} must be true or false")
            value = text == "true"
        elif field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            if not _RFC3339.fullmatch(text):
                raise InvalidArgument(
                    f"query parameter {field.json_name} must be an RFC 3339 time such as "
                    "2026-01-31T12:00:00Z",
                    reason=_FIELD_REASONS.get(field.name, Reason.INVALID_FILTER),
                )
        elif field.type != FieldDescriptor.TYPE_STRING:
            raise InvalidArgument(f"query parameter {field.json_name} is not supported")
        try:
            json_format.ParseDict({field.json_name: value}, message, ignore_unknown_fields=False)
        except json_format.ParseError:
            if field.message_type is not None:  # a time protobuf refuses (out of range)
                reason = Reason.INVALID_FILTER
            raise InvalidArgument(
                f"query parameter {field.json_name} is out of range", reason=reason
            ) from None
    return message
