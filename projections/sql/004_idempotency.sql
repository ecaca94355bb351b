-- Idempotency keys of POST /api/job/run. Not a projection: the API's own request log, so that the
-- same key with the same body maps to the same job id and a different body is refused.
CREATE TABLE idempotency_keys (
    user_id      text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    job_id       uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
