-- Time partitioning (docs/scaling.md, "Postgres in production"): the journal (journal_entries
-- and postings), holds, and notifications with their deliveries are partitioned by month of
-- created_at (UTC), so that old months can be dropped whole instead of deleted row by row.
--
-- * Each family has a DEFAULT partition: a row whose month has no partition yet (the
--   maintenance job fell behind, a clock far ahead) is stored there rather than refused, and
--   authswitch_ensure_partitions moves such rows when it creates their month.
-- * A unique constraint on a partitioned table must include the partition key, so no table
--   here is the global guard on a message key: decisions (not partitioned) stays the guard on
--   (source, message_id), and hold_keys (below, not partitioned) on the key of each hold.
-- * A postings row references its journal entry, and a delivery its notification, through a
--   foreign key between the two partitions of the same month (both rows always share their
--   month: they are written with the entry's, or the notification's, created_at). A foreign
--   key to the partitioned parent would make dropping a month scan every other month.
-- * Entries' and notifications' ids are unique per partition (a primary key on each one);
--   across partitions they are UUIDv4s made by the application.
--
-- Existing databases: each table is renamed, its partitioned successor created, the rows
-- moved, and the old table dropped, in this one transaction.

-- -- Every hold's key, and reversals that came before their original ------------------------
-- The global arbiter of (source, message_id) among holds, as the unique key on holds was: a
-- hold is written by inserting its key here in the same statement, and a reversal of an
-- original not seen yet leaves a tombstone row here (hold_id NULL) under the original's key.
-- Whichever of the two commits second sees the other, as before.
CREATE TABLE hold_keys (
    source          text NOT NULL,
    message_id      text NOT NULL,
    -- the hold, once its original has come (its partition key with it); NULL: a tombstone
    hold_id         uuid,
    created_at      timestamptz,
    -- what reversals took before the original came, and whether one was a full reversal
    reversed_minor  bigint NOT NULL DEFAULT 0 CHECK (reversed_minor >= 0),
    reversal_full   boolean NOT NULL DEFAULT false,
    tombstone_at    timestamptz,
    PRIMARY KEY (source, message_id),
    CHECK ((hold_id IS NULL) = (created_at IS NULL)),
    CHECK (hold_id IS NOT NULL OR tombstone_at IS NOT NULL)
);

-- What the postings of dropped months summed to, per account and asset: a balance's actual
-- figure is these plus the postings still kept (the reconciler adds them).
CREATE TABLE posting_archive_totals (
    account_id    uuid NOT NULL,
    asset         text NOT NULL,
    amount_minor  bigint NOT NULL,
    PRIMARY KEY (account_id, asset)
);

-- -- The old tables step aside ------------------------------------------------------------
ALTER TABLE holds RENAME TO holds_old;
ALTER TABLE journal_entries RENAME TO journal_entries_old;
ALTER TABLE postings RENAME TO postings_old;
ALTER TABLE notifications RENAME TO notifications_old;
ALTER TABLE notification_deliveries RENAME TO notification_deliveries_old;
DO $$
DECLARE
    r record;
BEGIN
    -- Index names are schema-wide: free them for the new tables.
    FOR r IN
        SELECT i.relname
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid IN ('holds_old'::regclass, 'journal_entries_old'::regclass,
                             'postings_old'::regclass, 'notifications_old'::regclass,
                             'notification_deliveries_old'::regclass)
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.relname, left(r.relname, 58) || '_old');
    END LOOP;
END $$;

-- -- Holds ----------------------------------------------------------------------------------
-- Tombstones now live in hold_keys, so every row here is a real hold.
CREATE TABLE holds (
    id                 uuid NOT NULL,
    account_id         uuid NOT NULL REFERENCES accounts (id),
    asset              text NOT NULL,
    card_id            uuid,
    source             text NOT NULL,
    message_id         text NOT NULL,
    network_reference  text NOT NULL DEFAULT '',
    amount_minor       bigint NOT NULL CHECK (amount_minor >= 0),
    original_minor     bigint NOT NULL CHECK (original_minor >= 0),
    fee_minor          bigint NOT NULL DEFAULT 0 CHECK (fee_minor >= 0),
    status             text NOT NULL CHECK (status IN ('OPEN', 'CLEARED', 'REVERSED', 'EXPIRED', 'RELEASED')),
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL,
    ended_at           timestamptz,
    reversed_minor     bigint NOT NULL DEFAULT 0 CHECK (reversed_minor >= 0),
    cleared_minor      bigint NOT NULL DEFAULT 0 CHECK (cleared_minor >= 0),
    end_reason         text NOT NULL DEFAULT '',
    kind               text NOT NULL DEFAULT 'AUTHORIZATION',
    usage_keys         text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, created_at),
    CHECK ((status = 'OPEN') = (ended_at IS NULL)),
    CHECK (amount_minor <= original_minor)
) PARTITION BY RANGE (created_at);
CREATE INDEX holds_message ON holds (source, message_id);
CREATE INDEX holds_open_reference ON holds (card_id, network_reference) WHERE status = 'OPEN';
CREATE INDEX holds_open_expiry ON holds (expires_at) WHERE status = 'OPEN';
CREATE INDEX holds_account ON holds (account_id, status);
CREATE TABLE holds_default PARTITION OF holds DEFAULT;

-- -- The journal -----------------------------------------------------------------------------
CREATE TABLE journal_entries (
    id                 uuid NOT NULL,
    program_id         uuid NOT NULL REFERENCES programs (id),
    kind               text NOT NULL,
    source             text NOT NULL DEFAULT '',
    message_id         text NOT NULL DEFAULT '',
    description        text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL,
    network_reference  text NOT NULL DEFAULT '',
    card_id            uuid
) PARTITION BY RANGE (created_at);
CREATE INDEX journal_entries_program ON journal_entries (program_id, created_at);
CREATE INDEX journal_entries_message ON journal_entries (source, message_id);
CREATE TABLE journal_entries_default PARTITION OF journal_entries DEFAULT;
ALTER TABLE journal_entries_default ADD PRIMARY KEY (id);

CREATE TABLE postings (
    entry_id      uuid NOT NULL,
    account_id    uuid NOT NULL REFERENCES accounts (id),
    asset         text NOT NULL,
    amount_minor  bigint NOT NULL,
    created_at    timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
CREATE INDEX postings_account ON postings (account_id, created_at DESC);
CREATE TABLE postings_default PARTITION OF postings DEFAULT;
ALTER TABLE postings_default ADD PRIMARY KEY (entry_id, account_id, asset);
ALTER TABLE postings_default ADD CONSTRAINT postings_default_entry_fkey
    FOREIGN KEY (entry_id) REFERENCES journal_entries_default (id);

-- -- The outbox ------------------------------------------------------------------------------
-- seq orders an account's notifications: one sequence across all partitions.
CREATE SEQUENCE notifications_seq;
CREATE TABLE notifications (
    id          uuid NOT NULL,
    seq         bigint NOT NULL DEFAULT nextval('notifications_seq'),
    program_id  uuid NOT NULL,
    account_id  uuid,
    card_id     uuid,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE notifications_seq OWNED BY notifications.seq;
CREATE INDEX notifications_account ON notifications (account_id, seq);
CREATE TABLE notifications_default PARTITION OF notifications DEFAULT;
ALTER TABLE notifications_default ADD PRIMARY KEY (id);

-- A delivery is partitioned by its notification's created_at (the column is new).
CREATE TABLE notification_deliveries (
    notification_id  uuid NOT NULL,
    sink             text NOT NULL,
    program_id       uuid NOT NULL,
    ordering_key     text NOT NULL,
    seq              bigint NOT NULL,
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'DEAD')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text NOT NULL DEFAULT '',
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE status = 'PENDING';
CREATE INDEX notification_deliveries_order ON notification_deliveries (sink, ordering_key, seq)
    WHERE status <> 'DELIVERED';
CREATE TABLE notification_deliveries_default PARTITION OF notification_deliveries DEFAULT;
ALTER TABLE notification_deliveries_default ADD PRIMARY KEY (notification_id, sink);
ALTER TABLE notification_deliveries_default ADD CONSTRAINT notification_deliveries_default_notification_fkey
    FOREIGN KEY (notification_id) REFERENCES notifications_default (id);

-- -- Monthly partitions -------------------------------------------------------------------
-- The partitions of one month (UTC) of every family, named <table>_pYYYYMM, each made like
-- its family's default partition (its primary key and indexes). Rows of that month found in
-- a default partition move into the new one. Returns how many tables it created (0: the month
-- was there). Locks the five parents in the order the group committer writes them, so that
-- it never deadlocks with a batch; the maintenance job takes the locks itself first (NOWAIT,
-- retried), so that it never queues in front of the hot path.
CREATE FUNCTION authswitch_ensure_partitions(for_month date) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    families constant text[] := ARRAY['holds', 'journal_entries', 'postings', 'notifications',
                                      'notification_deliveries'];
    start_at constant timestamptz := date_trunc('month', for_month::timestamp) AT TIME ZONE 'UTC';
    end_at constant timestamptz :=
        (date_trunc('month', for_month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    suffix constant text := '_p' || to_char(for_month, 'YYYYMM');
    missing text[];
    family text;
BEGIN
    SELECT coalesce(array_agg(f ORDER BY n), '{}') INTO missing
    FROM unnest(families) WITH ORDINALITY AS x(f, n)
    WHERE to_regclass(quote_ident(f || suffix)) IS NULL;
    IF cardinality(missing) = 0 THEN
        RETURN 0;
    END IF;
    FOREACH family IN ARRAY missing LOOP
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', family);
    END LOOP;
    FOREACH family IN ARRAY missing LOOP
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)',
            family || suffix, family || '_default');
        EXECUTE format(
            'INSERT INTO %I SELECT * FROM %I WHERE created_at >= $1 AND created_at < $2',
            family || suffix, family || '_default') USING start_at, end_at;
    END LOOP;
    -- Referencing rows leave the default partitions before the rows they reference.
    FOREACH family IN ARRAY ARRAY(SELECT f FROM unnest(missing) WITH ORDINALITY AS x(f, n)
                                  ORDER BY n DESC) LOOP
        EXECUTE format('DELETE FROM %I WHERE created_at >= $1 AND created_at < $2',
                       family || '_default') USING start_at, end_at;
    END LOOP;
    FOREACH family IN ARRAY missing LOOP
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       family, family || suffix, start_at, end_at);
    END LOOP;
    IF 'postings' = ANY (missing) THEN
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (entry_id) REFERENCES %I (id)',
                       'postings' || suffix, 'postings' || suffix || '_entry_fkey',
                       'journal_entries' || suffix);
    END IF;
    IF 'notification_deliveries' = ANY (missing) THEN
        EXECUTE format(
            'ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (notification_id) REFERENCES %I (id)',
            'notification_deliveries' || suffix,
            'notification_deliveries' || suffix || '_notification_fkey',
            'notifications' || suffix);
    END IF;
    RETURN cardinality(missing);
END
$fn$;

-- The months of the rows being moved, and the next three.
SELECT authswitch_ensure_partitions(m::date)
FROM generate_series(
    date_trunc('month', least(
        (SELECT min(created_at) FROM holds_old), (SELECT min(created_at) FROM journal_entries_old),
        (SELECT min(created_at) FROM postings_old), (SELECT min(created_at) FROM notifications_old),
        now()) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months',
    interval '1 month') AS m;

-- -- The rows move --------------------------------------------------------------------------
INSERT INTO hold_keys (source, message_id, hold_id, created_at, reversed_minor, reversal_full,
                       tombstone_at)
SELECT source, message_id,
       CASE WHEN tombstone THEN NULL ELSE id END,
       CASE WHEN tombstone THEN NULL ELSE created_at END,
       CASE WHEN tombstone THEN reversed_minor ELSE 0 END,
       tombstone AND reversal_full,
       CASE WHEN tombstone THEN created_at END
FROM holds_old;

INSERT INTO holds (id, account_id, asset, card_id, source, message_id, network_reference,
                   amount_minor, original_minor, fee_minor, status, expires_at, created_at,
                   ended_at, reversed_minor, cleared_minor, end_reason, kind, usage_keys)
SELECT id, account_id, asset, card_id, source, message_id, network_reference, amount_minor,
       original_minor, fee_minor, status, expires_at, created_at, ended_at, reversed_minor,
       cleared_minor, end_reason, kind, usage_keys
FROM holds_old WHERE NOT tombstone;

INSERT INTO journal_entries (id, program_id, kind, source, message_id, description, created_at,
                             network_reference, card_id)
SELECT id, program_id, kind, source, message_id, description, created_at, network_reference,
       card_id
FROM journal_entries_old;

-- A posting shares its entry's month (the committer writes both with the entry's time).
INSERT INTO postings (entry_id, account_id, asset, amount_minor, created_at)
SELECT p.entry_id, p.account_id, p.asset, p.amount_minor, e.created_at
FROM postings_old p JOIN journal_entries_old e ON e.id = p.entry_id;

INSERT INTO notifications (id, seq, program_id, account_id, card_id, kind, payload, created_at)
SELECT id, seq, program_id, account_id, card_id, kind, payload, created_at
FROM notifications_old;
SELECT setval('notifications_seq', coalesce((SELECT max(seq) FROM notifications_old), 0) + 1,
              false);

INSERT INTO notification_deliveries (notification_id, sink, program_id, ordering_key, seq, status,
                                     attempts, next_attempt_at, last_error, delivered_at,
                                     created_at)
SELECT d.notification_id, d.sink, d.program_id, d.ordering_key, d.seq, d.status, d.attempts,
       d.next_attempt_at, d.last_error, d.delivered_at, n.created_at
FROM notification_deliveries_old d JOIN notifications_old n ON n.id = d.notification_id;

DROP TABLE postings_old;
DROP TABLE journal_entries_old;
DROP TABLE notification_deliveries_old;
DROP TABLE notifications_old;
DROP TABLE holds_old;
