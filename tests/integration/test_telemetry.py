"""Issue 13 items 1-2: Prometheus metrics over HTTP and OpenTelemetry spans."""

from __future__ import annotations

import asyncio
import glob
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import psutil
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg
from prometheus_client.mmap_dict import MmapedDict

from tests.support.cli import cli_env, finish, start_cli, start_serve
from tests.support.resolve import RAW, put_secrets, request
from tests.support.rpc import bearer
from tests.support.telemetry import metrics_address, scrape, scrape_text, traced, value
from tests.support.vault import VaultFactory, create_database
from vaultsvc.auth import hash_token, new_token
from vaultsvc.cli.common import EXIT_PORT_IN_USE
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres

RESOLVE = {"grpc_service": "interakt.vault.v1.ResolverService", "grpc_method": "ResolveTemplate"}
LIST = {"grpc_service": "interakt.vault.v1.SecretService", "grpc_method": "ListSecrets"}
TEMPLATE = "Bearer {{secret:metered_key}} and {{secret:metered_key}}"


async def _eventually(check: object, timeout: float = 10.0) -> None:
    """Poll an async predicate (the sampler copies state every second)."""
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("metric did not move in time")
        await asyncio.sleep(0.1)


async def test_metrics_move_as_calls_are_made(make_vault: VaultFactory) -> None:
    vault = await make_vault(metrics_listen="127.0.0.1:0")
    assert vault.runtime.metrics is not None
    address = vault.runtime.metrics.address
    await put_secrets(vault, {"metered_key": "sk_metered"})
    before = await scrape(address)
    stub = rpbg.ResolverServiceStub(vault.channel("resolver"))
    calls = 5
    for _ in range(calls):
        await stub.ResolveTemplate(request([("h", TEMPLATE, RAW)]), timeout=10)
    with_missing = request([("h", "{{secret:never_there}}", RAW)])
    try:
        await stub.ResolveTemplate(with_missing, timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.NOT_FOUND

    async def moved() -> bool:
        after = await scrape(address)
        return (
            value(after, "vaultsvc_cache_hits_total", kind="positive")
            - value(before, "vaultsvc_cache_hits_total", kind="positive")
            >= calls - 1
            and value(after, "vaultsvc_db_pool_connections", state="max") > 0
        )

    await _eventually(moved)
    after = await scrape(address)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vaultsvc_grpc_server_handled_total", **RESOLVE, grpc_code="OK") == calls
    assert delta("vaultsvc_grpc_server_handled_total", **RESOLVE, grpc_code="NOT_FOUND") == 1
    assert delta("vaultsvc_grpc_server_handling_seconds_count", **RESOLVE) == calls + 1
    assert delta("vaultsvc_resolves_total", outcome="OK") == calls
    assert delta("vaultsvc_resolves_total", outcome="NOT_FOUND") == 1
    # Two placeholders per OK call, one in the refused one.
    assert delta("vaultsvc_resolve_placeholders_count") == calls + 1
    assert delta("vaultsvc_resolve_placeholders_sum") == 2 * calls + 1
    assert delta("vaultsvc_audit_batch_size_count") >= 1
    assert delta("vaultsvc_audit_batch_size_sum") >= calls + 1
    assert value(after, "vaultsvc_cache_entries") >= 1
    assert value(after, "vaultsvc_build_info", version="0.1.0") == 1
    key_id = vault.master_keys.split(":")[0]
    # One wrap at CreateSecret: the budget left is the limit minus the stored count.
    assert value(after, "vaultsvc_master_key_nonce_budget_remaining", key_id=key_id) == 2**32 - 1
    # Labels hold method names and codes only.
    text = await scrape_text(address)
    assert "metered_key" not in text and "never_there" not in text and "sk_metered" not in text

    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"http://{address}/")).status_code == 404


async def test_rpc_span_continues_the_callers_trace(make_vault: VaultFactory) -> None:
    vault = await make_vault()
    await put_secrets(vault, {"metered_key": "sk_traced_value"})
    trace_id = uuid.uuid4().hex
    parent_id = uuid.uuid4().hex[:16]
    traceparent = f"00-{trace_id}-{parent_id}-01"
    stub = rpbg.ResolverServiceStub(vault.channel("resolver"))
    with traced() as exporter:
        call = stub.ResolveTemplate(
            request([("h", TEMPLATE, RAW)]), metadata=[("traceparent", traceparent)], timeout=10
        )
        await call
        request_id = dict(await call.trailing_metadata())["x-request-id"]
        spans = exporter.get_finished_spans()
    rpc = [s for s in spans if s.name == "interakt.vault.v1.ResolverService/ResolveTemplate"]
    assert len(rpc) == 1
    root = rpc[0]
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == trace_id
    assert f"{root.parent.span_id:016x}" == parent_id
    assert root.attributes is not None
    assert root.attributes["vaultsvc.outcome"] == "OK"
    assert root.attributes["vaultsvc.request_id"] == request_id
    assert root.attributes["vaultsvc.placeholders"] == 2
    assert root.attributes["vaultsvc.secrets"] == 1
    children = {s.name: s for s in spans if s.parent is not None and s is not root}
    for name in ("vault.db", "vault.decrypt", "vault.render"):
        child = children[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id, name
    dumped = "".join(s.to_json() for s in spans)
    for forbidden in ("sk_traced_value", "{{", "metered_key", "Bearer"):
        assert forbidden not in dumped


async def test_tracing_off_records_nothing(make_vault: VaultFactory) -> None:
    from vaultsvc.telemetry import tracing

    vault = await make_vault()
    assert not tracing.ON
    assert tracing.span("vault.db") is tracing.span("vault.render")  # the shared no-op
    await spbg.SecretServiceStub(vault.channel("admin")).ListSecrets(spb.ListSecretsRequest())


# ----------------------------------------------------------------- processes


async def _env(pg: EmbeddedPostgres, token: str, **extra: str) -> dict[str, str]:
    key_id, key = generate_master_key()
    return cli_env(
        await create_database(pg),
        f"{key_id}:{key}",
        VAULT_TOKENS=f"ops:admin:{hash_token(token).hex()}",
        **extra,
    )


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _worker_counts(pids: set[int]) -> dict[int, float]:
    """ListSecrets calls each worker recorded, read from its own multiprocess file."""
    counts = dict.fromkeys(pids, 0.0)
    for pid in pids:
        directory = psutil.Process(pid).environ()["PROMETHEUS_MULTIPROC_DIR"]
        for path in glob.glob(os.path.join(directory, f"counter_{pid}.db")):
            for entry in MmapedDict.read_all_values_from_file(path):
                key, val = entry[0], entry[1]
                if '"ListSecrets"' in key and "handled" in key:
                    counts[pid] += val
    return counts


async def test_workers_add_up(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    token = new_token()
    env = await _env(pg, token, VAULT_WORKERS="2", VAULT_METRICS_LISTEN="127.0.0.1:0")
    serve = await start_serve(env, tmp_path / "serve.log")
    directory = ""
    try:
        address = metrics_address(serve.stderr())
        assert address is not None, serve.stderr()
        pids = {
            c.pid
            for c in psutil.Process(serve.proc.pid).children()
            if "spawn_main" in " ".join(c.cmdline())
        }
        assert len(pids) == 2
        directory = psutil.Process(next(iter(pids))).environ()["PROMETHEUS_MULTIPROC_DIR"]
        assert os.stat(directory).st_mode & 0o777 == 0o700
        made = 0
        # Separate connections until the kernel has given calls to both workers.
        while made < 400 and min(_worker_counts(pids).values()) == 0:
            for _ in range(10):
                async with grpc.aio.insecure_channel(
                    serve.address, options=[("grpc.use_local_subchannel_pool", 1)]
                ) as channel:
                    await spbg.SecretServiceStub(channel).ListSecrets(
                        spb.ListSecretsRequest(), metadata=bearer(token), timeout=10
                    )
                made += 1
        per_worker = _worker_counts(pids)
        assert min(per_worker.values()) > 0, per_worker
        scraped = await scrape(address)
        total = value(scraped, "vaultsvc_grpc_server_handled_total", **LIST, grpc_code="OK")
        assert total == made == sum(per_worker.values())
        assert value(scraped, "vaultsvc_grpc_server_handling_seconds_count", **LIST) == made
        assert value(scraped, "vaultsvc_build_info", version="0.1.0") == 1
        # livesum: both workers' pools.
        assert value(scraped, "vaultsvc_db_pool_connections", state="max") >= 2
    finally:
        assert await serve.stop() == 0, serve.stderr()[-3000:]
    assert directory and not _exists(directory), "the supervisor removes its directory"


async def test_metrics_port_in_use_is_one_line(pg: EmbeddedPostgres) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for workers in ("1", "2"):
            env = await _env(
                pg, new_token(), VAULT_METRICS_LISTEN=f"127.0.0.1:{port}", VAULT_WORKERS=workers
            )
            done = await finish(await start_cli(["serve"], env), timeout=60)
            assert done.returncode == EXIT_PORT_IN_USE, done.output
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, done.stderr
            assert f"cannot listen on 127.0.0.1:{port} (metrics)" in lines[0]
            assert "Traceback" not in done.output
    finally:
        taken.close()


# --------------------------------------------------------------- without OpenTelemetry

_WITHOUT_OTEL = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("not installed: " + name)
        return None

sys.meta_path.insert(0, Blocker())
import vaultsvc.cli.serve, vaultsvc.server
from vaultsvc.telemetry import tracing
tracing.configure({})
assert not tracing.ON
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
try:
    tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
except tracing.TracingUnavailable as exc:
    print(exc)
"""


async def test_server_needs_no_opentelemetry_while_tracing_is_off() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WITHOUT_OTEL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "pip install 'vaultsvc[otel]'" in out.decode()


def test_which_otel_variables_turn_tracing_on() -> None:
    from vaultsvc.telemetry.tracing import wanted

    assert not wanted({})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
