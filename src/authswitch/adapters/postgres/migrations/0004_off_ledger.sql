-- Off-ledger switching (DESIGN.md §6): where each program's DecisionService is, how long to
-- wait, how to stand in, when to stop asking; where notifications go; what each client call
-- did.

CREATE TABLE program_routing (
    program_id                 uuid PRIMARY KEY REFERENCES programs (id),
    -- host:port of the client's DecisionService (also where "client" notifications go).
    target                     text NOT NULL CHECK (length(target) BETWEEN 3 AND 255),
    tls                        text NOT NULL DEFAULT 'NONE' CHECK (tls IN ('NONE', 'TLS', 'MTLS')),
    -- Names of secrets (AUTHSWITCH_SECRET_<NAME>, or files in AUTHSWITCH_SECRETS_DIR), never
    -- the secrets themselves.
    ca_secret                  text NOT NULL DEFAULT '',
    cert_secret                text NOT NULL DEFAULT '',
    key_secret                 text NOT NULL DEFAULT '',
    token_secret               text NOT NULL DEFAULT '',
    deadline_ms                integer NOT NULL DEFAULT 1000 CHECK (deadline_ms BETWEEN 20 AND 10000),
    stand_in                   text NOT NULL DEFAULT 'DECLINE' CHECK (stand_in IN ('DECLINE', 'APPROVE', 'SHADOW')),
    stand_in_asset             text NOT NULL DEFAULT '',
    stand_in_transaction_max_minor bigint NOT NULL DEFAULT 0 CHECK (stand_in_transaction_max_minor >= 0),
    stand_in_daily_max_minor   bigint NOT NULL DEFAULT 0 CHECK (stand_in_daily_max_minor >= 0),
    breaker_failures           integer NOT NULL DEFAULT 5 CHECK (breaker_failures BETWEEN 1 AND 1000),
    breaker_error_rate_pct     integer NOT NULL DEFAULT 50 CHECK (breaker_error_rate_pct BETWEEN 1 AND 100),
    breaker_window             integer NOT NULL DEFAULT 20 CHECK (breaker_window BETWEEN 1 AND 10000),
    breaker_open_ms            integer NOT NULL DEFAULT 5000 CHECK (breaker_open_ms BETWEEN 10 AND 600000),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- Where a program's notifications are delivered: its client's Notify, an HTTPS webhook, or
-- both. On-ledger programs may subscribe too.
CREATE TABLE program_sinks (
    program_id   uuid NOT NULL REFERENCES programs (id),
    sink         text NOT NULL CHECK (sink IN ('client', 'webhook')),
    url          text NOT NULL DEFAULT '',
    secret_name  text NOT NULL DEFAULT '',
    PRIMARY KEY (program_id, sink),
    CHECK (sink <> 'webhook' OR (url LIKE 'https://%' OR url LIKE 'http://%'))
);

-- What each off-ledger decision did: the client's answer, or the stand-in and why.
CREATE TABLE client_calls (
    source                text NOT NULL,
    message_id            text NOT NULL,
    program_id            uuid NOT NULL,
    outcome               text NOT NULL CHECK (outcome IN ('CLIENT', 'STAND_IN')),
    stand_in_reason       text NOT NULL DEFAULT '',
    stand_in_policy       text NOT NULL DEFAULT '',
    client_decision       text NOT NULL DEFAULT '',
    client_response_code  text NOT NULL DEFAULT '',
    client_reason         text NOT NULL DEFAULT '',
    latency_us            integer,
    created_at            timestamptz NOT NULL,
    PRIMARY KEY (source, message_id)
);
CREATE INDEX client_calls_program ON client_calls (program_id, created_at);
