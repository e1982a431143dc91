"""The deployment files, checked without a container engine.

- ``deploy/k8s/*.yaml``: every object validates against the Kubernetes schemas that
  ``kubernetes-validate`` ships (strict: an unknown field fails), and the Deployment says
  what README "Production" promises (probes, Secret files, resources, workers).
- ``Dockerfile``: ``hadolint`` finds nothing; the final stage installs only the wheelhouse
  through deploy/install-wheelhouse.sh (which tests/integration/test_packaging.py replays),
  runs as a non-root user and checks itself with ``vaultsvc health``.
- ``docker-compose.yml``: parses, and every file it names exists or is what
  deploy/compose/make_secrets.py writes (which it does, privately, here).
"""

from __future__ import annotations

import copy
import json
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vaultsvc.config import load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
HADOLINT = Path(sys.executable).parent / "hadolint"
SCHEMA_VERSION = kubernetes_validate.latest_version()


def k8s_objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def one(kind: str, name: str = "vaultsvc") -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


# ------------------------------------------------------------------- Kubernetes


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas() -> None:
    kinds = sorted(o["kind"] for o in k8s_objects())
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service", "Service"]
    for obj in k8s_objects():
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


def test_the_validator_catches_a_broken_manifest() -> None:
    """So the test above can fail: a misspelt field and a wrong type are both refused."""
    misspelt = copy.deepcopy(one("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, SCHEMA_VERSION, strict=True)
    wrong_type = copy.deepcopy(one("PodDisruptionBudget"))
    wrong_type["spec"]["selector"] = "app=vaultsvc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, SCHEMA_VERSION, strict=True)


def test_deployment_probes_secrets_resources_and_workers() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # API.md "Health": readiness = service "", liveness = service "liveness", native gRPC.
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert container["startupProbe"]["grpc"]["service"] == "liveness"
    # Workers follow the CPU limit (`auto` reads the cgroup limit); requests and limits set.
    assert container["args"] == ["serve", "--workers", "auto"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
        resources["limits"]
    )
    # Master keys and tokens are files from a Secret, private to the pod's group.
    env = {e["name"]: e for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    assert volume["secret"]["defaultMode"] == 0o440
    files = {item["path"] for item in volume["secret"]["items"]}
    for variable in ("VAULT_MASTER_KEYS_FILE", "VAULT_TOKENS_FILE"):
        path = Path(env[variable]["value"])
        assert path.parent == Path(mount["mountPath"]) and path.name in files
    assert "VAULT_MASTER_KEYS" not in env and "VAULT_TOKENS" not in env
    assert "secretKeyRef" in env["VAULT_DATABASE_URL"]["valueFrom"]
    # Not root, as the image; drains within the grace period before SIGKILL.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["terminationGracePeriodSeconds"] > 10 + 1  # grace_period + shutdown_delay
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_and_budget_select_the_deployments_pods() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in (one("Service"), one("Service", "vaultsvc-headless")):
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["grpc"]
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


# ------------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in joined]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions((REPO / "Dockerfile").read_text()):
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def dockerfile_user() -> int:
    (user,) = [args for name, args in stages()[-1] if name == "USER"]
    return int(user.split(":")[0])


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """So the test above can fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN cd /tmp && pip install x\n")
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in done.stdout, done.stdout


def test_dockerfile_builds_wheels_then_installs_only_the_wheelhouse_as_non_root() -> None:
    build, final = stages()
    assert build[0][1].endswith(" AS build")
    assert ("RUN", "sh deploy/wheelhouse.sh /wheels") in build
    for name, args in build:
        if name == "COPY":
            source = args.split()[0]
            assert (REPO / source).exists(), source
    base = final[0][1]
    assert base.startswith("python:") and "-slim" in base
    runs = [args for name, args in final if name == "RUN"]
    assert len(runs) == 1
    (run,) = runs
    # The wheelhouse is mounted from the build stage, never copied into a layer.
    assert run.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")
    steps = [shlex.split(step) for step in run.split(" ", 1)[1].split("&&")]
    assert steps[0] == ["install-wheelhouse", "/wheels", "/opt/vaultsvc"]
    assert ("COPY", "deploy/install-wheelhouse.sh /usr/local/bin/install-wheelhouse") in final
    for forbidden in ("apt-get", "apk", "gcc", "build-essential", "pip wheel", "curl", "wget"):
        assert forbidden not in run
    assert not [args for name, args in final if name in {"ADD"}]
    assert dockerfile_user() != 0
    (healthcheck,) = [args for name, args in final if name == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["vaultsvc", "health"]
    (entrypoint,) = [args for name, args in final if name == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["vaultsvc"]


# --------------------------------------------------------------- docker compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_parses_and_every_file_it_names_exists() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "vault1", "vault2", "vault3", "haproxy"}
    vaults = [services[f"vault{i}"] for i in (1, 2, 3)]
    for vault in vaults:
        assert (REPO / vault["build"]["context"] / vault["build"]["dockerfile"]).is_file()
        assert vault["command"][0] == "serve"
        assert vault["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).is_file(), source
        for env_file in service.get("env_file", []):
            # Generated by make_secrets.py (next test), never committed.
            assert Path(env_file).parent == Path("deploy/compose")
            assert Path(env_file).name in {"vault.env", "postgres.env"}
            ignored = (REPO / "deploy/compose/.gitignore").read_text().split()
            assert f"/{Path(env_file).name}" in ignored
    # haproxy balances over exactly the vault services.
    config = (REPO / "deploy/compose/haproxy.cfg").read_text()
    servers = [line.split()[2] for line in config.splitlines() if line.strip().startswith("server")]
    assert servers == ["vault1:50051", "vault2:50051", "vault3:50051"]


def test_make_secrets_writes_private_files_the_vault_accepts(tmp_path: Path) -> None:
    script = REPO / "deploy/compose/make_secrets.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    values: dict[str, dict[str, str]] = {}
    for name in ("vault.env", "postgres.env"):
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values[name] = dict(line.split("=", 1) for line in path.read_text().splitlines())
    settings = load_settings(None, values["vault.env"])
    assert settings.keyring is not None and len(settings.keyring) == 1
    assert sorted(t.role for t in settings.tokens) == ["admin", "resolver", "viewer"]
    # The tokens are printed once and only their hashes are in the file.
    printed = [line.split()[-1] for line in done.stdout.splitlines()[1:]]
    assert len(printed) == 3 and not any(token in values["vault.env"].values() for token in printed)
    password = values["postgres.env"]["POSTGRES_PASSWORD"]
    assert values["vault.env"]["VAULT_DATABASE_URL"] == (
        f"postgresql://vault:{password}@postgres:5432/vault"
    )
    # Never overwrites: a new master key could not read the old database.
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1 and "exists" in again.stderr
