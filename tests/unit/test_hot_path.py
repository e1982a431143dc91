"""What the resolve hot path keeps between calls, and the shortcuts it takes (issue 9).

Kept per object, never plaintext and never a data key: the AADs of a ``SecretContext``
(keyed by key id), a cached sealed row's ``SecretContext``, a compiled URL template's
literal host. Shortcuts that must give exactly the long way's answer: ``safe_label`` of a
clean label, the text log's string encoding, the audit writer's commit without polling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest

import vaultsvc.templates.compiler as compiler_module
from vaultsvc.api.frontdoor import FrontDoor, receive_one
from vaultsvc.audit import STALL_TICK, AuditWriter
from vaultsvc.config import Settings
from vaultsvc.crypto import (
    DecryptionFailed,
    Envelope,
    SecretContext,
    generate_master_key,
    parse_master_keys,
)
from vaultsvc.domain import AuditRecord, safe_label
from vaultsvc.errors import DeadlineExceeded, InvalidArgument, Reason, Unavailable
from vaultsvc.logs import JsonFormatter, _dumps
from vaultsvc.storage.repository import SealedRow
from vaultsvc.templates import CACHEABLE_TEMPLATE_LENGTH, Encoding, compile_template
from vaultsvc.templates.compiler import CACHE_SIZE
from vaultsvc.templates.hosts import normalise_host


def _keys(*ids: str) -> str:
    return ",".join(f"{key_id}:{generate_master_key()[1]}" for key_id in ids)


# ----------------------------------------------------------------- AAD cache


def test_the_aad_cache_is_keyed_by_key_id_and_never_lets_a_moved_value_open() -> None:
    spec = _keys("key-a", "key-b")
    old = Envelope(parse_master_keys(spec))  # primary key-a
    new = Envelope(parse_master_keys(",".join(reversed(spec.split(",")))))  # primary key-b
    ctx = SecretContext(str(uuid.uuid4()), "api_key", 1)
    under_a = old.seal(b"v1", ctx)
    under_b = new.rewrap(under_a, ctx)
    assert (under_a.key_id, under_b.key_id) == ("key-a", "key-b")
    # One context, opened under both keys, in both orders: each key id has its own AAD.
    for _ in range(2):
        assert new.open(under_a, ctx) == b"v1"
        assert new.open(under_b, ctx) == b"v1"
    # A warm cache does not make a value open under another identity.
    for other in (
        SecretContext(ctx.secret_id, "api_key", 2),
        SecretContext(ctx.secret_id, "other", 1),
        SecretContext(str(uuid.uuid4()), "api_key", 1),
    ):
        with pytest.raises(DecryptionFailed):
            new.open(under_b, other)
    # Relabelling the key id still fails, also with the AADs of both ids cached.
    with pytest.raises(DecryptionFailed):
        new.open(dataclasses.replace(under_b, key_id="key-a"), ctx)
    # The cache is not part of the identity.
    fresh = SecretContext(ctx.secret_id, "api_key", 1)
    assert fresh == ctx and hash(fresh) == hash(ctx)
    # (the random id is blanked first: its hex may spell "aad", about 1 run in 140)
    assert "aad" not in repr(ctx).replace(ctx.secret_id, "<id>")


def test_a_cached_row_builds_its_context_once_and_a_new_version_gets_its_own() -> None:
    envelope = Envelope(parse_master_keys(_keys("k1")))
    secret_id = uuid.uuid4()
    sealed = envelope.seal(b"v", SecretContext(str(secret_id), "db_password", 3))
    row = SealedRow(id=secret_id, name="db_password", value_version=3, sealed=sealed)
    assert row.context is row.context
    assert row.context == SecretContext(str(secret_id), "db_password", 3)
    assert envelope.open(row.sealed, row.context) == b"v"
    newer = dataclasses.replace(row, value_version=4)
    assert newer.context.value_version == 4
    with pytest.raises(DecryptionFailed):
        envelope.open(newer.sealed, newer.context)
    assert row == SealedRow(id=secret_id, name="db_password", value_version=3, sealed=sealed)


# ------------------------------------------------- compiled-template cache


def _no_config(key: str) -> str:
    raise AssertionError(f"config {key} read")


def test_compiled_templates_are_cached_by_text_and_encoding_bounded_and_small_only() -> None:
    cached = compiler_module._analyse_cached
    cached.cache_clear()
    text = "https://api.example.com/{{input.id}}?k={{secret:k}}"
    as_url = compile_template(text, Encoding.URL)
    assert compile_template(text, Encoding.URL) is as_url  # a hit: the same object
    as_raw = compile_template(text, Encoding.RAW)  # same text, another encoding: its own
    assert as_raw is not as_url
    assert (as_url.destination_host(_no_config), as_raw.encoding) == (
        "api.example.com",
        Encoding.RAW,
    )
    assert cached.cache_info().currsize == 2
    # Bounded: CACHE_SIZE entries at most, least recently used out first.
    for i in range(CACHE_SIZE + 10):
        compile_template(f"Bearer {{{{secret:k{i}}}}}", Encoding.HEADER)
    assert cached.cache_info().currsize == CACHE_SIZE
    assert compile_template(text, Encoding.URL) is not as_url  # evicted, compiled again
    # A large template is never kept (its text would pin memory).
    large = "x" * CACHEABLE_TEMPLATE_LENGTH + "{{secret:k}}"
    before = cached.cache_info().currsize
    misses = cached.cache_info().misses
    compile_template(large, Encoding.RAW)
    assert cached.cache_info().currsize == before and cached.cache_info().misses == misses


# ------------------------------------------------------- compiled URL hosts


def test_a_literal_origin_host_is_worked_out_at_compile_time_a_config_one_per_call() -> None:
    literal = compile_template("https://API.Example.COM:8443/v1?k={{secret:k}}", Encoding.URL)
    assert literal.destination_host(_no_config) == (
        normalise_host("API.Example.COM:8443", allow_port=True)
    )
    assert (
        compile_template("Bearer {{secret:k}}", Encoding.HEADER).destination_host(lambda key: "")
        is None
    )

    from_config = compile_template("{{config:base}}/v1?k={{secret:k}}", Encoding.URL)
    for base, host in (
        ("https://one.example.com", "one.example.com"),
        ("https://two.example.com", "two.example.com"),
    ):
        assert from_config.destination_host({"base": base}.__getitem__) == host
    with pytest.raises(InvalidArgument):
        from_config.destination_host(lambda key: "not a url")


# ------------------------------------------------------------- shortcuts


@pytest.mark.parametrize(
    "text",
    ["", "payments_api_key", "x" * 64, "x" * 65, "a\nb", "tab\there", "é\u2028", "\x00" * 70],
)
def test_safe_label_of_a_clean_label_is_the_label_and_the_rest_is_cleaned(text: str) -> None:
    expected = "".join(c if c.isprintable() else "?" for c in text[:64])
    expected += "..." if len(text) > 64 else ""
    assert safe_label(text, 64) == expected


@pytest.mark.parametrize(
    "value", ["plain", 'quote " and \\ slash', "line\nbreak\r", "é ü \u2028", "\ud800", 3, None]
)
def test_the_text_log_encodes_values_exactly_as_json_dumps(value: object) -> None:
    assert _dumps(value) == json.dumps(value, default=str)


# ------------------------------------------------------------- admission


async def test_admit_and_dismiss_hold_a_slot_and_count_overload_refusals() -> None:
    frontdoor = FrontDoor(Settings(max_concurrent_rpcs=1, max_queued_rpcs=1, max_queue_wait=0.05))
    granted = await frontdoor.admit(time.monotonic() + 10)
    assert frontdoor.admission.running == 1
    with pytest.raises(Unavailable) as caught:  # queued for 50 ms, then shed
        await frontdoor.admit(time.monotonic() + 10)
    assert caught.value.reason is Reason.OVERLOADED
    assert frontdoor.refused["overloaded"] == 1
    frontdoor.dismiss(granted)
    assert frontdoor.admission.running == 0
    again = await frontdoor.admit(time.monotonic() + 10)
    frontdoor.dismiss(again)
    assert frontdoor.admission.running == 0


# ------------------------------------------------------------- audit writer


class _Sink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[list[str]] = []

    async def insert(self, records: Sequence[AuditRecord]) -> None:
        await asyncio.sleep(self.delay)
        self.batches.append([r.request_id for r in records])

    async def close(self) -> None:
        return None


def _record(request_id: str) -> AuditRecord:
    return AuditRecord(principal="p", method="/m", request_id=request_id, peer="ipv4:127.0.0.1")


async def test_a_waiter_that_goes_away_still_has_its_event_written_with_its_batch() -> None:
    sink = _Sink(delay=0.05)
    writer = AuditWriter(sink, queue_size=100, write_timeout=2.0, stall_threshold=1.0)
    writer.start()
    try:
        first = asyncio.create_task(writer.commit(_record("first")))
        await asyncio.sleep(0.01)  # "first" is in flight; the next two wait for the next batch
        gone = asyncio.create_task(writer.commit(_record("gone")))
        stays = asyncio.create_task(writer.commit(_record("stays")))
        await asyncio.sleep(0)
        gone.cancel()
        await first
        await stays
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert sink.batches == [["first"], ["gone", "stays"]]
    finally:
        await writer.stop()


async def test_a_commit_counts_free_loop_ticks_only_while_it_is_in_flight() -> None:
    sink = _Sink(delay=10 * STALL_TICK)
    writer = AuditWriter(sink, queue_size=100, write_timeout=2.0, stall_threshold=1.0)
    writer.start()
    try:
        await writer.commit(_record("slow"))
        ticks = writer._inflight_ticks
        assert 5 <= ticks <= 10  # about one per STALL_TICK of the 10 it took
        await asyncio.sleep(5 * STALL_TICK)
        assert writer._inflight_ticks == ticks  # no timer left running after the commit
        sink.delay = 0
        await writer.commit(_record("fast"))
        assert writer._inflight_ticks == 0
    finally:
        await writer.stop()


# ------------------------------------------------------------- request iterator


class _Requests:
    """Like grpc's request iterator: each ``aiter`` is a fresh async generator."""

    def __init__(self, messages: list[str], wait: float = 0.0) -> None:
        self.messages = messages
        self.wait = wait
        self.generators: list[AsyncIterator[str]] = []

    def __aiter__(self) -> AsyncIterator[str]:
        generator = self._generate()
        self.generators.append(generator)
        return generator

    async def _generate(self) -> AsyncIterator[str]:
        await asyncio.sleep(self.wait)
        for message in self.messages:
            yield message


async def test_receive_one_closes_the_request_iterator_on_every_outcome() -> None:
    requests = _Requests(["first", "second"])
    assert await receive_one(requests, time.monotonic() + 5) == "first"
    empty = _Requests([])
    with pytest.raises(InvalidArgument):
        await receive_one(empty, time.monotonic() + 5)
    slow = _Requests(["late"], wait=5)
    with pytest.raises(DeadlineExceeded):
        await receive_one(slow, time.monotonic() + 0.01)
    for source in (requests, empty, slow):
        (generator,) = source.generators
        assert generator.ag_frame is None  # type: ignore[attr-defined]  # closed, not left to GC


def test_the_json_log_line_is_what_json_dumps_gives() -> None:
    record = logging.LogRecord("vaultsvc.access", logging.INFO, __file__, 1, "rpc", None, None)
    when = datetime.fromtimestamp(0, UTC)
    record.__dict__.update(secret_names=["a", "é"], peer="ipv4:127.0.0.1:1\n", when=when)
    line = JsonFormatter().format(record)
    payload = json.loads(line)
    assert payload["secret_names"] == ["a", "é"] and payload["when"] == str(when)
    assert line == json.dumps(payload, default=str, ensure_ascii=False)
    assert "\n" not in line
