-- The SHA-256 of each certificate's whole encoding, recorded at issuance: a session is
-- opened only for the very certificate the CA issued under a serial. Rows from before
-- this column have none (their certificates are compared by serial and key only).
ALTER TABLE certificates ADD COLUMN cert_digest TEXT;
