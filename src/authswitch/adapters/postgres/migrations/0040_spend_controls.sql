-- Spend controls of a card or an account (issue 18, item 1): versioned, effective-dated
-- sets; the set in force at a decision is the one with the latest effective_from not after
-- it. A version is never changed or removed: a new version replaces it (an empty set lifts
-- every control). subject_id is a card's id or an account's (ids are UUIDs, never shared).
CREATE TABLE spend_controls (
    subject_id      uuid NOT NULL,
    version         integer NOT NULL CHECK (version > 0),
    subject         text NOT NULL CHECK (subject IN ('CARD', 'ACCOUNT')),
    effective_from  timestamptz NOT NULL,
    controls        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, version)
);
