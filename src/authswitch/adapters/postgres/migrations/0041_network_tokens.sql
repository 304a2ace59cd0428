-- Network tokens (issue 18, item 5): device-wallet tokens (DPANs) of a card, each with its
-- own status. The token number is stored only as its keyed hash (as a PAN is) with its last
-- four digits. A product's provisioning policy decides new tokens.
CREATE TABLE network_tokens (
    id                  uuid PRIMARY KEY,
    card_id             uuid NOT NULL REFERENCES cards (id),
    token_hmac          bytea NOT NULL UNIQUE,
    last_four           text NOT NULL,
    expiry_yymm         text NOT NULL,
    token_requestor_id  text NOT NULL,
    status              text NOT NULL
        CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED', 'DEACTIVATED')),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX network_tokens_card ON network_tokens (card_id);

CREATE TABLE token_policies (
    product_id               uuid PRIMARY KEY REFERENCES products (id),
    tokens_allowed           boolean NOT NULL,
    step_up_always           boolean NOT NULL,
    step_up_declines_min     integer NOT NULL CHECK (step_up_declines_min >= 0),
    decline_declines_min     integer NOT NULL CHECK (decline_declines_min >= 0),
    step_up_risk_score_min   integer,
    decline_risk_score_min   integer,
    updated_at               timestamptz NOT NULL
);
