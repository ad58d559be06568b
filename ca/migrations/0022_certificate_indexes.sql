-- Every SSH session adds a certificate row and the table keeps them: the KRL (rebuilt on
-- every replica after each revocation and every few minutes) reads only the revoked ones
-- still valid, and the admin listing the newest. Indexes for both, so neither walks the
-- whole table. A partial index: revoked certificates are few.
CREATE INDEX certificates_revoked ON certificates (valid_before) WHERE revoked_at IS NOT NULL;
CREATE INDEX certificates_issued_at ON certificates (issued_at);
