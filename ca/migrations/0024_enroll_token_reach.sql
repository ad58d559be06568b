-- The devices an enrollment token may enroll: the target queries of the roles that let
-- its creator manage nodes (JSON list of query strings), or NULL when its creator
-- manages every node. A node the token would enroll outside them is refused.
ALTER TABLE enroll_tokens ADD COLUMN reach_json TEXT;
