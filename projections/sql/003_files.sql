-- The `files` projection: metadata of stored files (uploads and job outputs); bytes live in the blob store.
CREATE TABLE files (
    file_id      uuid PRIMARY KEY,
    owner_id     text        NOT NULL,
    name         text        NOT NULL,
    size         bigint      NOT NULL,
    sha256       text        NOT NULL,
    content_type text        NOT NULL,
    job_id       uuid,
    stored_at    timestamptz NOT NULL,
    purged_at    timestamptz,
    version      int         NOT NULL
);
