-- Pipelines on Kafka (seed 002): specs and runs become projections of their events. The plain tables
-- of 010 (written by the API) go; pipeline_documents stays a table the built-in services own.
DROP TABLE IF EXISTS pipelines;
DROP TABLE IF EXISTS pipeline_runs;

-- The `pipelines` projection (projections/pipelines.py): the stored specs, from skyjobs.pipeline-events.
CREATE TABLE pipelines (
    name        text PRIMARY KEY,
    spec        jsonb       NOT NULL,
    user_id     text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     int         NOT NULL   -- the stream's sequence of the last event applied
);

-- The `pipeline_runs` projection (projections/pipeline_runs.py): one row per run, from skyjobs.pipeline-runs.
-- Events of one run come from several workers: every column is filled by whichever event knows it.
CREATE TABLE pipeline_runs (
    run_id         uuid PRIMARY KEY,
    pipeline       text,
    user_id        text,
    state          text        NOT NULL,   -- running | succeeded | failed
    status         int,
    method         text,
    path           text,
    query          text,
    error          text,
    fanouts        int         NOT NULL DEFAULT 0,
    joins          int         NOT NULL DEFAULT 0,
    started_at     timestamptz,
    finished_at    timestamptz,
    deadline       timestamptz,
    correlation_id text
);
CREATE INDEX pipeline_runs_user ON pipeline_runs (user_id, run_id DESC);
CREATE INDEX pipeline_runs_finished ON pipeline_runs (finished_at) WHERE finished_at IS NOT NULL;

-- The `pipeline_steps` projection (projections/pipeline_steps.py): one row per HTTP request of a run.
CREATE TABLE pipeline_steps (
    step_id      text PRIMARY KEY,      -- run id / step
    run_id       uuid        NOT NULL,
    step         text        NOT NULL,  -- token, element and request index: unique in the run
    token_id     text        NOT NULL,
    element      text        NOT NULL,
    method       text,
    url          text,
    retry        int         NOT NULL DEFAULT 0,
    worker       text,                  -- the worker that sent it (the latest, when it was sent again)
    status       int,
    duration_ms  double precision,
    output_name  text,
    size         int,
    content_type text,
    error        text,
    requested_at timestamptz,
    responded_at timestamptz
);
CREATE INDEX pipeline_steps_run ON pipeline_steps (run_id);
CREATE INDEX pipeline_steps_responded ON pipeline_steps (responded_at) WHERE responded_at IS NOT NULL;
