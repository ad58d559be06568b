-- On a SQLite file, a recording chunk's sealed bytes are kept in a file of their own
-- beside the database (`<database>.recordings/<session id>/<seq>`), `sealed` left empty:
-- SQLite wrote every chunk twice (its write-ahead log, then the checkpoint). PostgreSQL
-- keeps them in the row. A backup puts them back into the rows of its copy.
ALTER TABLE recording_chunks ADD COLUMN in_file BIGINT NOT NULL DEFAULT 0;
