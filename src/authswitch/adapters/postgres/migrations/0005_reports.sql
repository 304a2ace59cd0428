-- Scheduled reports: which clients get the daily balance report (seed 003), and a record of
-- every report run, so a day's report is made once however many replicas run the job.

CREATE TABLE report_subscriptions (
    client_id   uuid PRIMARY KEY REFERENCES clients (id),
    prefix      text NOT NULL CHECK (prefix ~ '^[A-Za-z0-9_]{1,15}$'),
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE report_runs (
    kind        text NOT NULL,
    subject     text NOT NULL,
    day         date NOT NULL,
    file_name   text NOT NULL DEFAULT '',
    records     bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (kind, subject, day)
);
