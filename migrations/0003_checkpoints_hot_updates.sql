-- spotbatch: let a save update its checkpoint row in place.
--
-- Every save changes `updated_at`. While an index covered it, no save could
-- be a heap-only (HOT) update: each one wrote a new entry into both indexes
-- and left the table and its indexes to grow until vacuum caught up. Saves
-- change neither `key` nor, while a run goes on, `status`: with the index on
-- `status` alone, a save writes the new row version on the same page and no
-- index entry. Pages keep 30% free for those new versions.
--
-- `WHERE status = 'running'` still uses the index; order by `updated_at`
-- after it (the table has one row per job).

DROP INDEX spotbatch_checkpoints_status;
CREATE INDEX spotbatch_checkpoints_status ON spotbatch_checkpoints (status);
ALTER TABLE spotbatch_checkpoints SET (fillfactor = 70);
