-- Audit events for group commit and floods: what the client called its request
-- (never the event's id), how many names asked for were missing (secret_names keeps
-- only the first 20 of them), and how many calls an aggregated event stands for.
ALTER TABLE audit_events
    ADD COLUMN client_request_id text    NOT NULL DEFAULT '',
    ADD COLUMN missing_count     integer NOT NULL DEFAULT 0 CHECK (missing_count >= 0),
    ADD COLUMN count             bigint  NOT NULL DEFAULT 1 CHECK (count >= 1);
