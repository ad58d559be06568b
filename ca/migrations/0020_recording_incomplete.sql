-- A recording whose last chunk never reached the CA (the bastion could not hand it
-- over, or died) and that was ended by its session's close instead, the session having
-- started: what it holds plays back, and is marked as missing its end. Rows from before
-- this column say 0.
ALTER TABLE recordings ADD COLUMN incomplete BIGINT NOT NULL DEFAULT 0;
