-- CreateSecret request ids (idempotent retries). A row remembers which secret a request id
-- created and the reply it got, never the value (not even a hash of it). Rows expire.
CREATE TABLE create_requests (
    request_id  uuid        PRIMARY KEY,
    name_key    text        COLLATE "C" NOT NULL,
    secret_id   uuid        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL,
    etag        text        NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL
);
CREATE INDEX create_requests_expire_time ON create_requests (expire_time);
