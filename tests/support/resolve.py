"""Building and running ResolveTemplate requests; spies on the resolve query and on every
statement the server sends."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.rpc import audit_admin, configs_admin, secrets_admin
from tests.support.vault import VaultHandle

RAW = rpb.ENCODING_RAW
URL = rpb.ENCODING_URL
HEADER = rpb.ENCODING_HEADER
JSON = rpb.ENCODING_JSON
FORM = rpb.ENCODING_FORM

FieldSpec = tuple[str, str, int]

# A value with every character class an encoder must care about.
TRICKY = 'sk_live_"q\\uote"\n\r\t/&?=#%+ ,;:@[]{}<>\'\u00e9\u4e2d\U0001f511'
# The same, minus what a header can never carry (CR, LF, NUL).
HEADER_SAFE = 'sk_live_"q\\uote"/&?=#%+ ,;:@[]{}<>\'\u00e9\u4e2d\U0001f511'

RESOLVE_METHOD = "/interakt.vault.v1.ResolverService/ResolveTemplate"


async def put_secrets(vault: VaultHandle, values: Mapping[str, str]) -> None:
    admin = secrets_admin(vault)
    for name, value in values.items():
        await admin.CreateSecret(spb.CreateSecretRequest(name=name, value=value))


async def put_configs(vault: VaultHandle, values: Mapping[str, str]) -> None:
    admin = configs_admin(vault)
    for key, value in values.items():
        await admin.PutConfigValue(cpb.PutConfigValueRequest(key=key, value=value))


def request(
    fields: Sequence[FieldSpec], inputs: Mapping[str, str] | None = None, tool: str = "tool-1"
) -> rpb.ResolveTemplateRequest:
    return rpb.ResolveTemplateRequest(
        fields=[rpb.TemplateField(key=k, template=t, encoding=e) for k, t, e in fields],  # type: ignore[arg-type]
        inputs=dict(inputs or {}),
        tool=tool,
    )


async def resolve(
    stub: rpbg.ResolverServiceStub,
    fields: Sequence[FieldSpec],
    inputs: Mapping[str, str] | None = None,
    tool: str = "tool-1",
) -> list[tuple[str, str]]:
    response = await stub.ResolveTemplate(request(fields, inputs, tool), timeout=30)
    return [(f.key, f.value) for f in response.fields]


async def resolve_events(vault: VaultHandle, count: int) -> list[apb.AuditEvent]:
    """The newest ``count`` ResolveTemplate audit events (they are written behind)."""
    audit = audit_admin(vault)
    deadline = time.monotonic() + 10
    while True:
        response = await audit.ListAuditEvents(apb.ListAuditEventsRequest(page_size=1000))
        events = [e for e in response.events if e.method == RESOLVE_METHOD]
        if len(events) >= count or time.monotonic() > deadline:
            return events[:count]
        await asyncio.sleep(0.05)


class FetchSpy:
    """Counts calls to the repository's ``fetch_for_resolve``; the real call still runs."""

    def __init__(self, vault: VaultHandle) -> None:
        self.secret_names: list[list[str]] = []
        self.config_keys: list[list[str]] = []
        repository = vault.runtime.repository
        original = repository.fetch_for_resolve

        async def spy(secret_names: Sequence[str], config_keys: Sequence[str]) -> Any:
            self.secret_names.append(sorted(secret_names))
            self.config_keys.append(sorted(config_keys))
            return await original(secret_names, config_keys)

        repository.fetch_for_resolve = spy  # type: ignore[method-assign]

    @property
    def calls(self) -> int:
        return len(self.secret_names)


_STATEMENTS = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "prepare", "cursor"}
)


class _CountingConnection:
    """Forwards everything to the real connection, counting statements by task name."""

    def __init__(self, conn: Any, counts: Counter[str]) -> None:
        self._conn = conn
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in _STATEMENTS:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            self._counts[task.get_name() if task else "?"] += 1
            return attr(*args, **kwargs)

        return counted


class StatementSpy:
    """Counts every statement the server sends to Postgres; the statements still run."""

    def __init__(self, vault: VaultHandle) -> None:
        self.by_task: Counter[str] = Counter()
        self.acquisitions = 0
        db = vault.runtime.db
        original = db.connection

        @asynccontextmanager
        async def connection() -> AsyncIterator[Any]:
            task = asyncio.current_task()
            if task is None or task.get_name() != "audit-flusher":
                self.acquisitions += 1
            async with original() as conn:
                yield _CountingConnection(conn, self.by_task)

        db.connection = connection  # type: ignore[method-assign]

    def request_statements(self) -> int:
        """Statements issued on behalf of RPCs (the audit flusher runs on its own)."""
        return sum(n for name, n in self.by_task.items() if name != "audit-flusher")

    def reset(self) -> None:
        self.by_task.clear()
        self.acquisitions = 0
