-- What the user's key confirmed over the connection that opened a terminated-mode
-- session (a security key's touch and user verification, as FIDO flag bits: 1 and 4),
-- held against the session's role at every heartbeat. NULL: no proof (jump mode, the
-- browser console), or a lease from before this column (taken as a plain key's).
ALTER TABLE session_leases ADD COLUMN confirmed BIGINT;
