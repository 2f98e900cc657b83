-- spotbatch: what a save writes besides the compare-and-swap itself.
--
-- 1. A run's row keeps the last checkpoint that run saved itself.
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

-- 2. The checkpoint row's checks, without re-planning them at every save.
--
-- Postgres parses and plans a table's CHECK constraints again for every
-- UPDATE (for the three of this table, more server time than the rest of a
-- save's statement), while a domain's constraint is planned once per
-- connection. `status` and `version` keep their checks as
-- domains. The check that `lease_owner` and `lease_expires_at` are NULL
-- together is dropped: the store writes both from one value, and neither
-- `load` nor `list` reads them (the envelope holds the lease). Clients see
-- the base types (text, bigint): Postgres describes a domain column by its
-- base type.

CREATE DOMAIN spotbatch_status AS text
    CHECK (VALUE IN ('running', 'interrupted', 'completed', 'failed'));
CREATE DOMAIN spotbatch_version AS bigint CHECK (VALUE >= 1);

ALTER TABLE spotbatch_checkpoints
    DROP CONSTRAINT IF EXISTS spotbatch_checkpoints_status_check,
    DROP CONSTRAINT IF EXISTS spotbatch_checkpoints_version_check,
    DROP CONSTRAINT IF EXISTS spotbatch_checkpoints_lease_whole,
    ALTER COLUMN status TYPE spotbatch_status,
    ALTER COLUMN version TYPE spotbatch_version;
