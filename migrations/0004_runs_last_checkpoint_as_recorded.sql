-- spotbatch: a run's row keeps the last checkpoint that run saved itself.
--
-- `last_saved_at` and `last_version` are taken only from a checkpoint the
-- row's own run wrote: when it starts and ends, and, for a run that was
-- killed, from its last checkpoint row when the next run replaces it (a
-- later run adds what it learned, `killed`, never its own save time). A
-- save of a run's progress writes the checkpoint row alone; the run's row
-- takes it at the run's end (or a lease renewal, or the next run).
--
-- A record the store never saw a checkpoint of (a checkpoint imported from
-- another store, or rows deleted by hand) has no such values: NULL.

ALTER TABLE spotbatch_runs
    ALTER COLUMN last_saved_at DROP NOT NULL,
    ALTER COLUMN last_version DROP NOT NULL;

COMMENT ON COLUMN spotbatch_runs.last_saved_at IS
    'spotbatch: the run''s last checkpoint as the store recorded it (at its start and end, or from its checkpoint row once a later run found it killed); NULL when unknown';
COMMENT ON COLUMN spotbatch_runs.last_version IS
    'spotbatch: the version of that checkpoint; NULL when unknown';
