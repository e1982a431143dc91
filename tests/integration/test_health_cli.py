"""``vaultsvc health``: exit 0 only when the vault's health service says SERVING, within a
bounded deadline; plaintext and (m)TLS; the address from ``VAULT_LISTEN`` by default."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from grpc_health.v1 import health_pb2

from tests.support.cli import cli_env, run_cli
from tests.support.tls import Authority
from tests.support.vault import VaultFactory
from vaultsvc.cli.health import local_address
from vaultsvc.config import TLSSettings


def env(**extra: str) -> dict[str, str]:
    return cli_env(None, None, **extra)


async def test_ready_then_not_serving_liveness_and_unknown_services(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault()
    address = vault.address
    done = await run_cli(["health", "--address", address], env())
    assert (done.returncode, done.stdout) == (0, f'SERVING ("" at {address})\n')

    await vault.runtime.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    done = await run_cli(["health", "--address", address], env())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f'vaultsvc: error: health "" at {address}: NOT_SERVING\n'
    # Liveness never follows readiness.
    done = await run_cli(["health", "--address", address, "--service", "liveness"], env())
    assert (done.returncode, done.stdout) == (0, f"SERVING (liveness at {address})\n")
    done = await run_cli(["health", "--address", address, "--service", "nope"], env())
    assert done.returncode == 1 and done.stderr.endswith(f"nope at {address}: NOT_FOUND\n")


async def test_address_defaults_to_vault_listen_with_a_wildcard_host_made_loopback(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault()
    port = vault.address.rpartition(":")[2]
    done = await run_cli(["health"], env(VAULT_LISTEN=f"0.0.0.0:{port}"))
    assert (done.returncode, done.stdout) == (0, f'SERVING ("" at 127.0.0.1:{port})\n')
    assert local_address("[::]:50051") == "[::1]:50051"
    assert local_address("10.1.2.3:50051") == "10.1.2.3:50051"
    done = await run_cli(["health"], env(VAULT_LISTEN="127.0.0.1:0"))
    assert done.returncode == 2 and "port 0" in done.stderr and "--address" in done.stderr


async def test_mutual_tls(make_vault: VaultFactory, tmp_path: Path) -> None:
    ca, other = Authority("health CA"), Authority("other CA")
    server, client = ca.issue("vault", server=True), ca.issue("probe", server=False)
    files = {
        "server.crt": server.cert,
        "server.key": server.key,
        "ca.crt": ca.pem,
        "other.crt": other.pem,
        "client.crt": client.cert,
        "client.key": client.key,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    vault = await make_vault(
        tls=TLSSettings(
            cert_file=tmp_path / "server.crt",
            key_file=tmp_path / "server.key",
            client_ca_file=tmp_path / "ca.crt",
            require_client_cert=True,
        )
    )
    base = ["health", "--address", vault.address, "--timeout", "5"]
    ca_flag = ["--tls-ca-file", str(tmp_path / "ca.crt")]
    mtls = [*ca_flag, "--tls-cert-file", str(tmp_path / "client.crt")]
    mtls += ["--tls-key-file", str(tmp_path / "client.key")]

    done = await run_cli([*base, *mtls], env())
    assert done.returncode == 0, done.stderr
    done = await run_cli([*base, *mtls, "--tls-server-name", "localhost"], env())
    assert done.returncode == 0, done.stderr
    for refused in (
        [],  # plaintext to a TLS port
        ca_flag,  # no client certificate
        [*mtls, "--tls-server-name", "vault.example"],  # the certificate names other hosts
        ["--tls-ca-file", str(tmp_path / "other.crt"), *mtls[2:]],  # an untrusted server
    ):
        done = await run_cli([*base, *refused], env())
        assert done.returncode == 1, (refused, done.output)
        # (gRPC's own diagnostics of the handshake may come first)
        last = done.stderr.splitlines()[-1]
        assert last.startswith('vaultsvc: error: health "" at '), done.stderr


async def test_bad_arguments_exit_2_with_a_message(tmp_path: Path) -> None:
    for args, expected in (
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "61"], "--timeout"),
        (["--address", "no-port"], "--address must be host:port"),
        (["--tls-cert-file", "c.pem"], "need --tls-ca-file"),
        (["--tls-ca-file", str(tmp_path / "missing.crt")], "cannot read CA file"),
    ):
        done = await run_cli(["health", *args], env())
        assert done.returncode == 2, (args, done.output)
        assert expected in done.stderr, (args, done.stderr)


async def test_a_peer_that_never_answers_fails_within_the_deadline() -> None:
    with socket.socket() as silent:  # accepts TCP, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = await run_cli(["health", "--address", address, "--timeout", "1"], env())
        elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stderr == f'vaultsvc: error: health "" at {address}: DEADLINE_EXCEEDED\n'
    assert elapsed < 30  # the interpreter's start-up included; the call itself is bounded
