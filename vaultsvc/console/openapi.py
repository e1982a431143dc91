"""``/api/v1/openapi.json``: OpenAPI 3.1 for the console's JSON API.

Paths are written here; schemas are generated from the same proto descriptors the gRPC API
uses (proto3 JSON names), so the document cannot drift from the messages served.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32"},
    # proto3 JSON writes 64-bit integers as strings.
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Empty": {"type": "object"},
}


def _name(descriptor: Descriptor) -> str:
    return descriptor.full_name.removeprefix("interakt.vault.v1.").replace(".", "_")


def _collect(descriptor: Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    """A $ref to ``descriptor``'s schema, adding it (and what it uses) to ``schemas``."""
    if descriptor.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[descriptor.full_name])
    if descriptor.GetOptions().map_entry:
        value = descriptor.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    name = _name(descriptor)
    if name not in schemas:
        schemas[name] = {}  # reserve first: messages may refer to themselves
        properties = {f.json_name: _field_schema(f, schemas) for f in descriptor.fields}
        schemas[name] = {"type": "object", "properties": properties}
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message_type = field.message_type
        assert message_type is not None
        item = _collect(message_type, schemas)
        if message_type.GetOptions().map_entry:
            return item
    elif field.type == FieldDescriptor.TYPE_ENUM:
        enum_type = field.enum_type
        assert enum_type is not None
        item = {"type": "string", "enum": [v.name for v in enum_type.values]}
    else:
        item = dict(_SCALARS[field.type])
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _query_parameters(descriptor: Descriptor, skip: tuple[str, ...] = ()) -> list[Any]:
    parameters = []
    for f in descriptor.fields:
        if f.name in skip or f.is_repeated:
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            continue
        parameters.append(
            {"name": f.json_name, "in": "query", "required": False, "schema": _SCALARS[f.type]}
        )
    return parameters


_ERROR = {"$ref": "#/components/responses/Error"}


@functools.cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(descriptor: Descriptor) -> dict[str, Any]:
        return _collect(descriptor, schemas)

    def operation(
        op_id: str,
        summary: str,
        response: Descriptor,
        *,
        body: Descriptor | None = None,
        query: Descriptor | None = None,
        skip: tuple[str, ...] = (),
        path_param: str | None = None,
    ) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": ref(response)}},
                },
                "default": _ERROR,
            },
        }
        parameters: list[Any] = []
        if path_param:
            parameters.append(
                {"name": path_param, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        if query is not None:
            parameters += _query_parameters(query, skip)
        if parameters:
            op["parameters"] = parameters
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(body)}},
            }
        return op

    sd, cd, rd, ad = (
        spb.DESCRIPTOR.message_types_by_name,
        cpb.DESCRIPTOR.message_types_by_name,
        rpb.DESCRIPTOR.message_types_by_name,
        apb.DESCRIPTOR.message_types_by_name,
    )
    empty = (
        spb.DESCRIPTOR.services_by_name["SecretService"].methods_by_name["DeleteSecret"].output_type
    )
    paths = {
        "/api/v1/secrets": {
            "get": operation(
                "ListSecrets", "List secrets (metadata only)", sd["ListSecretsResponse"],
                query=sd["ListSecretsRequest"],
            ),
            "post": operation(
                "CreateSecret", "Create a secret (the value is never returned)", sd["Secret"],
                body=sd["CreateSecretRequest"],
            ),
        },
        "/api/v1/secrets/{name}": {
            "get": operation("GetSecret", "A secret's metadata", sd["Secret"], path_param="name"),
            "patch": operation(
                "UpdateSecret", "Update a secret (value unset or empty keeps it)", sd["Secret"],
                body=sd["UpdateSecretRequest"], path_param="name",
            ),
            "delete": operation(
                "DeleteSecret", "Delete a secret", empty, query=sd["DeleteSecretRequest"],
                skip=("name",), path_param="name",
            ),
        },
        "/api/v1/stats": {
            "get": operation("GetVaultStats", "Total secrets and last update", sd["VaultStats"]),
        },
        "/api/v1/configs": {
            "get": operation(
                "ListConfigValues", "List config values", cd["ListConfigValuesResponse"],
                query=cd["ListConfigValuesRequest"],
            ),
        },
        "/api/v1/configs/{key}": {
            "get": operation(
                "GetConfigValue", "A config value", cd["ConfigValue"], path_param="key"
            ),
            "put": operation(
                "PutConfigValue", "Create or replace a config value", cd["ConfigValue"],
                body=cd["PutConfigValueRequest"], path_param="key",
            ),
            "delete": operation(
                "DeleteConfigValue", "Delete a config value", empty,
                query=cd["DeleteConfigValueRequest"], skip=("key",), path_param="key",
            ),
        },
        "/api/v1/audit": {
            "get": operation(
                "ListAuditEvents", "The audit trail, newest first",
                ad["ListAuditEventsResponse"], query=ad["ListAuditEventsRequest"],
            ),
        },
        "/api/v1/check": {
            "post": operation(
                "CheckTemplate", "References and problems of templates (never resolves)",
                rd["CheckTemplateResponse"], body=rd["CheckTemplateRequest"],
            ),
        },
    }  # fmt: skip
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message", "details"],
                "properties": {
                    "code": {"type": "integer", "description": "HTTP status"},
                    "status": {"type": "string", "description": "gRPC status code name"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "description": "google.rpc.ErrorInfo with @type",
                            "properties": {
                                "@type": {"type": "string"},
                                "reason": {"type": "string"},
                                "domain": {"type": "string"},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vaultsvc console API",
            "version": "v1",
            "description": "The JSON twin of the vault's admin gRPC API (proto3 JSON). "
            "Never serves a secret value; never resolves.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "AIP-193 error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "vault_session",
                    "description": "console session; state-changing calls also need the "
                    "X-CSRF-Token header",
                },
            },
        },
    }
