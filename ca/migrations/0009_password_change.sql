-- A local user whose password was set for one use only (the first administrator's
-- generated password, or one an administrator set with --temporary) must choose a new
-- one at their next sign-in: the old one opens no session.
ALTER TABLE users ADD COLUMN must_change_password BIGINT NOT NULL DEFAULT 0;
