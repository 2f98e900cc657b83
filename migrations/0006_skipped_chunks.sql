-- spotbatch: each chunk a run skipped (Runner::skip), with its error, kept
-- for good.
--
-- The checkpoint holds the chunks skipped and not yet redriven (`spotbatch
-- skipped`); a redrive that does one takes it out of the checkpoint. This
-- table keeps every skip, redriven or not: one row per chunk a run skipped,
-- written by the save whose checkpoint first holds it, in the same
-- statement. A redriven chunk that fails again is skipped again, by the run
-- that redrove it: a row of its own, of that run.
--
-- A table of its own rather than a jsonb list on `spotbatch_runs`: "which
-- chunks did last night's runs skip, and why" is a range on `skipped_at`
-- over typed columns, indexed, with no jsonb to unnest; a save appends the
-- chunks it is the first to hold, and never rewrites a run's row (or its
-- growing list) for them; a run that skipped none costs nothing. There is no
-- foreign key to `spotbatch_runs`: a run's row may be missing (rows deleted
-- by hand, a checkpoint imported from another store), and a skip is never
-- lost for that; `job_key` is here so that the table reads alone.
--
-- The cursors are their text as `spotbatch skipped` prints it (the cursor's
-- Rust `Debug` form); the encoded cursors stay in the checkpoint.

CREATE TABLE spotbatch_skipped_chunks (
    run_id       uuid        NOT NULL,   -- the run that skipped it (spotbatch_runs.run_id)
    job_key      text        NOT NULL,
    start_cursor text        NOT NULL,   -- where the chunk starts (Chunk::start)
    next_cursor  text        NOT NULL,   -- where the next chunk starts (Chunk::next)
    items        bigint      NOT NULL,   -- the chunk's items (Chunk::items)
    attempts     integer     NOT NULL,   -- attempts made before the skip, retries included
    error        text        NOT NULL,   -- the last attempt's error (at most 1 KiB)
    skipped_at   timestamptz NOT NULL
);

-- One row per skip: a save that sends a skip already recorded (a process's
-- first save sends all its checkpoint holds) inserts nothing. The cursor is
-- hashed: a btree entry holds at most 2704 bytes, and a cursor's text (a
-- long key, a token) may be longer and not compress.
CREATE UNIQUE INDEX spotbatch_skipped_chunks_once
    ON spotbatch_skipped_chunks (run_id, skipped_at, md5(start_cursor));

COMMENT ON TABLE spotbatch_skipped_chunks IS
    'spotbatch: one row per chunk a run skipped, with its error; kept after a redrive does it';

-- "Which chunks were skipped since yesterday?"
CREATE INDEX spotbatch_skipped_chunks_at ON spotbatch_skipped_chunks (skipped_at);
