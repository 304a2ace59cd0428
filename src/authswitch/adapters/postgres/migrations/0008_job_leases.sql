-- Leases of the periodic jobs (age-off, reports, partition maintenance...) for deployments
-- behind pgbouncer in transaction pooling mode, where a session advisory lock would stay on a
-- server connection that other clients go on to use (docs/scaling.md). A job runs while its
-- process holds the lease: taken when free or expired, renewed while the run lasts, given
-- back at its end. The database's clock decides expiry, so replicas' clocks never matter.
CREATE TABLE job_leases (
    name         text PRIMARY KEY,
    holder       uuid NOT NULL,
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
