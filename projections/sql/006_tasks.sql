-- The `tasks` projection (projections/tasks.py): one row per add_task, the fold of its events.
CREATE TABLE tasks (
    task_id        uuid PRIMARY KEY,
    service_id     int         NOT NULL,
    user_id        text        NOT NULL,
    state          text        NOT NULL,  -- pending, answered or failed
    attempts       int         NOT NULL,
    instance_id    uuid,
    answer         text,                  -- the instance's JSON answer as it sent it
    answer_file_id uuid,                  -- or the file holding it, when it was large
    error          text,
    failure        text,                  -- why it failed: rejected, exhausted, no_instance, expired
    submitted_at   timestamptz NOT NULL,
    finished_at    timestamptz,
    deadline       timestamptz NOT NULL,
    version        int         NOT NULL,
    correlation_id text        NOT NULL DEFAULT ''
);
