-- The settlement position counts original credit transactions (push-to-card payments and
-- payouts: the network owes the issuer what it credited its cardholders), so their day's
-- decisions are found by the same index as clearings and refunds. Building an index locks
-- the table against writes: on a large decisions table, create this index CONCURRENTLY by
-- hand before upgrading (same name, same definition); the migration then only drops the
-- old one.
CREATE INDEX IF NOT EXISTS decisions_settlement_day_v2 ON decisions (created_at)
    WHERE kind IN ('CLEARING', 'REFUND', 'CREDIT');
DROP INDEX IF EXISTS decisions_settlement_day;
