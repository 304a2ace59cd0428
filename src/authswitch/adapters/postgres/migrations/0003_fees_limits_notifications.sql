-- Fees and limits (seed 004), and the durable notification outbox (DESIGN.md §6).

-- Where a program's cards are domestic: a merchant elsewhere makes a transaction
-- international for fee rules. Empty: every transaction is domestic.
ALTER TABLE programs
    ADD COLUMN country text NOT NULL DEFAULT '' CHECK (country ~ '^([A-Z]{2})?$');

-- A product's fee schedule: versioned and effective-dated. A transaction uses the version
-- in force at its time (the latest effective_from not after it).
CREATE TABLE fee_schedules (
    id              uuid PRIMARY KEY,
    product_id      uuid NOT NULL REFERENCES products (id),
    version         integer NOT NULL CHECK (version >= 1),
    effective_from  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (product_id, version)
);
CREATE INDEX fee_schedules_product ON fee_schedules (product_id, effective_from DESC);

CREATE TABLE fee_rules (
    id                 uuid PRIMARY KEY,
    schedule_id        uuid NOT NULL REFERENCES fee_schedules (id),
    position           integer NOT NULL,
    name               text NOT NULL DEFAULT '',
    stage              text NOT NULL CHECK (stage IN ('AUTHORIZATION', 'CLEARING')),
    transaction_types  smallint[] NOT NULL DEFAULT '{}',
    channels           smallint[] NOT NULL DEFAULT '{}',
    region             text NOT NULL DEFAULT 'ANY' CHECK (region IN ('ANY', 'DOMESTIC', 'INTERNATIONAL')),
    mccs               text[] NOT NULL DEFAULT '{}',
    asset              text NOT NULL REFERENCES assets (code),
    flat_minor         bigint NOT NULL DEFAULT 0 CHECK (flat_minor >= 0),
    bps                integer NOT NULL DEFAULT 0 CHECK (bps BETWEEN 0 AND 10000),
    min_minor          bigint NOT NULL DEFAULT 0 CHECK (min_minor >= 0),
    max_minor          bigint CHECK (max_minor >= 0),
    above_minor        bigint CHECK (above_minor >= 0),
    free_uses          integer NOT NULL DEFAULT 0 CHECK (free_uses >= 0),
    free_period        text NOT NULL DEFAULT '' CHECK (free_period IN ('', 'DAY', 'MONTH')),
    on_decline         boolean NOT NULL DEFAULT false,
    CHECK ((free_uses = 0) = (free_period = '')),
    UNIQUE (schedule_id, position)
);

-- Amount and count limits of a product's cards or accounts, per transaction, day or month
-- (in the program's time zone), for some transaction types or all.
CREATE TABLE limits (
    id                 uuid PRIMARY KEY,
    product_id         uuid NOT NULL REFERENCES products (id),
    subject            text NOT NULL CHECK (subject IN ('CARD', 'ACCOUNT')),
    period             text NOT NULL CHECK (period IN ('TRANSACTION', 'DAY', 'MONTH')),
    transaction_types  smallint[] NOT NULL DEFAULT '{}',
    asset              text NOT NULL REFERENCES assets (code),
    amount_max_minor   bigint CHECK (amount_max_minor >= 0),
    count_max          integer CHECK (count_max >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (amount_max_minor IS NOT NULL OR count_max IS NOT NULL),
    CHECK (period <> 'TRANSACTION' OR count_max IS NULL)
);
CREATE INDEX limits_product ON limits (product_id);

-- What each counter (a limit's or a fee rule's free uses) has used in its period. The key
-- names the counter, its subject and its period; a row is useless after expires_at.
CREATE TABLE limit_usage (
    account_id    uuid NOT NULL,
    key           text NOT NULL,
    amount_minor  bigint NOT NULL DEFAULT 0,
    count         integer NOT NULL DEFAULT 0,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, key)
);

-- The holds remember the counters they charged, so a clearing or reversal can adjust the
-- amount used to what was finally settled.
ALTER TABLE holds ADD COLUMN usage_keys text[] NOT NULL DEFAULT '{}';

-- The outbox: every notification is written in the same transaction as the change it tells
-- of, and delivered at least once to each sink of its program, in order per account.
CREATE TABLE notifications (
    id          uuid PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    program_id  uuid NOT NULL,
    account_id  uuid,
    card_id     uuid,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX notifications_account ON notifications (account_id, seq);

CREATE TABLE notification_deliveries (
    notification_id  uuid NOT NULL REFERENCES notifications (id),
    sink             text NOT NULL,
    program_id       uuid NOT NULL,
    ordering_key     text NOT NULL,
    seq              bigint NOT NULL,
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DELIVERED', 'DEAD')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text NOT NULL DEFAULT '',
    delivered_at     timestamptz,
    PRIMARY KEY (notification_id, sink)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE status = 'PENDING';
CREATE INDEX notification_deliveries_order ON notification_deliveries (sink, ordering_key, seq)
    WHERE status <> 'DELIVERED';
