-- The transaction lifecycle: reversals that arrive before their authorisation, clearings,
-- refunds, age-off; customers and joint accounts; several accounts per card; hold validity
-- per merchant category.

-- A reversal whose original authorisation is unknown leaves a tombstone under the
-- original's (source, message_id). The unique key makes Postgres the arbiter of the race
-- between the two: whichever commits second sees the other. When the original arrives, its
-- hold is written over the tombstone already reduced by what was reversed.
ALTER TABLE holds
    ALTER COLUMN account_id DROP NOT NULL,
    ALTER COLUMN asset DROP NOT NULL,
    ADD COLUMN tombstone boolean NOT NULL DEFAULT false,
    ADD COLUMN reversed_minor bigint NOT NULL DEFAULT 0 CHECK (reversed_minor >= 0),
    ADD COLUMN reversal_full boolean NOT NULL DEFAULT false,
    ADD COLUMN cleared_minor bigint NOT NULL DEFAULT 0 CHECK (cleared_minor >= 0),
    ADD COLUMN end_reason text NOT NULL DEFAULT '',
    ADD COLUMN kind text NOT NULL DEFAULT 'AUTHORIZATION',
    ADD CONSTRAINT holds_real_or_tombstone CHECK (tombstone OR (account_id IS NOT NULL AND asset IS NOT NULL)),
    ADD CONSTRAINT holds_tombstone_is_ended CHECK (NOT tombstone OR status = 'REVERSED'),
    ADD CONSTRAINT holds_amount_within_original CHECK (amount_minor <= original_minor OR tombstone);

-- Every release of (part of) a hold, for the account history: reversals, clearings,
-- age-off, manual releases, and reversals that were waiting for their original.
CREATE TABLE hold_events (
    id            bigserial PRIMARY KEY,
    hold_id       uuid NOT NULL,
    account_id    uuid NOT NULL,
    asset         text NOT NULL,
    kind          text NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor >= 0),
    at            timestamptz NOT NULL
);
CREATE INDEX hold_events_account ON hold_events (account_id, at DESC);

-- Validity of holds per merchant category: {"7011": 30} keeps hotel holds for 30 days.
ALTER TABLE products
    ADD COLUMN hold_validity_by_mcc jsonb NOT NULL DEFAULT '{}';

CREATE TABLE customers (
    id          uuid PRIMARY KEY,
    program_id  uuid NOT NULL REFERENCES programs (id),
    name        text NOT NULL DEFAULT '',
    reference   text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_program ON customers (program_id);

-- Who holds an account: one customer, or several for a joint account.
CREATE TABLE account_holders (
    account_id   uuid NOT NULL REFERENCES accounts (id),
    customer_id  uuid NOT NULL REFERENCES customers (id),
    PRIMARY KEY (account_id, customer_id)
);
CREATE INDEX account_holders_customer ON account_holders (customer_id);

-- The accounts a card is linked to. A card transaction always draws on the card's spend
-- account (cards.account_id); linked accounts (savings, pots) are visible through the card
-- but never debited by the network.
CREATE TABLE card_accounts (
    card_id     uuid NOT NULL REFERENCES cards (id),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (card_id, account_id)
);
