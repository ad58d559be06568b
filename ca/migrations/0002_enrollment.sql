-- Enrollment tokens: only the SHA-256 of a token is stored. Consuming a use is one
-- conditional UPDATE, so a limited token cannot be over-used by concurrent enrollments
-- (on one SQLite file or across PostgreSQL replicas).
CREATE TABLE enroll_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL,
    tags_json   TEXT NOT NULL,
    partition   TEXT,
    agent       TEXT
);

-- The current host certificate per (node, host key), reused while it has plenty of
-- life left, so an unchanged node's refresh returns identical bytes (no rewrite, no
-- sshd reload).
CREATE TABLE host_certs (
    node            TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    ca_fingerprint  TEXT NOT NULL,
    serial          BIGINT NOT NULL,
    certificate     TEXT NOT NULL,
    valid_before    BIGINT NOT NULL,
    PRIMARY KEY (node, key_fingerprint)
);

-- When the revocation set last changed: the KRL's generation date, so the same set
-- always encodes to the same bytes.
ALTER TABLE krl_state ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
