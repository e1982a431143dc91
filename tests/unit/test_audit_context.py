"""The audit trail's pure parts: the per-call context and record, the context variable
handlers use, and the bounded buffer's fail-closed accounting (no database is reached)."""

from __future__ import annotations

import asyncio
import contextvars
from datetime import UTC, datetime
from typing import cast

import pytest

from vaultsvc.api.interceptor import _sanitize_names
from vaultsvc.audit import AuditWriter, CallContext, audit_record, current_call, mark_audited
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import Reason, Unavailable
from vaultsvc.storage.repository import Repository

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
    _sanitize_names(call)
    assert call.record.secret_names[0] == "ok_name"
    assert call.record.secret_names[1] == "evil??INFO forged"
    assert call.record.secret_names[2] == "x" * 128 + "..."


# --------------------------------------------------------- the bounded buffer


def _writer(buffer_size: int) -> AuditWriter:
    # Nothing here flushes: the repository is never reached (an attribute error would fail).
    return AuditWriter(
        cast(Repository, object()), buffer_size=buffer_size, batch_size=100, flush_interval=0.2
    )


def test_enqueue_stamps_the_time_and_refuses_when_full() -> None:
    writer = _writer(2)
    before = datetime.now(UTC)
    first = AuditRecord(principal="p", method=METHOD, request_id="1", peer="x")
    writer.enqueue(first)
    assert first.time is not None and first.time >= before
    stamped = datetime(2020, 1, 1, tzinfo=UTC)
    writer.enqueue(AuditRecord("p", METHOD, "2", "x", time=stamped))
    with pytest.raises(Unavailable) as info:
        writer.ensure_accepting()
    assert info.value.reason is Reason.AUDIT_UNAVAILABLE
    with pytest.raises(Unavailable):
        writer.enqueue(AuditRecord("p", METHOD, "3", "x"))
    assert writer.healthy  # full is not unhealthy: it drains once flushed


def test_an_unhealthy_writer_fails_closed_even_when_empty() -> None:
    writer = _writer(10)
    writer.ensure_accepting()
    writer._mark(healthy=False)
    with pytest.raises(Unavailable) as info:
        writer.enqueue(AuditRecord("p", METHOD, "1", "x"))
    assert info.value.reason is Reason.AUDIT_UNAVAILABLE
    writer._mark(healthy=True)
    writer.enqueue(AuditRecord("p", METHOD, "1", "x"))
