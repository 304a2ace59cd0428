-- Issue 17 item 4: what a product does when the PIN tries are used up. BLOCK_CARD (seed 000,
-- the default) blocks the card; BLOCK_PIN refuses PIN requests only (the earlier behaviour).
ALTER TABLE products
    ADD COLUMN pin_tries_exceeded_action text NOT NULL DEFAULT 'BLOCK_CARD'
        CHECK (pin_tries_exceeded_action IN ('BLOCK_CARD', 'BLOCK_PIN'));
