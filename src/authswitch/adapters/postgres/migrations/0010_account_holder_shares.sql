-- Joint accounts (seed 000, issue 17): holders are added and removed through the API, and
-- each holder may have a share of the account. The pooled FBO balance file (seed 002) gives
-- each customer their share of every account they hold: equal unless set, as the FDIC
-- deems co-owners' interests (12 CFR 330.9(b)).
--
-- An account's shares are all unset (equal) or all set and summing to 10,000 basis points;
-- the application keeps it so under a lock on the account row, and a constraint trigger,
-- checked at commit, refuses any transaction that would leave it otherwise.
ALTER TABLE account_holders
    ADD COLUMN share_bps integer CHECK (share_bps BETWEEN 1 AND 10000),
    ADD COLUMN added_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION authswitch_account_shares_whole() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    account uuid := coalesce(NEW.account_id, OLD.account_id);
    holders bigint;
    shared bigint;
    total bigint;
BEGIN
    SELECT count(*), count(share_bps), coalesce(sum(share_bps), 0)
      INTO holders, shared, total
      FROM account_holders WHERE account_id = account;
    IF shared <> 0 AND (shared <> holders OR total <> 10000) THEN
        RAISE EXCEPTION 'the shares of account % must all be set and sum to 10000 (% of % set, sum %)',
            account, shared, holders, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER account_shares_whole
    AFTER INSERT OR UPDATE OR DELETE ON account_holders
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION authswitch_account_shares_whole();
