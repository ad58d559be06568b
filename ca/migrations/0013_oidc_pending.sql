-- OpenID Connect sign-ins in progress, shared by every replica: a browser's callback or
-- a CLI's poll may reach another replica than the one that started the sign-in. Nothing
-- here completes a sign-in: rows are keyed by the SHA-256 of the client's handle (the
-- browser flow's `state`, the device flow's `pcd_…` handle); the browser flow's PKCE
-- verifier and nonce are derived from its binding cookie, of which only the hash is
-- kept; the device code travels inside the CLI's handle.
CREATE TABLE oidc_pending (
    key_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    binding_hash TEXT NOT NULL DEFAULT '',
    poll_interval BIGINT NOT NULL DEFAULT 0,
    last_poll BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oidc_pending_expiry ON oidc_pending (expires_at);
