"""`python -m vaultsvc token create` and `dev`, run as real subprocesses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import access_service_pb2_grpc as tgrpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.cli import run_cli, start_cli
from tests.support.rpc import bearer
from tests.support.vault import create_database
from vaultsvc.config import load_settings
from vaultsvc.crypto import generate_master_key
from vaultsvc.server import Runtime, start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres


@pytest.fixture
async def runtimes() -> AsyncIterator[list[Runtime]]:
    started: list[Runtime] = []
    yield started
    for runtime in started:
        await stop_server(runtime, grace=0.5)


async def test_token_create_prints_a_fresh_token_and_its_hash_line(
    pg: EmbeddedPostgres, runtimes: list[Runtime], tmp_path: Path
) -> None:
    done = await run_cli(["token", "create", "--principal", "ci-bot", "--role", "resolver"])
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    tokens = re.findall(r"^\s+(vt_[A-Za-z0-9_-]{40,})\s*$", out, re.MULTILINE)
    assert len(tokens) == 1, out
    token = tokens[0]
    digest = hashlib.sha256(token.encode()).hexdigest()
    entry = re.search(r"VAULT_TOKENS entry : (\S+)", out)
    assert entry is not None, out
    assert entry.group(1) == f"ci-bot:resolver:{digest}"
    assert out.count(token) == 1, "the token is printed exactly once"

    # The TOML lines parse to the same entry.
    toml_lines = out[out.index("[[tokens]]") :].splitlines()
    (tmp_path / "vault.toml").write_text(
        "\n".join(line.strip() for line in toml_lines) + "\n", encoding="utf-8"
    )
    from_toml = load_settings(tmp_path / "vault.toml", env={}).tokens
    assert [(t.principal, t.role, t.sha256.hex()) for t in from_toml] == [
        ("ci-bot", "resolver", digest)
    ]

    # A second run gives a different token.
    again = (
        await run_cli(["token", "create", "--principal", "ci-bot", "--role", "resolver"])
    ).stdout
    assert token not in again

    # A server configured with that line (and nothing else) accepts the token.
    key_id, key = generate_master_key()
    settings = load_settings(
        None,
        env={
            "VAULT_TOKENS": entry.group(1),
            "VAULT_MASTER_KEYS": f"{key_id}:{key}",
            "VAULT_DATABASE_URL": await create_database(pg),
            "VAULT_LISTEN": "127.0.0.1:0",
        },
    )
    runtime = await start_server(settings)
    runtimes.append(runtime)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        resolver = rgrpc.ResolverServiceStub(channel)
        field = rpb.TemplateField(key="k", template="plain")
        reply = await resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[field], tool="t"), metadata=bearer(token), timeout=5
        )
        assert [f.value for f in reply.fields] == ["plain"]
        # The role from the line applies: a resolver is not an admin.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await sgrpc.SecretServiceStub(channel).ListSecrets(
                spb.ListSecretsRequest(), metadata=bearer(token), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The hash itself is not a credential.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await resolver.ResolveTemplate(
                rpb.ResolveTemplateRequest(fields=[field]), metadata=bearer(digest), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    rows = await asyncio.wait_for(_principals(runtime), timeout=10)
    assert "ci-bot" in rows


async def _principals(runtime: Runtime) -> set[str]:
    await runtime.audit.flush()
    async with runtime.db.connection() as conn:
        return {r["principal"] for r in await conn.fetch("SELECT principal FROM audit_events")}


@pytest.mark.parametrize(
    "args",
    [
        ("--principal", "ci-bot", "--role", "root"),
        ("--principal", "bad name", "--role", "admin"),
        ("--principal", "ci-bot"),
    ],
)
async def test_token_create_rejects_bad_arguments(args: tuple[str, ...]) -> None:
    done = await run_cli(["token", "create", *args])
    assert done.returncode != 0
    assert "vt_" not in done.stdout


async def test_dev_prints_one_working_token_per_role(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VAULT_DATABASE_URL": await create_database(pg),
        "VAULT_DATA_DIR": str(tmp_path / "dev"),
        "VAULT_LISTEN": "127.0.0.1:0",
        "VAULT_CONSOLE_LISTEN": "127.0.0.1:0",
        "VAULT_METRICS_LISTEN": "127.0.0.1:0",
    }
    env.pop("VAULT_MASTER_KEYS", None)
    env.pop("VAULT_TOKENS", None)
    stderr_path = tmp_path / "dev.err"
    with stderr_path.open("wb") as stderr:
        proc = await start_cli(["dev"], env, stderr=stderr.fileno())
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        # The ready message ends with a rule of '#' after the "Ctrl-C" hint.
        while not (banner and banner[-1].startswith("#" * 80) and "Ctrl-C" in "".join(banner)):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line, f"dev exited early: {stderr_path.read_text(errors='replace')}"
            banner.append(line.decode())
        text = "".join(banner)
        assert "NOT FOR PRODUCTION" in text
        tokens = dict(re.findall(r"^\s+(admin|viewer|resolver) token\s*:\s*(vt_\S+)$", text, re.M))
        assert set(tokens) == {"admin", "viewer", "resolver"}, text
        assert len(set(tokens.values())) == 3
        # A fourth line: the operator's token, which mints resolver tokens (AccessService).
        operator = re.search(r"^\s+operator token\s*:\s*(vt_\S+) ", text, re.M)
        assert operator is not None and operator.group(1) not in tokens.values(), text
        address = re.search(r"listening on\s*:\s*(127\.0\.0\.1:\d+)", text)
        assert address is not None and not address.group(1).endswith(":0"), text
        # The console asked for port 0: the banner names the port actually bound.
        console = re.search(r"console\s*:\s*(http://127\.0\.0\.1:([1-9]\d*)/)", text)
        assert console is not None, text
        # Metrics are on in dev; the banner says where (the port actually bound).
        metrics = re.search(r"metrics\s*:\s*(http://127\.0\.0\.1:[1-9]\d*/metrics)", text)
        assert metrics is not None, text
        async with httpx.AsyncClient(timeout=10) as http:
            login = await http.get(console.group(1) + "login")
            assert login.status_code == 200 and "Sign in" in login.text
            scraped = await http.get(metrics.group(1))
            assert scraped.status_code == 200 and "vaultsvc_build_info" in scraped.text

        creds = tmp_path / "dev" / "dev-credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600

        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            secrets = sgrpc.SecretServiceStub(channel)
            resolver = rgrpc.ResolverServiceStub(channel)
            await secrets.CreateSecret(
                spb.CreateSecretRequest(name="dev_key", value="dev-value"),
                metadata=bearer(tokens["admin"]),
                timeout=10,
            )
            got = await secrets.GetSecret(
                spb.GetSecretRequest(name="dev_key"), metadata=bearer(tokens["viewer"]), timeout=10
            )
            assert got.name == "dev_key"
            field = rpb.TemplateField(key="k", template="{{secret:dev_key}}")
            reply = await resolver.ResolveTemplate(
                rpb.ResolveTemplateRequest(fields=[field], tool="dev"),
                metadata=bearer(tokens["resolver"]),
                timeout=10,
            )
            assert reply.fields[0].value == "dev-value"
            for role in ("admin", "viewer"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await resolver.ResolveTemplate(
                        rpb.ResolveTemplateRequest(fields=[field]),
                        metadata=bearer(tokens[role]),
                        timeout=10,
                    )
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            minted = await tgrpc.AccessServiceStub(channel).CreateToken(
                tpb.CreateTokenRequest(principal="dev-ci", role="resolver"),
                metadata=bearer(operator.group(1)),
                timeout=10,
            )
            assert minted.token.startswith("vt_")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert code == 0, stderr_path.read_text(errors="replace")
    log = stderr_path.read_text(errors="replace")
    assert "dev-value" not in log
    for token in tokens.values():
        assert token not in log
