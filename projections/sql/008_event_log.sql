-- The `event_log` projection: every event of every event topic, for audit and history queries.
-- The Kafka position is the key, so a redelivered batch inserts nothing twice.
CREATE TABLE event_log (
    topic          text        NOT NULL,
    partition      int         NOT NULL,
    "offset"       bigint      NOT NULL,
    kind           text        NOT NULL,   -- job, file, work, service, task, pipeline, ...: the type's first word
    stream_id      text        NOT NULL,
    type           text        NOT NULL,
    sequence       int         NOT NULL,
    occurred_at    timestamptz NOT NULL,
    actor          text,
    owner          text,                   -- the user the stream belongs to (null: admins only)
    event_id       text        NOT NULL,
    correlation_id text,
    causation_id   text,
    data           jsonb       NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX event_log_stream ON event_log (kind, stream_id, occurred_at, sequence);
CREATE INDEX event_log_time ON event_log (occurred_at, topic, partition, "offset");
CREATE INDEX event_log_owner ON event_log (owner, occurred_at);
CREATE INDEX event_log_type ON event_log (type, occurred_at);
CREATE INDEX event_log_task ON event_log ((data ->> 'task_id')) WHERE data ? 'task_id';

-- Who owns each stream: learnt from the stream's first event, used to fill event_log.owner.
CREATE TABLE stream_owners (
    stream_id text PRIMARY KEY,
    owner     text NOT NULL
);
