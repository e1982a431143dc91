-- Console sign-ins. Only hashes of the session cookie and of the vault token it was
-- exchanged for are kept; a session is valid while its token still is (checked on each request).
CREATE TABLE console_sessions (
    session_hash bytea       PRIMARY KEY CHECK (octet_length(session_hash) = 32),
    principal    text        NOT NULL,
    role         text        NOT NULL,
    token_hash   bytea       NOT NULL CHECK (octet_length(token_hash) = 32),
    csrf_secret  text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    expire_time  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expire_time ON console_sessions (expire_time);
CREATE INDEX console_sessions_token_hash ON console_sessions (token_hash);
