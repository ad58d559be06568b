-- One schema for SQLite and PostgreSQL: only TEXT and BIGINT columns, no
-- autoincrement, so the same queries run unchanged on both (through sqlx::Any).

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT,
    groups_json   TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- API sessions (bearer tokens). Only the SHA-256 of a token is stored.
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    source      TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sessions_username ON sessions (username);

CREATE TABLE ca_keys (
    fingerprint    TEXT PRIMARY KEY,
    purpose        TEXT NOT NULL,
    state          TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    -- OpenSSH private key format, encrypted with the CA passphrase (bcrypt-pbkdf + AES).
    encrypted_key  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- Serials are unsigned 64-bit; stored as the signed BIGINT with the same bits.
CREATE TABLE certificates (
    serial          BIGINT PRIMARY KEY,
    ca_fingerprint  TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    username        TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    principals_json TEXT NOT NULL,
    valid_after     BIGINT NOT NULL,
    valid_before    BIGINT NOT NULL,
    issued_at       BIGINT NOT NULL,
    revoked_at      BIGINT
);
CREATE INDEX certificates_username ON certificates (username);
CREATE INDEX certificates_key ON certificates (key_fingerprint);

CREATE TABLE revoked_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL
);

CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    record_json   TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Single-row tables. krl_state.version bumps on every revocation.
CREATE TABLE krl_state (id BIGINT PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO krl_state (id, version) VALUES (1, 0);

CREATE TABLE policy_state (
    id           BIGINT PRIMARY KEY,
    digest       TEXT NOT NULL,
    summary_json TEXT NOT NULL,
    loaded_at    BIGINT NOT NULL
);

-- Tamper-evident audit log: each record carries the hash of the previous one; the
-- head row is updated in the same transaction, which also serializes appenders
-- (a row lock on PostgreSQL, the write lock on SQLite) so the chain never forks.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    event     TEXT NOT NULL,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
