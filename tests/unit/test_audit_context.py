"""The audit trail's pure parts: the per-call context and record, the context variable
handlers use, the bounded queue's fail-closed accounting, peer aggregation and the
missing-names limiter (no database is reached)."""

from __future__ import annotations

import asyncio
import contextvars
from datetime import UTC, datetime
from typing import cast

import pytest

from vaultsvc.api.callflow import sanitize_names
from vaultsvc.audit import (
    AuditSink,
    AuditWriter,
    CallContext,
    audit_record,
    current_call,
    mark_audited,
    peer_address,
)
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import Reason, ResourceExhausted, Unavailable
from vaultsvc.ratelimit import MissingNamesLimiter

METHOD = "/interakt.vault.v1.SecretService/GetSecret"


def test_a_call_starts_with_a_record_of_its_method_id_and_peer() -> None:
    call = CallContext(method=METHOD, request_id="r-1", peer="ipv4:127.0.0.1:5")
    assert call.record == AuditRecord(
        principal="", method=METHOD, request_id="r-1", peer="ipv4:127.0.0.1:5"
    )
    assert call.record.outcome == "OK" and call.record.secret_names == []
    assert not call.audited


def test_set_principal_reaches_the_record() -> None:
    call = CallContext(method=METHOD, request_id="r", peer="p")
    call.set_principal("ci-bot", "resolver")
    assert (call.principal, call.role, call.record.principal) == ("ci-bot", "resolver", "ci-bot")


def test_records_are_per_call() -> None:
    first = CallContext(method=METHOD, request_id="a", peer="p")
    second = CallContext(method=METHOD, request_id="b", peer="p")
    first.record.secret_names.append("x")
    assert second.record.secret_names == []


def test_handlers_fill_the_current_calls_record() -> None:
    call = CallContext(method=METHOD, request_id="r", peer="p")

    def handler() -> None:
        audit_record().secret_names = ["stripe_key"]
        audit_record().tool = "t"
        mark_audited()

    ctx = contextvars.copy_context()
    ctx.run(current_call.set, call)
    ctx.run(handler)
    assert call.record.secret_names == ["stripe_key"] and call.record.tool == "t"
    assert call.audited
    with pytest.raises(LookupError):
        audit_record()  # outside any call


async def test_concurrent_calls_do_not_share_a_record() -> None:
    async def one(name: str) -> CallContext:
        call = CallContext(method=METHOD, request_id=name, peer="p")
        current_call.set(call)
        await asyncio.sleep(0)
        audit_record().secret_names = [name]
        await asyncio.sleep(0)
        return call

    calls = await asyncio.gather(*(asyncio.create_task(one(f"s{i}")) for i in range(20)))
    assert [c.record.secret_names for c in calls] == [[f"s{i}"] for i in range(20)]


def test_recorded_names_are_sanitized_before_writing() -> None:
    call = CallContext(method=METHOD, request_id="r", peer="p")
    call.record.secret_names = ["ok_name", "evil\r\nINFO forged", "x" * 300]
    sanitize_names(call)
    assert call.record.secret_names[0] == "ok_name"
    assert call.record.secret_names[1] == "evil??INFO forged"
    assert call.record.secret_names[2] == "x" * 128 + "..."


# ----------------------------------------------------------- the bounded queue


def _writer(queue_size: int) -> AuditWriter:
    # Never started: nothing is written, the sink is never reached (an attribute error
    # would fail the test).
    return AuditWriter(
        cast(AuditSink, object()), queue_size=queue_size, write_timeout=1.0, stall_threshold=0.1
    )


async def test_submit_stamps_the_time_and_a_full_queue_refuses_at_once() -> None:
    writer = _writer(2)
    before = datetime.now(UTC)
    first = AuditRecord(principal="p", method=METHOD, request_id="1", peer="x")
    writer.submit(first)
    assert first.time is not None and first.time >= before
    stamped = datetime(2020, 1, 1, tzinfo=UTC)
    second = AuditRecord("p", METHOD, "2", "x", time=stamped)
    writer.submit(second)
    assert second.time == stamped
    with pytest.raises(Unavailable) as info:
        writer.ensure_accepting()
    assert info.value.reason is Reason.AUDIT_UNAVAILABLE
    with pytest.raises(Unavailable):
        writer.submit(AuditRecord("p", METHOD, "3", "x"))


def test_peers_are_aggregated_by_address_without_the_port() -> None:
    assert peer_address("ipv4:10.0.0.7:51234") == "ipv4:10.0.0.7"
    assert peer_address("ipv6:[::1]:443") == "ipv6:[::1]"
    assert peer_address("unix:/run/vault.sock") == "unix:/run/vault.sock"


def test_missing_names_limiter_charges_only_missing_names_per_principal() -> None:
    limiter = MissingNamesLimiter(rate=1.0, burst=10)
    for _ in range(100):
        limiter.charge("load-test", 0)  # plain resolves are never charged
    limiter.charge("flooder", 10)  # the burst, spent
    with pytest.raises(ResourceExhausted) as info:
        limiter.charge("flooder", 1)
    assert info.value.reason is Reason.RATE_LIMITED
    assert info.value.retry_delay is not None and 0 < info.value.retry_delay <= 1.0
    limiter.charge("bystander", 10)  # another principal has its own bucket
    MissingNamesLimiter(rate=0, burst=1).charge("anyone", 10**6)  # rate 0: no limit
