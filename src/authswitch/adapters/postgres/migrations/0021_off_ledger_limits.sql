-- Issue 17 item 2: off-ledger limits and counters. An off-ledger decision remembers the
-- counters it added to (usage_keys) and how much (usage_minor: the approved amount and its
-- fee), so that a reversal forwarded to the client gives the amount back, once per reversal
-- message (usage_returned_by) and never more than was counted (usage_returned_minor).
ALTER TABLE client_calls
    ADD COLUMN usage_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN usage_minor bigint NOT NULL DEFAULT 0 CHECK (usage_minor >= 0),
    ADD COLUMN usage_returned_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN usage_returned_by text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT client_calls_usage_returned
        CHECK (usage_returned_minor BETWEEN 0 AND usage_minor);
