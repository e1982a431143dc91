"""Metrics and tracing helpers: scrape ``/metrics`` over HTTP, trace into memory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from vaultsvc.telemetry import tracing


@dataclass
class Telemetry:
    """What the ``telemetry`` fixture gives a test."""

    metrics_address: str
    spans: InMemorySpanExporter

    def spans_json(self) -> str:
        return "".join(span.to_json() for span in self.spans.get_finished_spans())


_METRICS = re.compile(r'metrics="([^"]+)"')


async def scrape_text(address: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(f"http://{address}/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return reply.text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels), via prometheus_client's parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(await scrape_text(address))


def value(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_address(log_text: str) -> str | None:
    """The ``/metrics`` address from a ``vault listening`` line (JSON or text format)."""
    for line in log_text.splitlines():
        if "vault listening" not in line:
            continue
        text = line.strip()
        if text.startswith("{"):
            address = json.loads(text).get("metrics")
            return str(address) if address else None
        found = _METRICS.search(text)
        return found.group(1) if found else None
    return None


@contextmanager
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()
