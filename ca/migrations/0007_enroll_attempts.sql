-- An enrollment the node may still roll back: if it does, it tells the CA (proving it
-- holds its host key), and the CA undoes the registration and gives the token use back.
-- `previous_json` is the node record before this enrollment; NULL when it was new.
CREATE TABLE enroll_attempts (
    verification_principal TEXT PRIMARY KEY,
    node                   TEXT NOT NULL,
    token_id               TEXT NOT NULL,
    verification_serial    BIGINT NOT NULL,
    previous_json          TEXT,
    expires_at             BIGINT NOT NULL
);
