-- When a node was last seen alive: its own authenticated refresh, or a session reaching
-- it through an agent (the device list's "last seen").
ALTER TABLE nodes ADD COLUMN last_seen BIGINT;
