-- Issue 17 item 3: an on-ledger programme subscribes to MOVEMENT notifications (every
-- balance movement with the balance after it, through the outbox; service/movements.py).
ALTER TABLE programs ADD COLUMN movements boolean NOT NULL DEFAULT false;
