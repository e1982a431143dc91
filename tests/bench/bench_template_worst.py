"""How long the worst template requests within the limits hold the event loop.

Run with ``.venv/bin/python -m tests.bench.bench_template_worst``. Each request goes
through the vault's own ``Vault.resolve`` / ``Vault.check`` (the code a ResolveTemplate
or CheckTemplate call runs after decoding its message). The requests below name no
secret or config that exists, or only inputs, so the calls never await the database:
the time measured is exactly the time one call holds the loop without yielding.

The requests are the worst ones found within API.md's limits (1000 placeholders,
1000 inputs, 1 MiB per field, 4 MiB per request, 8 Mi characters of reply):

- url-1000x8000-emoji: a URL query of 1000 x ``{{input.x}}``, x = 8000 emoji
  (percent-encodes to 96 Mi characters: refused as RESPONSE_TOO_LARGE);
- url-1000-distinct: 1000 different inputs of 1000 emoji each (4 MB of request);
- url-largest-accepted: one input whose encoding just fits the reply limit;
- header-1000x8000-emoji: the same 1000 x 8000 emoji in a header (no encoding);
- check-4x1MB-prefixes: CheckTemplate of 4 fields of 1 MiB of ``{{secret:``;
- check-1MB-valid: CheckTemplate of 1 MiB of valid ``{{input.a}}`` (87 k placeholders);
- resolve-1MB-valid: the same field in a resolve.

Measured on the 2-core development machine while other test suites ran (best of 3, ms;
"before" is the engine before limits were checked while scanning, values encoded once
per request and the reply size computed before rendering):

    request                   before    after
    url-1000x8000-emoji         1569        1
    url-1000-distinct            176       17
    url-largest-accepted         103..325  100..265  (one ~2.8 MB value percent-encoded)
    header-1000x8000-emoji        26       15
    check-4x1MB-prefixes         770..1450 ~140..300
    check-1MB-valid              295        3
    resolve-1MB-valid            283        5

The largest accepted reply is now the worst case: the time goes into percent-encoding
8 Mi characters once (urllib's quote); the reply limit bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vaultsvc.core import Field, Vault

from vaultsvc.domain import AuditRecord
from vaultsvc.errors import VaultError

URL, HEADER = 2, 3
MIB = 1024 * 1024
EMOJI = "\U0001f600"


def audit() -> AuditRecord:
    return AuditRecord(principal="bench", method="ResolveTemplate", request_id="r", peer="p")


def cases(vault: Vault) -> dict[str, Callable[[], Awaitable[Any]]]:
    query_1000 = "https://h.example/?q=" + "{{input.x}}" * 1000
    distinct = "https://h.example/?" + "&".join(f"i{n}={{{{input.i{n}}}}}" for n in range(1000))
    prefixes = "{{secret:" * ((MIB - 16) // 9)
    valid = "https://h.example/?q=" + "{{input.a}}" * ((MIB - 40) // 11)
    # 699 050 emoji percent-encode to 8 388 600 characters, just under 8 Mi.
    largest = EMOJI * ((8 * MIB - 40) // 12)
    return {
        "url-1000x8000-emoji": lambda: vault.resolve(
            [Field("f", query_1000, URL)], {"x": EMOJI * 8000}, audit()
        ),
        "url-1000-distinct": lambda: vault.resolve(
            [Field("f", distinct, URL)], {f"i{n}": EMOJI * 1000 for n in range(1000)}, audit()
        ),
        "url-largest-accepted": lambda: vault.resolve(
            [Field("f", "https://h.example/?q={{input.x}}", URL)], {"x": largest}, audit()
        ),
        "header-1000x8000-emoji": lambda: vault.resolve(
            [Field("f", "Bearer " + "{{input.x}}" * 1000, HEADER)], {"x": EMOJI * 8000}, audit()
        ),
        "check-4x1MB-prefixes": lambda: vault.check(
            [Field(f"f{n}", prefixes, URL) for n in range(4)]
        ),
        "check-1MB-valid": lambda: vault.check([Field("f", valid, URL)]),
        "resolve-1MB-valid": lambda: vault.resolve([Field("f", valid, URL)], {"a": "1"}, audit()),
    }


async def measure(repeat: int) -> None:
    # No case reaches the repository or the envelope (no secret or config exists).
    vault = Vault(repository=None, envelope=None)  # type: ignore[arg-type]
    print(f"{'request':26} {'worst ms':>10} {'best ms':>10}  outcome")
    for name, call in cases(vault).items():
        times: list[float] = []
        outcome = ""
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                result = await call()
                outcome = "ok" if not isinstance(result, tuple) else "ok (check)"
            except VaultError as exc:
                outcome = f"{exc.code.name} {exc.reason}"
            times.append(time.perf_counter() - started)
        print(f"{name:26} {max(times) * 1000:10.1f} {min(times) * 1000:10.1f}  {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(max(1, min(args.repeat, 20))))


if __name__ == "__main__":
    main()
