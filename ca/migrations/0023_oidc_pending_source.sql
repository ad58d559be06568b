-- Where each sign-in in progress was started from (the rate limiter's key: an IPv4
-- address or an IPv6 /64), so one source's share of the table can be capped and a full
-- table makes room from the source holding the most, not by refusing everyone.
ALTER TABLE oidc_pending ADD COLUMN source TEXT NOT NULL DEFAULT '';
CREATE INDEX oidc_pending_source ON oidc_pending (source, expires_at);
