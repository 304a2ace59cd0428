-- The daily settlement position per program and network (issue 17; seed 002 "fund your
-- network settlement accounts ... with the exact settlement amount", seed 003 "forecast
-- settlement position"): a file kind of its own, and the network's clearings and refunds of
-- a day found without reading every decision (off-ledger programs have no journal entries
-- for them, only their decisions).
ALTER TABLE file_schedules DROP CONSTRAINT file_schedules_kind_check;
ALTER TABLE file_schedules ADD CONSTRAINT file_schedules_kind_check
    CHECK (kind IN ('balances', 'transactions', 'chargebacks', 'subledger', 'fbo', 'settlement'));

CREATE INDEX decisions_settlement_day ON decisions (created_at)
    WHERE kind IN ('CLEARING', 'REFUND');
