-- Bastions and edge agents (service identities) and the session leases that make
-- concurrency caps hold across bastion and CA replicas. Same rules as 0001: only TEXT
-- and BIGINT, no autoincrement.

-- One row per enrolled service. Only the SHA-256 of its API token is stored.
CREATE TABLE services (
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    api_token_hash  TEXT NOT NULL UNIQUE,
    agent_endpoint  TEXT,
    enrolled_at     BIGINT NOT NULL,
    last_seen       BIGINT,
    -- Bastions: the agents connected at the last heartbeat (JSON list).
    agents_json     TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (kind, name)
);

-- NULL: a node token; 'agent' / 'bastion': a token for that kind of service only.
ALTER TABLE enroll_tokens ADD COLUMN service_kind TEXT;

-- The identity's groups at issuance, so a session opened later with the certificate is
-- decided for the same identity under the current policy.
ALTER TABLE certificates ADD COLUMN groups_json TEXT NOT NULL DEFAULT '[]';

-- A live session holds one lease; it counts against the caps while it exists.
CREATE TABLE session_leases (
    session_id        TEXT PRIMARY KEY,
    bastion           TEXT NOT NULL,
    username          TEXT NOT NULL,
    device            TEXT NOT NULL,
    agent             TEXT NOT NULL,
    login             TEXT,
    mode              TEXT NOT NULL,
    port              BIGINT NOT NULL,
    rule              TEXT NOT NULL,
    role              TEXT NOT NULL,
    cert_serial       BIGINT NOT NULL,
    client_ip         TEXT NOT NULL,
    opened_at         BIGINT NOT NULL,
    heartbeat_at      BIGINT NOT NULL,
    absolute_deadline BIGINT NOT NULL,
    kill_reason       TEXT,
    bytes_from_client BIGINT NOT NULL DEFAULT 0,
    bytes_to_client   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX session_leases_bastion ON session_leases (bastion);
CREATE INDEX session_leases_heartbeat ON session_leases (heartbeat_at);

-- Live sessions per scope (`user:<name>`, `device:<name>`, `agent:<name>`), moved by
-- conditional UPDATEs in the transaction that inserts or deletes the lease, so a cap
-- is exact without counting rows (which two transactions could both do before either
-- inserts).
CREATE TABLE session_counters (
    scope TEXT PRIMARY KEY,
    n     BIGINT NOT NULL
);
