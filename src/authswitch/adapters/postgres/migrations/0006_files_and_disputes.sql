-- Sponsor-bank daily files and their delivery (seed 002, seed 003), and disputes.

-- The network's lifecycle id and the card on journal entries, for the daily transaction
-- file; entries of a message are found by its key (a dispute finds its clearing).
ALTER TABLE journal_entries ADD COLUMN network_reference text NOT NULL DEFAULT '';
ALTER TABLE journal_entries ADD COLUMN card_id uuid;
CREATE INDEX journal_entries_message ON journal_entries (source, message_id);

-- Every program gets a disputes account: the other side of provisional credits,
-- chargebacks and representments (its balance is what the issuer has fronted or is owed).
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('CUSTOMER', 'CLEARING', 'FEE_INCOME', 'DISPUTES'));
INSERT INTO accounts (id, program_id, kind, account_type, name)
SELECT gen_random_uuid(), p.id, 'DISPUTES', 'MULTI_CURRENCY', p.name || ' disputes'
FROM programs p
WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.program_id = p.id AND a.kind = 'DISPUTES');

-- What file, when (cron, in the program's time zone), and where to: a directory, or SFTP.
-- A balance report belongs to a client; the other files to a program.
CREATE TABLE file_schedules (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('balances', 'transactions', 'chargebacks', 'subledger', 'fbo')),
    client_id        uuid REFERENCES clients (id),
    program_id       uuid REFERENCES programs (id),
    cron             text NOT NULL,
    time_zone        text NOT NULL DEFAULT 'UTC',
    prefix           text NOT NULL DEFAULT '' CHECK (prefix ~ '^[A-Za-z0-9_]{0,15}$'),
    sink             text NOT NULL CHECK (sink IN ('directory', 'sftp')),
    directory        text NOT NULL DEFAULT '',
    sftp_host        text NOT NULL DEFAULT '',
    sftp_port        integer NOT NULL DEFAULT 22 CHECK (sftp_port BETWEEN 1 AND 65535),
    sftp_user        text NOT NULL DEFAULT '',
    sftp_key_secret  text NOT NULL DEFAULT '',
    sftp_known_hosts_secret text NOT NULL DEFAULT '',
    remote_dir       text NOT NULL DEFAULT '.',
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'balances') = (client_id IS NOT NULL)),
    CHECK ((kind = 'balances') <> (program_id IS NOT NULL))
);

-- Every scheduled file, once per schedule and due time, and whether it was delivered: a
-- rerun of a day's delivery sends nothing twice.
CREATE TABLE file_deliveries (
    schedule_id   uuid NOT NULL REFERENCES file_schedules (id),
    due_at        timestamptz NOT NULL,
    file_name     text NOT NULL DEFAULT '',
    records       bigint NOT NULL DEFAULT 0,
    destination   text NOT NULL DEFAULT '',
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text NOT NULL DEFAULT '',
    claimed_at    timestamptz NOT NULL,
    -- a claim is a lease: another replica may take the delivery over after this time, and
    -- a failed one is retried after it (with backoff)
    next_attempt_at timestamptz NOT NULL,
    delivered_at  timestamptz,
    PRIMARY KEY (schedule_id, due_at)
);
CREATE INDEX file_deliveries_pending ON file_deliveries (next_attempt_at) WHERE delivered_at IS NULL;

-- Disputes of cleared transactions, and every step of each.
CREATE TABLE disputes (
    id                   uuid PRIMARY KEY,
    program_id           uuid NOT NULL REFERENCES programs (id),
    account_id           uuid NOT NULL REFERENCES accounts (id),
    card_id              uuid,
    clearing_source      text NOT NULL,
    clearing_message_id  text NOT NULL,
    network_reference    text NOT NULL DEFAULT '',
    asset                text NOT NULL,
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    reason_code          text NOT NULL,
    status               text NOT NULL CHECK (status IN ('OPEN', 'CHARGEBACK_SENT', 'REPRESENTED',
                                                          'CARDHOLDER_WON', 'MERCHANT_WON')),
    provisional_minor    bigint NOT NULL DEFAULT 0 CHECK (provisional_minor >= 0),
    -- whether its steps post to authswitch's ledger (false: an off-ledger program's client
    -- settles them, told by notification)
    on_ledger            boolean NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX disputes_clearing ON disputes (clearing_source, clearing_message_id);
CREATE INDEX disputes_program ON disputes (program_id, updated_at);

CREATE TABLE dispute_events (
    id           bigserial PRIMARY KEY,
    dispute_id   uuid NOT NULL REFERENCES disputes (id),
    step         text NOT NULL,
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    amount_minor bigint NOT NULL DEFAULT 0,
    entry_id     uuid,
    source       text NOT NULL,
    message_id   text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    UNIQUE (source, message_id)
);
CREATE INDEX dispute_events_day ON dispute_events (created_at);
