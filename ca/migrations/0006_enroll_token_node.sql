-- An enrollment token may be bound to one node name: the only kind of token that can
-- claim a name an administrator registered by hand (it has no host keys to prove).
ALTER TABLE enroll_tokens ADD COLUMN node TEXT;
