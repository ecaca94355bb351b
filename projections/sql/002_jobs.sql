-- The `jobs` projection: one row per job, the folded state of its events (projections/jobs.py).
CREATE TABLE jobs (
    job_id       uuid PRIMARY KEY,
    user_id      text        NOT NULL,
    state        text        NOT NULL,
    command      text        NOT NULL,
    binary_file  jsonb,
    input_files  jsonb       NOT NULL DEFAULT '[]',
    ttl          bigint,
    deadline     timestamptz,
    submitted_at timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    exit_code    int,
    answer_id    uuid,
    stderr_id    uuid,
    error        text,
    attempt      int         NOT NULL,
    executor_id  text,
    lease_until  timestamptz,
    request_hash text,
    deleted      boolean     NOT NULL DEFAULT false,
    version      int         NOT NULL,
    correlation_id text      NOT NULL DEFAULT ''
);
-- list_jobs: newest first, per user, by state (keyset pagination on submitted_at, job_id).
CREATE INDEX jobs_user_list ON jobs (user_id, submitted_at DESC, job_id DESC) WHERE NOT deleted;
CREATE INDEX jobs_list ON jobs (submitted_at DESC, job_id DESC) WHERE NOT deleted;
CREATE INDEX jobs_state_list ON jobs (state, submitted_at DESC, job_id DESC) WHERE NOT deleted;
