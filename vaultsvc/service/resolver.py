"""ResolverService and AuditService servicers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc

from vaultsvc.audit import AuditWriter, audit_record, mark_audited
from vaultsvc.core import MAX_TOOL_CHARS, Field, Vault, decode_page_token, encode_page_token
from vaultsvc.domain import safe_label, validate_filter, validate_page_size
from vaultsvc.errors import InvalidArgument
from vaultsvc.service import timestamp
from vaultsvc.storage.repository import Repository


def _fields(request: Any) -> list[Field]:
    return [Field(f.key, f.template, int(f.encoding)) for f in request.fields]


class ResolverServicer(rgrpc.ResolverServiceServicer):
    def __init__(self, vault: Vault, audit: AuditWriter) -> None:
        self.vault = vault
        self.audit = audit

    async def ResolveTemplate(
        self, request: rpb.ResolveTemplateRequest, context: Any
    ) -> rpb.ResolveTemplateResponse:
        record = audit_record()
        if len(request.tool) > MAX_TOOL_CHARS:
            raise InvalidArgument(
                f"tool is longer than {MAX_TOOL_CHARS} characters", reason="INVALID_TOOL"
            )
        record.tool = safe_label(request.tool, MAX_TOOL_CHARS)
        # Refuse before decrypting anything if this call could not be recorded.
        await self.audit.ready()
        try:
            resolved = await self.vault.resolve(_fields(request), request.inputs, record)
        except Exception as exc:
            record.outcome = getattr(getattr(exc, "code", None), "name", "INTERNAL")
            self.audit.enqueue(record)
            mark_audited()
            raise
        record.outcome = "OK"
        self.audit.enqueue(record)
        mark_audited()
        return rpb.ResolveTemplateResponse(
            fields=[rpb.ResolvedField(key=k, value=v) for k, v in resolved]
        )

    async def CheckTemplate(
        self, request: rpb.CheckTemplateRequest, context: Any
    ) -> rpb.CheckTemplateResponse:
        references, problems = await self.vault.check(_fields(request))
        audit_record().secret_names = sorted(
            {n.lower() for r in references for n in r.secret_names}
        )
        return rpb.CheckTemplateResponse(
            references=[
                rpb.FieldReferences(
                    key=r.key,
                    secret_names=r.secret_names,
                    config_keys=r.config_keys,
                    input_names=r.input_names,
                )
                for r in references
            ],
            problems=[
                rpb.TemplateProblem(
                    field_key=p.field_key,
                    kind=rpb.ProblemKind.Value("PROBLEM_KIND_" + p.kind),
                    placeholder=p.placeholder,
                    name=p.name,
                    message=p.message,
                    offset=p.offset,
                )
                for p in problems
            ],
        )


class AuditServicer(agrpc.AuditServiceServicer):
    def __init__(self, repository: Repository) -> None:
        self.repo = repository

    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Any
    ) -> apb.ListAuditEventsResponse:
        limit = validate_page_size(request.page_size)
        validate_filter(request.secret_name, "secret_name")
        validate_filter(request.principal, "principal")
        filter_key = f"{request.secret_name.lower()}\x1f{request.principal}"
        before = _audit_cursor(decode_page_token(request.page_token, filter_key))
        rows, more = await self.repo.list_audit(
            request.secret_name, request.principal, before, limit
        )
        next_token = ""
        if more and rows:
            last_id, last = rows[-1]
            assert last.time is not None
            next_token = encode_page_token(f"{last.time.isoformat()}|{last_id}", filter_key)
        return apb.ListAuditEventsResponse(
            events=[
                apb.AuditEvent(
                    time=timestamp(r.time),
                    principal=r.principal,
                    method=r.method,
                    outcome=r.outcome,
                    secret_names=r.secret_names,
                    tool=r.tool,
                    request_id=r.request_id,
                    peer=r.peer,
                )
                for _, r in rows
            ],
            next_page_token=next_token,
        )


def _audit_cursor(position: str | None) -> tuple[datetime, int] | None:
    """(time, id) of the last event of the previous page, from a page token's position."""
    if position is None:
        return None
    time_text, _, id_text = position.rpartition("|")
    try:
        moment = datetime.fromisoformat(time_text)
        if moment.tzinfo is None or not id_text.isdigit():
            raise ValueError(position)
    except ValueError:
        raise InvalidArgument(
            "page_token is not a token this server issued", reason="INVALID_PAGE_TOKEN"
        ) from None
    return moment, int(id_text)
