"""The audit stall check blames the database, not a busy event loop (issue 15 items 3/4).

Under CPU overload the loop may take longer than ``audit_stall_threshold`` to get round to
a commit the database answered at once; that commit is healthy and must not refuse calls
with AUDIT_UNAVAILABLE. A commit the database does not answer still does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from vaultsvc.audit import AuditWriter
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import Reason, Unavailable


class Sink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.inserted: list[AuditRecord] = []
        self.release = asyncio.Event()

    async def insert(self, records: Sequence[AuditRecord]) -> None:
        if self.delay < 0:
            await self.release.wait()  # the database does not answer
        else:
            await asyncio.sleep(self.delay)
        self.inserted.extend(records)

    async def close(self) -> None:
        return None


def _hold_the_loop(seconds: float) -> None:
    """CPU-bound work on the event loop's thread, as an overloaded server does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _record() -> AuditRecord:
    return AuditRecord(principal="p", method="/m", request_id="r", peer="ipv4:127.0.0.1")


async def test_a_busy_loop_does_not_make_a_fast_commit_look_stuck() -> None:
    sink = Sink(delay=0.005)
    writer = AuditWriter(sink, queue_size=100, write_timeout=2.0, stall_threshold=0.05)
    writer.start()
    try:
        done = writer.submit(_record())
        await asyncio.sleep(0)  # the commit starts
        _hold_the_loop(0.2)  # other calls hold the loop 4x the stall threshold
        writer.ensure_accepting()  # the commit is not stuck: nothing had a chance to answer
        await done
        assert len(sink.inserted) == 1
    finally:
        await writer.stop()


async def test_a_commit_the_database_does_not_answer_refuses_new_calls_fast() -> None:
    sink = Sink(delay=-1)
    writer = AuditWriter(sink, queue_size=100, write_timeout=2.0, stall_threshold=0.05)
    writer.start()
    try:
        done = writer.submit(_record())
        await asyncio.sleep(0.15)  # an idle loop: the database has had its chance
        with pytest.raises(Unavailable) as caught:
            writer.ensure_accepting()
        assert caught.value.reason is Reason.AUDIT_UNAVAILABLE
        sink.release.set()
        await done
        writer.ensure_accepting()  # answered: accepting again
    finally:
        await writer.stop()
