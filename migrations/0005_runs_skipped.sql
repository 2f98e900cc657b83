-- spotbatch: how many chunks each run skipped (Runner::skip). The skipped
-- chunks themselves (cursors, error, attempts) live in the checkpoint
-- (`spotbatch skipped`) until a redrive does them.

ALTER TABLE spotbatch_runs ADD COLUMN skipped bigint NOT NULL DEFAULT 0;
