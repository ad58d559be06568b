-- At most one active and one pending CA key per purpose, as a database invariant: two
-- replicas starting at the same instant on an empty database each generated keys, and a
-- second active key is a second trust root nobody asked for. With this index the
-- second insert fails and that replica loads the winner's key instead.
--
-- Databases the race already hit keep every key trusted: extra active keys become
-- `previous` (still trusted, no longer signing; retire them when their certificates
-- have expired), extra pending ones — which never signed anything — become `retired`.
UPDATE ca_keys SET state = 'previous'
WHERE state = 'active' AND EXISTS (
    SELECT 1 FROM ca_keys AS older
    WHERE older.purpose = ca_keys.purpose AND older.state = 'active'
      AND (older.created_at < ca_keys.created_at
           OR (older.created_at = ca_keys.created_at AND older.fingerprint < ca_keys.fingerprint))
);
UPDATE ca_keys SET state = 'retired'
WHERE state = 'pending' AND EXISTS (
    SELECT 1 FROM ca_keys AS older
    WHERE older.purpose = ca_keys.purpose AND older.state = 'pending'
      AND (older.created_at < ca_keys.created_at
           OR (older.created_at = ca_keys.created_at AND older.fingerprint < ca_keys.fingerprint))
);
CREATE UNIQUE INDEX ca_keys_one_live_per_purpose ON ca_keys (purpose, state) WHERE state IN ('active', 'pending');
