# syntax=docker/dockerfile:1
# vaultsvc: build the wheelhouse in one stage, install only the server from it in the next.
# Build:  docker build -t vaultsvc .
# Run:    see deploy/k8s/ (Kubernetes) and docker-compose.yml (a local cluster).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY vaultsvc ./vaultsvc
COPY api/python ./api/python
COPY clients/python ./clients/python
COPY deploy/wheelhouse.sh ./deploy/wheelhouse.sh
RUN sh deploy/wheelhouse.sh /wheels

FROM python:3.11-slim-bookworm
# The server from the wheelhouse, offline, into /opt/vaultsvc (deploy/install-wheelhouse.sh;
# tests/integration/test_deploy.py replays the same script as an unprivileged user).
COPY deploy/install-wheelhouse.sh /usr/local/bin/install-wheelhouse
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    install-wheelhouse /wheels /opt/vaultsvc \
    && groupadd --system --gid 10001 vault \
    && useradd --system --uid 10001 --gid vault --home-dir /var/lib/vaultsvc \
       --create-home --shell /usr/sbin/nologin vault
ENV PATH=/opt/vaultsvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    VAULT_LISTEN=0.0.0.0:50051 \
    VAULT_LOG_FORMAT=json \
    VAULT_DATA_DIR=/var/lib/vaultsvc
USER 10001:10001
WORKDIR /var/lib/vaultsvc
EXPOSE 50051
# Readiness as API.md "Health" defines it (service ""): SERVING once started, NOT_SERVING
# while draining or after the database was unreachable for health_db_grace.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["vaultsvc", "health", "--timeout", "3"]
ENTRYPOINT ["vaultsvc"]
CMD ["serve"]
