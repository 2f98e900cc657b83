-- spotbatch: one row per run of a job (one per `Runner::run`), upserted by
-- the store in the same transaction as each checkpoint save, from the recent
-- history the checkpoint carries. Rows outlive the checkpoint's history
-- window (the envelope keeps the last 20 runs; this table keeps them all)
-- and the checkpoint itself.

CREATE TABLE spotbatch_runs (
    run_id              uuid        PRIMARY KEY,
    job_key             text        NOT NULL,
    started_at          timestamptz NOT NULL,
    -- NULL while the run goes on, and forever if it was killed (SIGKILL, OOM, host loss)
    ended_at            timestamptz,
    outcome             text        NOT NULL,   -- running | completed | interrupted | failed
    outcome_detail      text        NOT NULL,   -- as the runner recorded it, e.g. 'interrupted (SIGTERM)'
    interruption_source text,                   -- SIGTERM, SIGINT, max-runtime, ...; NULL unless interrupted
    chunks              bigint      NOT NULL,   -- chunks the run finished, as of its last checkpoint
    writer_host         text        NOT NULL,
    writer_task         text,                   -- e.g. the ECS task ARN; NULL when unknown
    -- The last checkpoint that changed this row: for a killed run, the work
    -- done after it was lost and redone by the next run.
    last_saved_at       timestamptz NOT NULL,
    last_version        bigint      NOT NULL
);

COMMENT ON TABLE spotbatch_runs IS 'spotbatch: one row per run of a job, written with its checkpoints';

CREATE INDEX spotbatch_runs_job ON spotbatch_runs (job_key, started_at);
