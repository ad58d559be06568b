-- Step-up re-authentication (`fresh_auth_within` on a rule): when the user last proved
-- who they are. An API session's sign-in (a password typed now, or an identity
-- provider's `auth_time`), and the certificates issued under it. NULL in rows from
-- before: the session's `created_at`, the certificate's `issued_at`.
ALTER TABLE sessions ADD COLUMN authenticated_at BIGINT;
ALTER TABLE certificates ADD COLUMN authenticated_at BIGINT;
