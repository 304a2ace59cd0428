-- Issue 17 item 2, seed 004 ("amount based limit values are adjusted as required" at
-- clearing): an off-ledger approval remembers its transaction, so that a clearing forwarded
-- to the client moves the amount it counted to the amount cleared.
ALTER TABLE client_calls ADD COLUMN network_reference text NOT NULL DEFAULT '';
CREATE INDEX client_calls_counted ON client_calls (network_reference) WHERE usage_minor > 0;
