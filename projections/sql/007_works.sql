-- The `works` projection (seed 003): works and the history of their tasks (projections/works.py).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE works (
    work_id         text PRIMARY KEY,          -- 32 lowercase hex digits
    lambda_id       text,
    user_id         text        NOT NULL,
    name            text        NOT NULL,
    description     text        NOT NULL,
    type            text        NOT NULL,
    category        text        NOT NULL,
    status          int         NOT NULL,
    work_directory  text,
    main_class_name text,
    extra_params    jsonb       NOT NULL DEFAULT '[]',
    java_version    text,
    run_frequency   text,
    command         text,
    overlap         text        NOT NULL,
    catchup         text        NOT NULL,
    ttl             bigint,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    next_due        timestamptz,
    last_command_id text,                      -- lets the API wait for its own write (read-your-writes)
    version         int         NOT NULL
);
-- Listing: per user and overall, in each documented order.
CREATE INDEX works_user_created ON works (user_id, created_at DESC, work_id) WHERE deleted_at IS NULL;
CREATE INDEX works_created ON works (created_at DESC, work_id) WHERE deleted_at IS NULL;
CREATE INDEX works_updated ON works (updated_at DESC, work_id) WHERE deleted_at IS NULL;
CREATE INDEX works_name ON works (name, work_id) WHERE deleted_at IS NULL;
-- Search: case-insensitive substring of name or description, served by trigram indexes.
CREATE INDEX works_name_trgm ON works USING gin (name gin_trgm_ops) WHERE deleted_at IS NULL;
CREATE INDEX works_description_trgm ON works USING gin (description gin_trgm_ops) WHERE deleted_at IS NULL;

CREATE TABLE work_tasks (
    task_id      text PRIMARY KEY,             -- 32 hex digits; the job of the task has the same UUID
    work_id      text        NOT NULL,
    job_id       uuid        NOT NULL,
    reason       text        NOT NULL,         -- schedule | catch-up | manual | backfill
    due_at       timestamptz,
    scheduled_at timestamptz NOT NULL,
    skipped      text,                         -- why it did not run (overlap policy), else null
    command_id   text
);
CREATE INDEX work_tasks_by_work ON work_tasks (work_id, scheduled_at DESC, task_id);
