-- The policy in force, as the files it was read from (a JSON array of [name, text]):
-- replicas follow it (each has its own policy directory; a reload on one publishes what
-- it read to all). NULL for a row written before this migration: followed by no one.
ALTER TABLE policy_state ADD COLUMN sources_json TEXT;
