"""Issue 15 item 12: SIGTERM under load. Many clients hammer resolves and creates over
long-lived connections while ``serve`` (one process, then ``--workers 2``) gets SIGTERM,
several times over one database. No client may ever see CANCELLED (clients do not retry
it): every failure is UNAVAILABLE, and every resolve a client saw answered OK has its
audit event (looked up by the server's request id)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.support.cli import cli_env, start_serve
from tests.support.vault import create_database, sql
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres

CONNECTIONS = 6
CALLS_PER_CONNECTION = 12
ROUNDS = (1, 2, 1, 2, 1)
"""Workers per round: five SIGTERMs, single-process and ``--workers 2`` alternately."""
REQUEST = rpb.ResolveTemplateRequest(
    fields=[
        rpb.TemplateField(
            key="auth", template="Bearer {{secret:storm}}", encoding=rpb.ENCODING_HEADER
        )
    ],
    tool="storm",
)


_NAMES = itertools.count()


@dataclass
class Seen:
    ok: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    ok_resolve_ids: list[str] = field(default_factory=list)
    details: Counter[str] = field(default_factory=Counter)
    """``CODE: details`` of every failure that is not a vault UNAVAILABLE."""


def _label(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return f"{err.code().name}/{info.reason}"
    return f"{err.code().name}/-"


async def _hammer(address: str, tokens: dict[str, str], stop: asyncio.Event, seen: Seen) -> None:
    """Closed loops of resolves and creates over ``CONNECTIONS`` connections until ``stop``;
    a failed call is retried after 5 ms (a harsh client)."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]

    async def loop(channel: grpc.aio.Channel, creates: bool) -> None:
        resolver = rpbg.ResolverServiceStub(channel)
        secrets = spbg.SecretServiceStub(channel)
        while not stop.is_set():
            if creates:
                kind = "create"
                call = secrets.CreateSecret(
                    spb.CreateSecretRequest(name=f"storm-{next(_NAMES)}", value="v"),
                    metadata=[("authorization", f"Bearer {tokens['admin']}")],
                    timeout=10,
                )
            else:
                kind = "resolve"
                call = resolver.ResolveTemplate(
                    REQUEST,
                    metadata=[("authorization", f"Bearer {tokens['resolver']}")],
                    timeout=10,
                )
            try:
                await call
            except grpc.aio.AioRpcError as err:
                label = _label(err)
                seen.failures[label] += 1
                if label != "UNAVAILABLE/UNAVAILABLE":
                    seen.details[f"{err.code().name}: {err.details()}"] += 1
                await asyncio.sleep(0.005)
                continue
            seen.ok[kind] += 1
            if kind == "resolve":
                trailing = dict(await call.trailing_metadata() or ())
                seen.ok_resolve_ids.append(str(trailing["x-request-id"]))

    try:
        await asyncio.gather(
            *(
                loop(channel, creates=i % 4 == 0)
                for channel in channels
                for i in range(CALLS_PER_CONNECTION)
            )
        )
    finally:
        for channel in channels:
            await channel.close()


async def test_sigterm_under_load_never_cancels_a_call(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = await create_database(pg)
    key_id, key = generate_master_key()
    tokens = {"admin": new_token(), "resolver": new_token()}
    env = cli_env(
        url,
        f"{key_id}:{key}",
        VAULT_TOKENS=",".join(
            f"{role}-p:{role}:{hash_token(token).hex()}" for role, token in tokens.items()
        ),
        VAULT_SERVER_SHUTDOWN_DELAY="0.2",
        VAULT_SERVER_GRACE_PERIOD="10",
    )
    seen = Seen()
    for number, workers in enumerate(ROUNDS):
        serve = await start_serve(
            {**env, "VAULT_WORKERS": str(workers)}, tmp_path / f"serve-{number}.stderr"
        )
        if number == 0:
            async with grpc.aio.insecure_channel(serve.address) as channel:
                await spbg.SecretServiceStub(channel).CreateSecret(
                    spb.CreateSecretRequest(name="storm", value="storm-value"),
                    metadata=[("authorization", f"Bearer {tokens['admin']}")],
                    timeout=10,
                )
        stop = asyncio.Event()
        before = seen.ok.total()
        load = asyncio.ensure_future(_hammer(serve.address, tokens, stop, seen))
        try:
            await asyncio.sleep(1.0)  # full load before SIGTERM
            assert seen.ok.total() > before, f"round {number}: no call served: {seen}"
            started = time.monotonic()
            code = await serve.stop(timeout=60)
            assert code == 0, serve.stderr()[-3000:]
            assert time.monotonic() - started < 15
            await asyncio.sleep(0.3)  # and on, against a closed port
        finally:
            stop.set()
            await asyncio.wait_for(load, timeout=30)
        assert "did not drain" not in serve.stderr()
    assert seen.ok["resolve"] > 0 and seen.ok["create"] > 0, seen
    assert seen.failures["UNAVAILABLE/UNAVAILABLE"] + seen.failures["UNAVAILABLE/-"] > 0, seen
    bad = {k: v for k, v in seen.failures.items() if not k.startswith("UNAVAILABLE/")}
    assert not bad, (bad, seen.details)
    rows = await sql(
        url,
        "SELECT request_id FROM audit_events WHERE request_id = ANY($1::text[])",
        seen.ok_resolve_ids,
    )
    lost = set(seen.ok_resolve_ids) - {r["request_id"] for r in rows}
    assert not lost, f"{len(lost)} of {len(seen.ok_resolve_ids)} answered resolves unaudited"
