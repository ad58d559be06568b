-- Session recordings (issue 20), opt-in per rule. A row per recorded session, written
-- when the session is admitted; its chunks as the bastion hands them over, each sealed
-- with AES-256-GCM under the recording's own key: HKDF of a master key (argon2id of the
-- CA passphrase and the salt below) with the recording's salt (a copy of the database
-- holds no readable terminal text).
CREATE TABLE recording_key_salt (
    id   BIGINT PRIMARY KEY,
    salt TEXT NOT NULL
);

CREATE TABLE recordings (
    session_id     TEXT PRIMARY KEY,
    bastion        TEXT NOT NULL,
    username       TEXT NOT NULL,
    device         TEXT NOT NULL,
    login          TEXT,
    mode           TEXT NOT NULL,
    rule           TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    salt           TEXT NOT NULL,
    input_recorded BIGINT NOT NULL,
    max_bytes      BIGINT NOT NULL,
    bytes          BIGINT NOT NULL,
    chunks         BIGINT NOT NULL,
    truncated      BIGINT NOT NULL,
    cols           BIGINT,
    rows           BIGINT
);
CREATE INDEX recordings_started ON recordings (started_at);

-- `sealed` is bytes: BYTEA on PostgreSQL; SQLite keeps a blob as it is in any column.
CREATE TABLE recording_chunks (
    session_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    sealed     BYTEA NOT NULL,
    PRIMARY KEY (session_id, seq)
);
