-- An identity provider's token that stated no groups claim: the session's groups are
-- unknown, not none. Such a session is refused while a deny statement names a group
-- it could be in (decided at each request, so a deny added later applies at once).
-- Sessions from before this migration count as known.
ALTER TABLE sessions ADD COLUMN groups_unknown BIGINT NOT NULL DEFAULT 0;
