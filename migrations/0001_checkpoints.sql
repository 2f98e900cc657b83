-- spotbatch: one row per job key, holding the job's checkpoint.
--
-- `envelope` is the checkpoint exactly as `Checkpoint::encode()` writes it
-- (self-checking: magic, format, CRC-32), the same bytes the file and S3
-- stores keep, so a checkpoint moves between stores unchanged. Every other
-- column is a copy of a field of that envelope, written in the same
-- statement, for operators to query with plain SQL; `load` trusts only the
-- envelope. `version` is the compare-and-swap column: every save is
-- `UPDATE ... WHERE key = $1 AND version = $expected`.
--
-- The store runs this with search_path set to its schema (default `public`).

CREATE TABLE spotbatch_checkpoints (
    key              text        PRIMARY KEY,
    version          bigint      NOT NULL CHECK (version >= 1),
    status           text        NOT NULL
                                 CHECK (status IN ('running', 'interrupted', 'completed', 'failed')),
    -- interruption source (SIGTERM, max-runtime, ...) or failure message; '' otherwise
    status_detail    text        NOT NULL DEFAULT '',
    envelope         bytea       NOT NULL,
    cursor_codec     text        NOT NULL,          -- bincode | json
    cursor_type      text        NOT NULL,          -- the Rust type of (cursor, state)
    job_schema       bigint      NOT NULL,          -- Job::SCHEMA_VERSION
    cursor_json      jsonb,                         -- the cursor, when the codec is json
    chunks           bigint      NOT NULL,
    items            bigint      NOT NULL,
    checkpoints      bigint      NOT NULL,
    interruptions    bigint      NOT NULL,
    runs             bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    writer_host      text        NOT NULL,
    writer_pid       bigint      NOT NULL,
    writer_run_id    uuid        NOT NULL,
    writer_task      text,                          -- e.g. the ECS task ARN; NULL when unknown
    -- The lease: the runner that holds the job, until when (renewed by its
    -- heartbeat). Both NULL when nobody holds it.
    lease_owner      uuid,
    lease_expires_at timestamptz,
    CONSTRAINT spotbatch_checkpoints_lease_whole
        CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);

COMMENT ON TABLE spotbatch_checkpoints IS
    'spotbatch: one checkpoint per job key; envelope is authoritative, other columns mirror it';

-- "Which jobs are running, and since when did they last check in?"
CREATE INDEX spotbatch_checkpoints_status ON spotbatch_checkpoints (status, updated_at);
