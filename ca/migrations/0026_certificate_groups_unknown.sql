-- A user certificate issued under an API session whose groups the identity provider did
-- not state (see 0025): its recorded groups are unknown, not none. Sessions opened with
-- it are refused, and live ones end, while a deny statement names a group it could be
-- in. Certificates from before this migration count as known.
ALTER TABLE certificates ADD COLUMN groups_unknown BIGINT NOT NULL DEFAULT 0;
