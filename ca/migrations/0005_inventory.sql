-- Hardware discovery (issue 8). One row per node in discovery_runs holds the latest
-- run handed out: claiming is one conditional upsert (`… WHERE claimed_at <= due`), so
-- two bastions (or CA replicas) cannot both claim a node for the same round, and the
-- report must name that run, from that bastion, not yet finished.
CREATE TABLE discovery_runs (
    device      TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    bastion     TEXT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    finished_at BIGINT,
    result      TEXT
);

-- The current facts per node (the flat `path → value` map as JSON, keys sorted), and
-- when they last changed. An unchanged run writes nothing here.
CREATE TABLE inventory (
    device      TEXT PRIMARY KEY,
    facts_json  TEXT NOT NULL,
    changed_at  BIGINT NOT NULL
);

-- One row per change of a node's facts (the first collection included): the drift as
-- a JSON list of changes, and the facts after it.
CREATE TABLE inventory_history (
    device       TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    run_id       TEXT NOT NULL,
    changes_json TEXT NOT NULL,
    facts_json   TEXT NOT NULL,
    PRIMARY KEY (device, seq)
);
