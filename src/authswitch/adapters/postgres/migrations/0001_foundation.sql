-- The catalogue (clients, programs, products, accounts, cards), balances, holds, the journal,
-- the durable decision record that makes every message idempotent, and the audit log.
-- Money is bigint minor units of an asset, never numeric or float.

CREATE TABLE assets (
    code          text PRIMARY KEY CHECK (code ~ '^[A-Z0-9]{3,12}$'),
    category      text NOT NULL CHECK (category IN ('FIAT', 'CRYPTO', 'COMMODITY')),
    exponent      smallint NOT NULL CHECK (exponent BETWEEN 0 AND 18),
    numeric_code  text NOT NULL DEFAULT '' CHECK (numeric_code ~ '^(\d{3})?$'),
    CHECK (category <> 'FIAT' OR numeric_code <> '')
);

INSERT INTO assets (code, category, exponent, numeric_code) VALUES
    ('GBP', 'FIAT', 2, '826'),
    ('EUR', 'FIAT', 2, '978'),
    ('USD', 'FIAT', 2, '840'),
    ('CHF', 'FIAT', 2, '756'),
    ('SEK', 'FIAT', 2, '752'),
    ('PLN', 'FIAT', 2, '985'),
    ('CAD', 'FIAT', 2, '124'),
    ('AUD', 'FIAT', 2, '036'),
    ('JPY', 'FIAT', 0, '392'),
    ('KWD', 'FIAT', 3, '414'),
    ('BTC', 'CRYPTO', 8, ''),
    -- Ether in gwei: wei (exponent 18) would overflow int64 at 9.2 ETH.
    ('ETH', 'CRYPTO', 9, ''),
    -- Gold in milligrams of a troy ounce is not a thing; grams with 3 decimals is.
    ('XAU', 'COMMODITY', 3, '959');

CREATE TABLE clients (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE programs (
    id                   uuid PRIMARY KEY,
    client_id            uuid NOT NULL REFERENCES clients (id),
    name                 text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    mode                 text NOT NULL CHECK (mode IN ('ON_LEDGER', 'OFF_LEDGER')),
    time_zone            text NOT NULL DEFAULT 'UTC',
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX programs_client ON programs (client_id);

CREATE TABLE products (
    id                         uuid PRIMARY KEY,
    program_id                 uuid NOT NULL REFERENCES programs (id),
    name                       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    account_types              text[] NOT NULL,
    assets                     text[] NOT NULL CHECK (cardinality(assets) >= 1),
    allowed_transaction_types  smallint[] NOT NULL DEFAULT '{}',
    allowed_channels           smallint[] NOT NULL DEFAULT '{}',
    blocked_mccs               text[] NOT NULL DEFAULT '{}',
    pin_tries_max              smallint NOT NULL DEFAULT 3 CHECK (pin_tries_max BETWEEN 1 AND 10),
    hold_validity_days         smallint NOT NULL DEFAULT 7 CHECK (hold_validity_days BETWEEN 1 AND 90),
    created_at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_program ON products (program_id);

-- Customer accounts and each program's system accounts. The clearing account is the
-- implicit clearing-house subledger of seed 002: every posting to a customer account is
-- balanced against it (or against the fee income account). System accounts keep no
-- balance row: their balance is the sum of their postings, so no batch serialises on them.
CREATE TABLE accounts (
    id            uuid PRIMARY KEY,
    program_id    uuid NOT NULL REFERENCES programs (id),
    product_id    uuid REFERENCES products (id),
    kind          text NOT NULL CHECK (kind IN ('CUSTOMER', 'CLEARING', 'FEE_INCOME')),
    account_type  text NOT NULL CHECK (account_type IN ('SINGLE', 'MULTI_CURRENCY')),
    name          text NOT NULL DEFAULT '',
    reference     text NOT NULL DEFAULT '',
    profile_id    uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'CUSTOMER') = (product_id IS NOT NULL))
);
CREATE INDEX accounts_program ON accounts (program_id, kind);
CREATE UNIQUE INDEX accounts_one_system_per_kind ON accounts (program_id, kind) WHERE kind <> 'CUSTOMER';

-- available = actual_minor - authorized_minor; authorized_minor is the sum of open holds.
CREATE TABLE balances (
    account_id        uuid NOT NULL REFERENCES accounts (id),
    asset             text NOT NULL REFERENCES assets (code),
    actual_minor      bigint NOT NULL DEFAULT 0,
    authorized_minor  bigint NOT NULL DEFAULT 0 CHECK (authorized_minor >= 0),
    is_base           boolean NOT NULL,
    PRIMARY KEY (account_id, asset)
);

-- A card is found by the HMAC of its PAN; the PAN itself is never stored. The PVV verifies a
-- PIN without storing it; the CVV2 is derived when needed and never stored.
CREATE TABLE cards (
    id             uuid PRIMARY KEY,
    program_id     uuid NOT NULL REFERENCES programs (id),
    product_id     uuid NOT NULL REFERENCES products (id),
    account_id     uuid NOT NULL REFERENCES accounts (id),
    pan_hmac       bytea NOT NULL UNIQUE CHECK (length(pan_hmac) = 32),
    bin            text NOT NULL CHECK (bin ~ '^\d{6,8}$'),
    last_four      text NOT NULL CHECK (last_four ~ '^\d{4}$'),
    expiry_yymm    text NOT NULL CHECK (expiry_yymm ~ '^\d{2}(0[1-9]|1[0-2])$'),
    status         text NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'BLOCKED', 'SUSPENDED',
                                                   'LOST', 'STOLEN', 'CLOSED', 'EXPIRED')),
    pvv            bytea,
    pin_tries      smallint NOT NULL DEFAULT 0 CHECK (pin_tries >= 0),
    pin_tries_max  smallint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_account ON cards (account_id);

-- Every message's outcome, written before its response is sent. (source, message_id) is the
-- idempotency key; the stored response is what a retransmission gets back, byte for byte.
CREATE TABLE decisions (
    source          text NOT NULL,
    message_id      text NOT NULL,
    id              uuid NOT NULL,
    kind            text NOT NULL,
    fingerprint     bytea NOT NULL,
    card_id         uuid,
    account_id      uuid,
    asset           text,
    amount_minor    bigint NOT NULL DEFAULT 0,
    approved_minor  bigint NOT NULL DEFAULT 0,
    fee_minor       bigint NOT NULL DEFAULT 0,
    response_code   text NOT NULL,
    reason          smallint NOT NULL,
    response        bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (source, message_id)
);
CREATE INDEX decisions_account ON decisions (account_id, created_at);

-- A reservation against a balance. Each hold ends exactly once: cleared, reversed, expired
-- (aged off) or released by an operator.
CREATE TABLE holds (
    id                 uuid PRIMARY KEY,
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
    UNIQUE (source, message_id),
    CHECK ((status = 'OPEN') = (ended_at IS NULL))
);
CREATE INDEX holds_open_reference ON holds (card_id, network_reference) WHERE status = 'OPEN';
CREATE INDEX holds_open_expiry ON holds (expires_at) WHERE status = 'OPEN';
CREATE INDEX holds_account ON holds (account_id, status);

-- Double entry: the postings of an entry sum to zero per asset. A positive amount increases
-- the account's balance.
CREATE TABLE journal_entries (
    id           uuid PRIMARY KEY,
    program_id   uuid NOT NULL REFERENCES programs (id),
    kind         text NOT NULL,
    source       text NOT NULL DEFAULT '',
    message_id   text NOT NULL DEFAULT '',
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL
);
CREATE INDEX journal_entries_program ON journal_entries (program_id, created_at);

CREATE TABLE postings (
    entry_id      uuid NOT NULL REFERENCES journal_entries (id),
    account_id    uuid NOT NULL REFERENCES accounts (id),
    asset         text NOT NULL,
    amount_minor  bigint NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (entry_id, account_id, asset)
);
CREATE INDEX postings_account ON postings (account_id, created_at DESC);

-- Every change made through the admin API.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    actor       text NOT NULL,
    action      text NOT NULL,
    subject_id  text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
