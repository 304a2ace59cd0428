-- Intraday subledger sync (issue 17; seed 002: "sync at least once daily, high volume
-- programs may need multiple syncs per day, each sync reflects net balance changes at the
-- subledger level"): a file kind whose every file covers the changes since the previous one,
-- none counted twice or missed.
--
-- A window is not only a span of posting times: a posting may commit after a file covering
-- its time was taken (the group commit writes a decision's time, then commits). So each
-- posting records the transaction that wrote it (xact), and each file the snapshot it was
-- taken from: a file holds the postings of its window visible in its snapshot and not in the
-- previous file's, and a late one goes into the next file. (PgQ batches events between two
-- snapshots the same way.) Existing postings keep xact NULL: older than every snapshot.
-- Adding a nullable column and then a default rewrites nothing.
ALTER TABLE postings ADD COLUMN xact xid8;
ALTER TABLE postings ALTER COLUMN xact SET DEFAULT pg_current_xact_id();

ALTER TABLE file_schedules DROP CONSTRAINT file_schedules_kind_check;
ALTER TABLE file_schedules ADD CONSTRAINT file_schedules_kind_check
    CHECK (kind IN ('balances', 'transactions', 'chargebacks', 'subledger', 'fbo', 'settlement',
                    'subledger_sync'));

-- Each sync file's window end and the snapshot it was taken from, stored when it is first
-- written, so that a retry writes the same file; the first row of a schedule is its anchor
-- (the schedule's creation), from which the first file starts.
CREATE TABLE subledger_sync_windows (
    schedule_id  uuid NOT NULL REFERENCES file_schedules (id),
    window_end   timestamptz NOT NULL,
    snapshot     pg_snapshot NOT NULL,
    taken_at     timestamptz NOT NULL,
    PRIMARY KEY (schedule_id, window_end)
);
