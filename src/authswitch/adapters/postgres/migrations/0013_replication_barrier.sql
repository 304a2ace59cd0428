-- The replication barrier (adapters/postgres/committer.py, GroupCommitter._recover): after a
-- failed commit, a decision found on the primary is confirmed only once a later commit has
-- been acknowledged. With a synchronous standby, a COMMIT whose wait for the standby was
-- cancelled (by our command timeout) stays committed on the primary alone; the barrier's
-- commit waits for the standby to have everything before it. It must write WAL: a
-- transaction that only takes an id commits without waiting for any standby. One row,
-- updated in place.
CREATE TABLE replication_barrier (
    id smallint PRIMARY KEY CHECK (id = 1),
    touched_at timestamptz NOT NULL
);
INSERT INTO replication_barrier VALUES (1, now());
