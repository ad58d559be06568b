-- Users are known by account names unique across identity sources: `alice` (local),
-- `ldap:alice`, `oidc:alice`. Certificates of directory and IdP users issued before
-- this change carry their source in the key id (`alice@ldap`); their rows take the new
-- account name, so revoking `ldap:alice` reaches them and a local `alice` never does.
UPDATE certificates SET username = 'ldap:' || username WHERE key_id LIKE '%@ldap';
UPDATE certificates SET username = 'oidc:' || username WHERE key_id LIKE '%@oidc';
-- API sessions of directory and IdP users were keyed by the bare name: they end, and
-- their users sign in again under the new account name.
UPDATE sessions SET revoked_at = created_at WHERE source <> 'local' AND revoked_at IS NULL;

-- Which stable subject holds each directory or IdP account name: an LDAP entry
-- (entryUUID, objectGUID or DN) or an IdP subject (issuer and `sub`). The first sign-in
-- claims the name; another subject presenting the same name later (a recreated entry,
-- an IdP account renamed to someone else's name) is refused until an administrator
-- releases the name.
CREATE TABLE accounts (
    account     TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);
CREATE UNIQUE INDEX accounts_subject ON accounts (source, subject);
