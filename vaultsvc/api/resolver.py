"""ResolverService: resolve (the only path to a value) and check templates."""

from __future__ import annotations

from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc

from vaultsvc.api.frontdoor import ReplyBudget, Reservation
from vaultsvc.audit import audit_record, current_call
from vaultsvc.domain import safe_label, validate_tool
from vaultsvc.errors import NotFound
from vaultsvc.limits import MAX_TOOL_CHARS
from vaultsvc.ratelimit import MissingNamesLimiter
from vaultsvc.vault import Caller, Field, Vault, record_secret_names


def _fields(request: Any) -> list[Field]:
    return [Field(f.key, f.template, int(f.encoding)) for f in request.fields]


def _caller() -> Caller:
    call = current_call.get()
    return Caller(role=call.role, scopes=call.scopes)


class ResolverServicer(rgrpc.ResolverServiceServicer):
    def __init__(
        self, vault: Vault, limiter: MissingNamesLimiter, replies: ReplyBudget | None = None
    ) -> None:
        self.vault = vault
        self.limiter = limiter
        self.replies = replies

    async def ResolveTemplate(
        self, request: rpb.ResolveTemplateRequest, context: Any
    ) -> rpb.ResolveTemplateResponse:
        """The interceptor refused this call up front if its event could not be committed,
        and commits the event (group commit) before the reply leaves."""
        record = audit_record()
        # Recorded (made safe to print) even when refused, so the attempt shows in the trail.
        record.tool = safe_label(request.tool, MAX_TOOL_CHARS)
        validate_tool(request.tool)
        reservation: list[Reservation] = []

        def before_render(size: int) -> None:
            if self.replies is not None:
                reservation.append(self.replies.reserve(size, context))

        try:
            resolved = await self.vault.resolve(
                _fields(request),
                request.inputs,
                record,
                before_render,
                caller=_caller(),
                strict=request.strict,
                destination_host=request.destination_host,
            )
        except NotFound:
            # Asking for secrets that do not exist is the expensive pattern: limited per
            # principal (a resolve whose secrets all exist is never charged).
            self.limiter.charge(current_call.get().principal, record.missing_count)
            raise
        # Each field built in place in the reply (not built apart and then copied in).
        reply = rpb.ResolveTemplateResponse()
        add = reply.fields.add
        for key, value in resolved:
            add(key=key, value=value)
        if reservation:
            # The exact size replaces the estimate; over the budget this raises OVERLOADED.
            reservation[0].resize(reply.ByteSize())
        return reply

    async def CheckTemplate(
        self, request: rpb.CheckTemplateRequest, context: Any
    ) -> rpb.CheckTemplateResponse:
        references, problems = await self.vault.check(_fields(request), _caller())
        record_secret_names(
            audit_record(),
            {n.lower() for r in references for n in r.secret_names},
            {p.name.lower() for p in problems if p.kind == "SECRET_NOT_FOUND"},
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
