-- Pipelines (seed 002): stored specs, the built-in JSON/template/transform document store and run records.
-- Plain tables written by the API (see docs/pipelines.md for why these are not projections yet).
CREATE TABLE IF NOT EXISTS pipelines (
    name        text PRIMARY KEY,
    spec        jsonb       NOT NULL,
    user_id     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline_documents (
    key          text PRIMARY KEY,             -- "json/...", "templates/...", "transform/..."
    body         bytea       NOT NULL,
    content_type text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id      uuid PRIMARY KEY,
    pipeline    text        NOT NULL,
    user_id     text        NOT NULL,
    state       text        NOT NULL,          -- running | succeeded | failed
    status      int,
    method      text        NOT NULL,
    path        text        NOT NULL,
    steps       jsonb       NOT NULL DEFAULT '[]',
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
