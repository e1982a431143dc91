"""ResolverService: resolve (the only path to a value) and check templates."""

from __future__ import annotations

from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc

from vaultsvc.audit import AuditWriter, audit_record, current_call, mark_audited
from vaultsvc.domain import safe_label, validate_tool
from vaultsvc.errors import VaultError
from vaultsvc.limits import MAX_TOOL_CHARS
from vaultsvc.vault import Caller, Field, Vault


def _fields(request: Any) -> list[Field]:
    return [Field(f.key, f.template, int(f.encoding)) for f in request.fields]


def _caller() -> Caller:
    call = current_call.get()
    return Caller(role=call.role, scopes=call.scopes)


class ResolverServicer(rgrpc.ResolverServiceServicer):
    def __init__(self, vault: Vault, audit: AuditWriter) -> None:
        self.vault = vault
        self.audit = audit

    async def ResolveTemplate(
        self, request: rpb.ResolveTemplateRequest, context: Any
    ) -> rpb.ResolveTemplateResponse:
        record = audit_record()
        # Recorded (made safe to print) even when refused, so the attempt shows in the trail.
        record.tool = safe_label(request.tool, MAX_TOOL_CHARS)
        validate_tool(request.tool)
        # Refuse before decrypting anything if this call could not be recorded.
        await self.audit.ready()
        try:
            resolved = await self.vault.resolve(
                _fields(request),
                request.inputs,
                record,
                caller=_caller(),
                strict=request.strict,
                destination_host=request.destination_host,
            )
        except Exception as exc:
            record.outcome = exc.code.value if isinstance(exc, VaultError) else "INTERNAL"
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
        references, problems = await self.vault.check(_fields(request), _caller())
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
                    severity=rpb.Severity.Value("SEVERITY_" + p.severity),
                    suggestions=p.suggestions,
                )
                for p in problems
            ],
        )
