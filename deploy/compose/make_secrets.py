"""Generate the secrets of docker-compose.yml's local cluster (once; never committed).

Writes ``vault.env`` (VAULT_MASTER_KEYS, VAULT_TOKENS with token hashes only,
VAULT_DATABASE_URL) and ``postgres.env`` (POSTGRES_PASSWORD), both mode 0600, into
``deploy/compose/`` (or the directory given), and prints the admin and resolver tokens once.
Refuses to overwrite existing files: a new master key could not read the old database.

    .venv/bin/python deploy/compose/make_secrets.py [directory]
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from vaultsvc.auth import ADMIN, RESOLVER, VIEWER, hash_token, new_token
from vaultsvc.crypto import generate_master_key


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    vault_env, postgres_env = folder / "vault.env", folder / "postgres.env"
    for path in (vault_env, postgres_env):
        if path.exists():
            print(
                f"{path} exists; remove it (and the pgdata volume) to start over", file=sys.stderr
            )
            return 1
    key_id, key = generate_master_key()
    tokens = {role: new_token() for role in (ADMIN, VIEWER, RESOLVER)}
    entries = ",".join(f"compose-{r}:{r}:{hash_token(t).hex()}" for r, t in tokens.items())
    password = secrets.token_urlsafe(24)
    write_private(postgres_env, f"POSTGRES_PASSWORD={password}\n")
    write_private(
        vault_env,
        f"VAULT_MASTER_KEYS={key_id}:{key}\n"
        f"VAULT_TOKENS={entries}\n"
        f"VAULT_DATABASE_URL=postgresql://vault:{password}@postgres:5432/vault\n",
    )
    print(f"wrote {vault_env} and {postgres_env} (mode 0600); tokens, shown once:")
    for role, token in tokens.items():
        print(f"  {role:8} {token}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
