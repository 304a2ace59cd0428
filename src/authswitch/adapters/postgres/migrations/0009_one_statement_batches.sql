-- The group committer writes a common batch in one statement (committer.py, "one
-- statement"): when Postgres's last word on funds would differ from the cache's, that
-- statement calls this to abort itself (nothing of it is written), and the batch is replayed
-- write by write in a transaction instead.
CREATE FUNCTION authswitch_batch_refused(detail text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'one-statement batch refused: %', detail USING ERRCODE = 'AS001';
END
$$;
