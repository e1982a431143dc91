"""The console's ASGI application: the HTML shell, sign-in and sign-out, and the JSON API
under ``/api/v1`` (shared/API.md "Console and HTTP API").

Every API route is a mirrored gRPC call (:mod:`vaultsvc.console.calls`): it runs the same
servicer method on the same request message, so validation, authorization, audit and the
response message are the gRPC API's own. No route resolves a template or returns a value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import json_format
from google.protobuf.message import Message
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from vaultsvc.api.audit import AuditServicer
from vaultsvc.api.configs import ConfigServicer
from vaultsvc.api.frontdoor import FrontDoor
from vaultsvc.api.resolver import ResolverServicer
from vaultsvc.api.secrets import SecretServicer
from vaultsvc.api.status import error_info, http_status
from vaultsvc.audit import AuditWriter
from vaultsvc.auth import ADMIN, VIEWER, Principal, TokenAuthenticator, hash_token
from vaultsvc.console.calls import CallFailed, CallRunner
from vaultsvc.console.openapi import openapi_document
from vaultsvc.console.protojson import from_json, from_query, to_json
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    VaultError,
)
from vaultsvc.ratelimit import MissingNamesLimiter
from vaultsvc.storage.sessions import SessionRow, SessionStore
from vaultsvc.vault import Vault

_log = logging.getLogger("vaultsvc.console")
_HERE = Path(__file__).parent
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGN_IN_METHOD = "/interakt.vault.v1.Console/SignIn"
SIGN_OUT_METHOD = "/interakt.vault.v1.Console/SignOut"

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (pages, API, static files, errors)."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + (
            ((b"strict-transport-security", b"max-age=31536000"),) if hsts else ()
        )
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k not in self.names]
                message["headers"] = kept + list(self.headers)
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True)
class ConsoleSettings:
    session_ttl: float
    secure_cookie: bool
    max_body_bytes: int
    rpc_timeout_cap: float

    @property
    def cookie_name(self) -> str:
        # The __Host- prefix pins the cookie to this origin (and requires Secure).
        return "__Host-vault_session" if self.secure_cookie else "vault_session"


def error_response(err: VaultError, request_id: str) -> JSONResponse:
    """AIP-193 error body: code, status, message and the one ErrorInfo."""
    detail = json_format.MessageToDict(error_info(err, request_id))
    detail = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", **detail}
    status = http_status(err.code)
    headers = {"x-request-id": request_id}
    if err.retry_delay is not None:  # gRPC clients get a RetryInfo; HTTP ones Retry-After
        headers["retry-after"] = str(max(1, math.ceil(err.retry_delay)))
    return JSONResponse(
        {
            "error": {
                "code": status,
                "status": err.code.value,
                "message": err.message,
                "details": [detail],
            }
        },
        status_code=status,
        headers=headers,
    )


def _peer(request: Request) -> str:
    client = request.client
    return f"http:{client.host}:{client.port}" if client else "http:unknown"


def _session_hash(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode("utf-8")).digest()


class Console:
    """The routes, over the same servicers (and so the same vault core) as gRPC."""

    def __init__(
        self,
        vault: Vault,
        audit: AuditWriter,
        authenticator: TokenAuthenticator,
        sessions: SessionStore,
        settings: ConsoleSettings,
        limiter: MissingNamesLimiter,
        frontdoor: FrontDoor | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.audit = audit
        self.sessions = sessions
        self.settings = settings
        self.runner = CallRunner(audit, settings.rpc_timeout_cap, frontdoor)
        self.secrets = SecretServicer(vault)
        self.configs = ConfigServicer(vault)
        self.resolver = ResolverServicer(vault, limiter)
        self.audit_events = AuditServicer(vault)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # ------------------------------------------------------------------ sessions

    async def session(self, request: Request) -> SessionRow | None:
        """The request's session, if it exists, has not expired and its token is still valid."""
        cookie = request.cookies.get(self.settings.cookie_name)
        if not cookie or len(cookie) > 128:
            return None
        digest = _session_hash(cookie)
        row = await self.sessions.get(digest)
        if row is None:
            return None
        current = await self.authenticator.lookup_digest(row.token_hash)
        if current != Principal(row.principal, row.role):
            await self.sessions.delete(digest)
            _log.info("console session ended: its token is no longer valid")
            return None
        return row

    async def api_principal(self, request: Request) -> Principal:
        """Bearer token (scripts) or session cookie plus CSRF header (the console)."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return await self.authenticator.authenticate_call(authorization)
        row = await self.session(request)
        if row is None:
            raise Unauthenticated(
                "not signed in: sign in to the console or send 'Authorization: Bearer <token>'"
            )
        if request.method not in _SAFE_METHODS:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode("utf-8"), row.csrf_secret.encode("utf-8")):
                raise PermissionDenied(
                    "missing or wrong CSRF token (send the page's token as X-CSRF-Token)",
                    reason=Reason.PERMISSION_DENIED,
                )
        return Principal(row.principal, row.role)

    # ---------------------------------------------------------------- plumbing

    async def read_json(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise InvalidArgument("the request body must be JSON (Content-Type: application/json)")
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResourceExhausted(f"the request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ResourceExhausted(f"the request body is larger than {limit} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("the request body is not valid JSON") from None

    async def call(
        self,
        service_method: str,
        request: Request,
        handler: Callable[[], Awaitable[Message]],
    ) -> Response:
        try:
            message, request_id = await self.runner.invoke(
                service_method,
                _peer(request),
                lambda: self.api_principal(request),
                handler,
                client_request_id=request.headers.get("x-request-id"),
            )
        except CallFailed as failed:
            return error_response(failed.error, failed.request_id)
        return JSONResponse(to_json(message), headers={"x-request-id": request_id})

    @staticmethod
    def query(request: Request) -> Mapping[str, str]:
        params = request.query_params
        for key in params:
            if len(params.getlist(key)) > 1:
                raise InvalidArgument(f"query parameter {key[:64]!r} given more than once")
        return dict(params)

    # --------------------------------------------------------------- secrets API

    async def list_secrets(self, request: Request) -> Response:
        async def handler() -> Message:
            req = from_query(spb.ListSecretsRequest, self.query(request), what="ListSecrets")
            return await self.secrets.ListSecrets(req, None)

        return await self.call("SecretService/ListSecrets", request, handler)

    async def create_secret(self, request: Request) -> Response:
        async def handler() -> Message:
            body = await self.read_json(request)
            req = from_json(spb.CreateSecretRequest, body, what="CreateSecretRequest")
            return await self.secrets.CreateSecret(req, None)

        return await self.call("SecretService/CreateSecret", request, handler)

    async def get_secret(self, request: Request) -> Response:
        async def handler() -> Message:
            req = spb.GetSecretRequest(name=request.path_params["name"])
            return await self.secrets.GetSecret(req, None)

        return await self.call("SecretService/GetSecret", request, handler)

    async def update_secret(self, request: Request) -> Response:
        async def handler() -> Message:
            name = request.path_params["name"]
            body = await self.read_json(request)
            req = from_json(spb.UpdateSecretRequest, body, what="UpdateSecretRequest")
            if req.name and req.name != name:
                raise InvalidArgument("the name in the body differs from the one in the path")
            req.name = name
            return await self.secrets.UpdateSecret(req, None)

        return await self.call("SecretService/UpdateSecret", request, handler)

    async def delete_secret(self, request: Request) -> Response:
        async def handler() -> Message:
            query = from_query(spb.DeleteSecretRequest, self.query(request), what="DeleteSecret")
            query.name = request.path_params["name"]
            return await self.secrets.DeleteSecret(query, None)

        return await self.call("SecretService/DeleteSecret", request, handler)

    async def stats(self, request: Request) -> Response:
        async def handler() -> Message:
            from_query(spb.GetVaultStatsRequest, self.query(request), what="GetVaultStats")
            return await self.secrets.GetVaultStats(spb.GetVaultStatsRequest(), None)

        return await self.call("SecretService/GetVaultStats", request, handler)

    # ---------------------------------------------------------------- configs API

    async def list_configs(self, request: Request) -> Response:
        async def handler() -> Message:
            req = from_query(
                cpb.ListConfigValuesRequest, self.query(request), what="ListConfigValues"
            )
            return await self.configs.ListConfigValues(req, None)

        return await self.call("ConfigService/ListConfigValues", request, handler)

    async def get_config(self, request: Request) -> Response:
        async def handler() -> Message:
            req = cpb.GetConfigValueRequest(key=request.path_params["key"])
            return await self.configs.GetConfigValue(req, None)

        return await self.call("ConfigService/GetConfigValue", request, handler)

    async def put_config(self, request: Request) -> Response:
        async def handler() -> Message:
            key = request.path_params["key"]
            body = await self.read_json(request)
            req = from_json(cpb.PutConfigValueRequest, body, what="PutConfigValueRequest")
            if req.key and req.key != key:
                raise InvalidArgument("the key in the body differs from the one in the path")
            req.key = key
            return await self.configs.PutConfigValue(req, None)

        return await self.call("ConfigService/PutConfigValue", request, handler)

    async def delete_config(self, request: Request) -> Response:
        async def handler() -> Message:
            req = from_query(
                cpb.DeleteConfigValueRequest, self.query(request), what="DeleteConfigValue"
            )
            req.key = request.path_params["key"]
            return await self.configs.DeleteConfigValue(req, None)

        return await self.call("ConfigService/DeleteConfigValue", request, handler)

    # ------------------------------------------------------------- audit, check

    async def list_audit(self, request: Request) -> Response:
        async def handler() -> Message:
            req = from_query(apb.ListAuditEventsRequest, self.query(request), what="ListAudit")
            return await self.audit_events.ListAuditEvents(req, None)

        return await self.call("AuditService/ListAuditEvents", request, handler)

    async def check(self, request: Request) -> Response:
        async def handler() -> Message:
            body = await self.read_json(request)
            req = from_json(rpb.CheckTemplateRequest, body, what="CheckTemplateRequest")
            return await self.resolver.CheckTemplate(req, None)

        return await self.call("ResolverService/CheckTemplate", request, handler)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # ------------------------------------------------------------ sign-in / out

    async def sign_in(self, request: Request) -> Response:
        request_id = uuid.uuid4().hex
        record = AuditRecord(
            principal="", method=SIGN_IN_METHOD, request_id=request_id, peer=_peer(request)
        )
        try:
            body = await self.read_json(request)
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token.strip():
                raise InvalidArgument('send the vault token as {"token": "..."}')
            principal = await self.authenticator.authenticate_call(f"Bearer {token.strip()}")
            record.principal = principal.name
            if principal.role not in (ADMIN, VIEWER):
                raise PermissionDenied(
                    f"the console is for admin and viewer tokens; {principal.name} has role "
                    f"{principal.role}",
                    reason=Reason.PERMISSION_DENIED,
                )
            cookie = secrets.token_urlsafe(32)
            expire = await self.sessions.create(
                _session_hash(cookie),
                principal=principal.name,
                role=principal.role,
                token_hash=hash_token(token.strip()),
                csrf_secret=secrets.token_urlsafe(32),
                ttl_seconds=self.settings.session_ttl,
            )
        except VaultError as exc:
            record.outcome = exc.code.value
            self._refused(record, exc)
            return error_response(exc, request_id)
        try:
            # The session exists only once its sign-in is on the audit trail.
            await self.audit.commit(record)
        except VaultError as exc:
            await self.sessions.delete(_session_hash(cookie))
            return error_response(exc, request_id)
        response = JSONResponse(
            {"principal": principal.name, "role": principal.role, "expireTime": expire.isoformat()}
        )
        response.set_cookie(
            self.settings.cookie_name,
            cookie,
            max_age=int(self.settings.session_ttl),
            path="/",
            secure=self.settings.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        request_id = uuid.uuid4().hex
        try:
            principal = await self.api_principal(request)
        except VaultError as exc:
            if isinstance(exc, Unauthenticated):
                self.audit.count_refusal(_peer(request))
            return error_response(exc, request_id)
        cookie = request.cookies.get(self.settings.cookie_name, "")
        await self.sessions.delete(_session_hash(cookie))
        self._submit_quietly(
            AuditRecord(
                principal=principal.name,
                method=SIGN_OUT_METHOD,
                request_id=request_id,
                peer=_peer(request),
            )
        )
        response = JSONResponse({})
        response.delete_cookie(
            self.settings.cookie_name,
            path="/",
            secure=self.settings.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return response

    def _refused(self, record: AuditRecord, error: VaultError) -> None:
        """A refused sign-in: bad tokens are counted per peer and minute like refused gRPC
        calls; any other refusal is queued without the reply waiting for it."""
        if isinstance(error, Unauthenticated):
            self.audit.count_refusal(record.peer)
        else:
            self._submit_quietly(record)

    def _submit_quietly(self, record: AuditRecord) -> None:
        """Queue a sign-in/out event for the next group commit (the reply does not wait)."""
        try:
            self.audit.submit(record)
        except VaultError:
            _log.error("console sign-in event could not be audited")

    # -------------------------------------------------------------------- pages

    def render(self, template: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.templates.get_template(template).render(**context))

    async def index(self, request: Request) -> Response:
        try:
            row = await self.session(request)
        except VaultError:
            row = None
        if row is None:
            return RedirectResponse("/login", status_code=303)
        return self.render(
            "console.html",
            principal=row.principal,
            role=row.role,
            csrf=row.csrf_secret,
            can_write=row.role == ADMIN,
        )

    async def login(self, request: Request) -> Response:
        return self.render("login.html")


def build_app(console: Console) -> ASGIApp:
    api = "/api/v1"
    routes = [
        Route("/", console.index, methods=["GET"]),
        Route("/login", console.login, methods=["GET"]),
        Route("/auth/session", console.sign_in, methods=["POST"]),
        Route("/auth/signout", console.sign_out, methods=["POST"]),
        Route(f"{api}/openapi.json", console.openapi, methods=["GET"]),
        Route(f"{api}/secrets", console.list_secrets, methods=["GET"]),
        Route(f"{api}/secrets", console.create_secret, methods=["POST"]),
        Route(f"{api}/secrets/{{name}}", console.get_secret, methods=["GET"]),
        Route(f"{api}/secrets/{{name}}", console.update_secret, methods=["PATCH"]),
        Route(f"{api}/secrets/{{name}}", console.delete_secret, methods=["DELETE"]),
        Route(f"{api}/stats", console.stats, methods=["GET"]),
        Route(f"{api}/configs", console.list_configs, methods=["GET"]),
        Route(f"{api}/configs/{{key}}", console.get_config, methods=["GET"]),
        Route(f"{api}/configs/{{key}}", console.put_config, methods=["PUT"]),
        Route(f"{api}/configs/{{key}}", console.delete_config, methods=["DELETE"]),
        Route(f"{api}/audit", console.list_audit, methods=["GET"]),
        Route(f"{api}/check", console.check, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]

    async def no_route(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return error_response(
                NotFound(f"no route for {request.method} {request.url.path[:200]}"),
                uuid.uuid4().hex,
            )
        return Response("not found", status_code=404, media_type="text/plain")

    app = Starlette(routes=routes, exception_handlers={404: no_route, 405: no_route})
    return SecurityHeaders(app, hsts=console.settings.secure_cookie)
