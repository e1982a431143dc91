-- A CreateSecret retry replays the whole first reply: the allowed hosts it set too.
ALTER TABLE create_requests ADD COLUMN allowed_hosts text[] NOT NULL DEFAULT '{}';
