-- Currency conversion (docs/fx.md, issue 18 item 3).
--
-- fx_rates: admin-set rates of an asset pair, effective-dated; a rate is used from
-- effective_from until the next of its pair begins, and never after max_age_s. The rate is
-- kept as the text the admin gave (a plain decimal), the exact value responses show.
CREATE TABLE fx_rates (
    id              bigserial PRIMARY KEY,
    base_asset      text NOT NULL REFERENCES assets (code),
    quote_asset     text NOT NULL REFERENCES assets (code),
    rate            text NOT NULL,
    effective_from  timestamptz NOT NULL,
    max_age_s       integer NOT NULL CHECK (max_age_s > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (base_asset <> quote_asset)
);
CREATE INDEX fx_rates_pair ON fx_rates (base_asset, quote_asset, effective_from DESC);

-- A product converts a billing asset its cards' accounts do not hold when fx_enabled.
ALTER TABLE products
    ADD COLUMN fx_enabled boolean NOT NULL DEFAULT false,
    ADD COLUMN fx_markup_bps integer NOT NULL DEFAULT 0
        CHECK (fx_markup_bps BETWEEN 0 AND 10000);

-- What a converted message converted: the billing amount, the account's amount, the markup
-- and the rate, under the message's key. Written in the commit of the message's decision;
-- the hold, the journal entries and the transaction file of the message join it here.
CREATE TABLE fx_conversions (
    source               text NOT NULL,
    message_id           text NOT NULL,
    kind                 text NOT NULL,
    billing_asset        text NOT NULL,
    billing_minor        bigint NOT NULL CHECK (billing_minor >= 0),
    account_asset        text NOT NULL,
    account_minor        bigint NOT NULL CHECK (account_minor >= 0),
    markup_minor         bigint NOT NULL CHECK (markup_minor >= 0),
    rate                 text NOT NULL,
    rate_effective_from  timestamptz NOT NULL,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (source, message_id)
);
