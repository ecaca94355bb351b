-- The `services` projection (projections/services.py): the registry of worker services (seed 004).
-- service_id is allocated by the registry agent (dense, in order of first appearance of a name) and
-- carried by the events, so a rebuilt projection has the same ids.
CREATE TABLE services (
    service_id   int PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    description  text        NOT NULL DEFAULT '',
    arguments    jsonb       NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL,
    version      int         NOT NULL
);
CREATE TABLE service_instances (
    instance_id     uuid PRIMARY KEY,
    url             text        NOT NULL,
    service_id      int,
    state           text        NOT NULL,  -- up, down or removed
    reason          text,
    name            text,
    description     text,
    arguments       jsonb,
    task_path       text,
    max_concurrency int,
    registered_at   timestamptz NOT NULL,
    changed_at      timestamptz NOT NULL,
    removed_at      timestamptz,
    version         int         NOT NULL
);
CREATE INDEX service_instances_live ON service_instances (service_id) WHERE removed_at IS NULL;
CREATE INDEX service_instances_url ON service_instances (url) WHERE removed_at IS NULL;
