-- Destination host binding: the hosts a request using the secret may go to (normalised
-- exact hosts and '*.suffix' patterns, see vaultsvc/templates/hosts.py). Empty = unbound.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+).
ALTER TABLE secrets
    ADD COLUMN allowed_hosts text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(allowed_hosts) <= 100);
