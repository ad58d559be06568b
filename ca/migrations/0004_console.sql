-- Browser console tickets (issue 7). Only the SHA-256 of a ticket is stored; a ticket
-- is consumed by one conditional UPDATE (used_at IS NULL AND expires_at > now), so two
-- redemptions racing on any number of CA replicas cannot both succeed. A used ticket
-- stays while its session lives: it is where the console session's identity (user and
-- the groups of the API session that asked for it) is read back at every heartbeat.
-- The console session also lives no longer than that API session: logging out (or
-- revoking the user) closes it, like a revoked certificate closes an SSH session.
CREATE TABLE console_tickets (
    ticket_hash           TEXT PRIMARY KEY,
    username              TEXT NOT NULL,
    groups_json           TEXT NOT NULL,
    device                TEXT NOT NULL,
    login                 TEXT NOT NULL,
    mode                  TEXT NOT NULL,
    agent                 TEXT NOT NULL,
    rule                  TEXT NOT NULL,
    -- When the API session the ticket was asked with expires: the console session's
    -- credential lifetime (the bastion may close the session then).
    credential_expires_at BIGINT NOT NULL,
    -- sessions.token_hash of the API session the ticket was asked with.
    api_session_hash      TEXT NOT NULL,
    issued_at             BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    used_at               BIGINT,
    session_id            TEXT
);
CREATE INDEX console_tickets_session ON console_tickets (session_id);
CREATE INDEX console_tickets_expires ON console_tickets (expires_at);
