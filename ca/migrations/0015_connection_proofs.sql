-- Terminated-mode sessions are opened only against the user's proof of connection (their
-- SSH client's signature over the bastion connection's session identifier). Each proof
-- is accepted for its own connection only: recorded here at first use, and accepted
-- again only from the same bastion, certificate and target while a session it opened
-- is still live (`session_leases.connection`).
CREATE TABLE connection_proofs (
    session_hash  TEXT PRIMARY KEY,
    bastion       TEXT NOT NULL,
    cert_serial   BIGINT NOT NULL,
    device        TEXT NOT NULL,
    login         TEXT NOT NULL,
    first_used_at BIGINT NOT NULL
);
CREATE INDEX connection_proofs_first_used ON connection_proofs (first_used_at);

ALTER TABLE session_leases ADD COLUMN connection TEXT;
CREATE INDEX session_leases_connection ON session_leases (connection);
