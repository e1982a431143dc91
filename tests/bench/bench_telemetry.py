"""What metrics and tracing cost a resolve: off (the default), metrics on, tracing on.

``python -m tests.bench.bench_telemetry [--mode off|metrics|tracing] [--calls N]``

Starts an embedded Postgres and an in-process vault, creates one secret, then times
``--calls`` sequential ResolveTemplate calls (two placeholders) over a real channel, after
a warm-up, in ``--rounds`` rounds; prints the mean and median latency and the CPU per call
of this process (client and server share it). ``--micro`` times the hooks alone (one RPC's
worth: rpc start and end, placeholders, the db/decrypt/render spans) without a vault.

The script only uses what existed before telemetry (``tests.support.vault``), so the same
file run against a checkout without telemetry (``PYTHONPATH=<checkout>``) gives the
baseline of ``--mode off``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from collections.abc import Sequence
from typing import Any

from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.support.vault import create_database, start_embedded, start_vault

TEMPLATE = "Bearer {{secret:bench_key}} / {{secret:bench_key}}"


def _enable(mode: str) -> Any:
    if mode == "metrics":
        from vaultsvc.telemetry import metrics

        metrics.enable()
    elif mode == "tracing":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from vaultsvc.telemetry import tracing

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing.install(provider)
        return exporter
    return None


async def _resolve_rounds(mode: str, calls: int, rounds: int) -> None:
    pg = start_embedded("vaultsvc-bench-telemetry-")
    try:
        vault = await start_vault(await create_database(pg))
        try:
            exporter = _enable(mode)
            admin = spbg.SecretServiceStub(vault.channel("admin"))
            await admin.CreateSecret(spb.CreateSecretRequest(name="bench_key", value="sk_bench"))
            stub = rpbg.ResolverServiceStub(vault.channel("resolver"))
            request = rpb.ResolveTemplateRequest(
                fields=[rpb.TemplateField(key="h", template=TEMPLATE)], tool="bench"
            )
            for _ in range(300):  # warm-up: channel, cache, pool
                await stub.ResolveTemplate(request)
            for index in range(rounds):
                latencies: list[float] = []
                cpu = time.process_time()
                for _ in range(calls):
                    started = time.perf_counter()
                    await stub.ResolveTemplate(request)
                    latencies.append(time.perf_counter() - started)
                    if exporter is not None:
                        exporter.clear()
                cpu = time.process_time() - cpu
                print(
                    f"mode={mode} round={index + 1} calls={calls} "
                    f"mean_us={statistics.fmean(latencies) * 1e6:.0f} "
                    f"p50_us={statistics.median(latencies) * 1e6:.0f} "
                    f"cpu_us_per_call={cpu / calls * 1e6:.0f}",
                    flush=True,
                )
        finally:
            await vault.close()
    finally:
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)


async def _micro(mode: str, calls: int) -> None:
    from vaultsvc import telemetry
    from vaultsvc.audit import CallContext
    from vaultsvc.telemetry import tracing

    _enable(mode)
    call = CallContext(
        method="/interakt.vault.v1.ResolverService/ResolveTemplate", request_id="r", peer=""
    )
    metadata: dict[str, str] = {}

    class Compiled:
        placeholders = (1, 2)

    compiled = [Compiled()]
    started = time.perf_counter()
    for _ in range(calls):
        telemetry.rpc_start(call.method, metadata)
        telemetry.placeholders(compiled)
        async with tracing.span("vault.db"):
            pass
        with tracing.span("vault.decrypt", "secrets", 1):
            pass
        with tracing.span("vault.render", "fields", 1):
            pass
        telemetry.rpc_done(call, "OK", started)
    elapsed = time.perf_counter() - started
    print(f"micro mode={mode} hooks_per_rpc_ns={elapsed / calls * 1e9:.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("off", "metrics", "tracing"), default="off")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro", action="store_true", help="the hooks alone, no vault")
    args = parser.parse_args(argv)
    if args.micro:
        asyncio.run(_micro(args.mode, args.calls))
    else:
        asyncio.run(_resolve_rounds(args.mode, args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
