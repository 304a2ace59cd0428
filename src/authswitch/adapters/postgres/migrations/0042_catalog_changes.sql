-- Catalogue changes, for the other processes' caches (service/catalog_watch.py): every
-- admin change of a cached catalogue entry (a programme, a product with its fees and
-- limits, a card's or an account's spend controls) adds a row; each process reads the rows
-- after the last it saw, every AUTHSWITCH_CATALOG_POLL_MS, and drops those entries. Rows
-- older than a day are deleted (a process that sleeps longer reloads everything).
CREATE TABLE catalog_changes (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    ident       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
