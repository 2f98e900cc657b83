//! The store's statements, with its schema's table names, and the values a
//! save binds.

use std::collections::HashMap;

use crate::{Checkpoint, RunRecord, SkippedChunk, Status};
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use uuid::Uuid;

use crate::postgres::options::quote_ident;

/// Table names inside the schema (also in `migrations/`).
pub(crate) const CHECKPOINTS: &str = "spotbatch_checkpoints";
pub(crate) const RUNS: &str = "spotbatch_runs";
pub(crate) const SKIPPED_CHUNKS: &str = "spotbatch_skipped_chunks";
/// The table of applied migrations, in the store's schema (not sqlx's
/// default `_sqlx_migrations`, so an application's own sqlx migrations in the
/// same schema never see ours).
pub(crate) const MIGRATIONS: &str = "_spotbatch_migrations";

/// The transaction-local setting that marks a [`SharedTransaction`](crate::postgres::SharedTransaction)'s
/// transaction; a save that does not find its token knows the job ended the
/// transaction itself.
pub(crate) const TX_MARK: &str = "spotbatch.tx";

/// `ms` (bigint, ms since the Unix epoch) as a timestamptz, exactly.
fn ts(ms: &str) -> String {
    format!("('epoch'::timestamptz + ({ms}) * interval '1 millisecond')")
}

/// timestamptz `col` as bigint ms since the Unix epoch.
fn ms(col: &str) -> String {
    format!("(extract(epoch from {col}) * 1000)::bigint")
}

/// Which run records a save writes to the runs table, and so which of its
/// statements it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// None (a run's progress, most saves): the table holds every record
    /// but the writer's chunk and skip counts, which are in the checkpoint row.
    NoRuns,
    /// One (a run's start or end, a renewal after progress): bound as plain values.
    OneRun,
    /// Several, bound as arrays.
    Runs,
}

/// The saves' statements: `[over a version, creating]` × [`Shape`] in
/// declaration order × `[without, with]` skipped chunks to record.
type Saves = [[[SqlStr; 2]; 3]; 2];

/// Every statement of one store, with its schema's names.
#[derive(Debug, Clone)]
pub(crate) struct Queries {
    pub(crate) checkpoints: String,
    pub(crate) load: SqlStr,
    save: Saves,
    pub(crate) found: SqlStr,
    pub(crate) list: SqlStr,
    pub(crate) delete: SqlStr,
}

impl Queries {
    pub(crate) fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let cp = format!("{s}.{CHECKPOINTS}");
        let runs = format!("{s}.{RUNS}");
        let skips = format!("{s}.{SKIPPED_CHUNKS}");
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();

        // $1..$23: the checkpoint; then the run records to write (none;
        // one, as $24..$33; or several, as arrays $24..$33) and the run the
        // write is a checkpoint of ($34: the writer, or NULL for a lease
        // renewal); then the transaction mark ('' outside a
        // SharedTransaction); last, when there are any, the skipped chunks
        // to record, as seven arrays.
        //
        // One statement, one round trip. Most saves are a run's progress:
        // they change no run record but the writer's chunk and skip counts,
        // which live in the checkpoint row until the run ends, and record no
        // skipped chunk, so their statement is the compare-and-swap alone.
        // The row is written from plain parameters, and the `status` index
        // leaves out `updated_at` (migrations/0003), so a save is a
        // heap-only (HOT) update that adds no index entries.
        //
        // A save that changes other records (a run's start or end, a killed
        // run found) also upserts them, and one whose checkpoint holds
        // skipped chunks not yet recorded inserts them, joined to the
        // compare-and-swap (`cas`), so it writes nothing when the
        // compare-and-swap did not.
        // A row's `last_saved_at` and `last_version` only ever come from a
        // checkpoint its own run wrote: this one, when the write is a
        // checkpoint of that run; else the row this write replaces (`old`,
        // read before the update), when that run wrote it and its chunk
        // count is not the row's yet. A later run thus adds what it learned
        // (`killed`) without making the killed run's last checkpoint its own.
        let mark =
            |n: usize| format!("coalesce(current_setting('{TX_MARK}', true), '') = ${n}::text");
        let columns = [
            ("key", "$1::text".to_owned()),
            ("version", "$3::bigint".to_owned()),
            ("status", "$4::text".to_owned()),
            ("status_detail", "$5::text".to_owned()),
            ("envelope", "$6::bytea".to_owned()),
            ("cursor_codec", "$7::text".to_owned()),
            ("cursor_type", "$8::text".to_owned()),
            ("job_schema", "$9::bigint".to_owned()),
            ("cursor_json", "$10::text::jsonb".to_owned()),
            ("chunks", "$11::bigint".to_owned()),
            ("items", "$12::bigint".to_owned()),
            ("checkpoints", "$13::bigint".to_owned()),
            ("interruptions", "$14::bigint".to_owned()),
            ("runs", "$15::bigint".to_owned()),
            ("created_at", ts("$16::bigint")),
            ("updated_at", ts("$17::bigint")),
            ("writer_host", "$18::text".to_owned()),
            ("writer_pid", "$19::bigint".to_owned()),
            ("writer_run_id", "$20::uuid".to_owned()),
            ("writer_task", "$21::text".to_owned()),
            ("lease_owner", "$22::uuid".to_owned()),
            ("lease_expires_at", ts("$23::bigint")),
        ];
        let list = |items: Vec<String>| items.join(", ");
        let names = list(columns.iter().map(|(c, _)| (*c).to_owned()).collect());
        let values = list(columns.iter().map(|(_, v)| v.clone()).collect());
        let set = list(
            columns
                .iter()
                .filter(|(c, _)| *c != "key")
                .map(|(c, v)| format!("{c} = {v}"))
                .collect(),
        );
        // The run columns a save may change.
        let run_cols = [
            "started_at",
            "ended_at",
            "outcome",
            "outcome_detail",
            "interruption_source",
            "chunks",
            "writer_host",
            "writer_task",
            "skipped",
        ];
        let prefixed =
            |alias: &str| list(run_cols.iter().map(|c| format!("{alias}.{c}")).collect());
        // $24..$33 as the run's id, start, end, outcome word, outcome, source,
        // chunks, host, task and chunks skipped, each cast to its type (or
        // array of it).
        let types = [
            "uuid", "bigint", "bigint", "text", "text", "text", "bigint", "text", "text", "bigint",
        ];
        let run_values = |suffix: &str| {
            list(
                types
                    .iter()
                    .zip(24..)
                    .map(|(t, n)| format!("${n}::{t}{suffix}"))
                    .collect(),
            )
        };
        let h = "h(run_id, started_ms, ended_ms, outcome, outcome_detail, source, chunks, host, \
                 task, skipped)";
        // The checkpoint a record's `last_*` columns may take: this write
        // (`cas`) for the run it is a checkpoint of, the replaced row (`old`)
        // for the run that wrote it, else none.
        let last = |col: &str| {
            format!(
                "CASE WHEN h.run_id = $34::uuid THEN cas.{col} \
                 WHEN h.run_id = old.writer_run_id THEN old.{col} END"
            )
        };
        // Whether an existing row takes the record's checkpoint: one it
        // lacks, one of a chunk count the row has not, or this write's when
        // the record changed.
        let changed = format!(
            "({}) IS DISTINCT FROM ({})",
            prefixed("r"),
            prefixed("excluded")
        );
        let takes = format!(
            "excluded.last_version IS NOT NULL AND (r.last_version IS NULL \
             OR r.chunks <> excluded.chunks OR (excluded.run_id = $34::uuid AND {changed}))"
        );
        let runs_upsert = |source: String| {
            format!(
                "old AS (
    SELECT writer_run_id, version, updated_at FROM {cp}
    WHERE key = $1::text AND version = $2::bigint
),
runs AS (
    INSERT INTO {runs} AS r (run_id, job_key, {run_cols}, last_saved_at, last_version)
    SELECT h.run_id, cas.key, {started}, {ended}, h.outcome, h.outcome_detail, h.source,
           h.chunks, h.host, h.task, h.skipped, {last_saved}, {last_version}
    FROM cas LEFT JOIN old ON true CROSS JOIN {source}
    ON CONFLICT (run_id) DO UPDATE SET
        started_at = excluded.started_at, ended_at = excluded.ended_at,
        outcome = excluded.outcome, outcome_detail = excluded.outcome_detail,
        interruption_source = excluded.interruption_source, chunks = excluded.chunks,
        writer_host = excluded.writer_host, writer_task = excluded.writer_task,
        skipped = excluded.skipped,
        last_saved_at = CASE WHEN {takes} THEN excluded.last_saved_at ELSE r.last_saved_at END,
        last_version = CASE WHEN {takes} THEN excluded.last_version ELSE r.last_version END
    WHERE r.job_key = excluded.job_key AND ({changed} OR ({takes}))
)",
                run_cols = run_cols.join(", "),
                started = ts("h.started_ms"),
                ended = ts("h.ended_ms"),
                last_saved = last("updated_at"),
                last_version = last("version"),
            )
        };
        // A skipped chunk is inserted by the first save whose checkpoint
        // holds it, and never changed after: a redrive that does it takes
        // it out of the checkpoint, not out of the table.
        let skips_insert = |first: usize| {
            let arrays = list(
                [
                    "uuid", "text", "text", "bigint", "integer", "text", "bigint",
                ]
                .iter()
                .zip(first..)
                .map(|(t, n)| format!("${n}::{t}[]"))
                .collect(),
            );
            format!(
                "skips AS (
    INSERT INTO {skips} (run_id, job_key, start_cursor, next_cursor, items, attempts, error,
                         skipped_at)
    SELECT s.run_id, cas.key, s.start_cursor, s.next_cursor, s.items, s.attempts, s.error,
           {skipped_at}
    FROM cas CROSS JOIN unnest({arrays})
        AS s(run_id, start_cursor, next_cursor, items, attempts, error, skipped_ms)
    ON CONFLICT DO NOTHING
)",
                skipped_at = ts("s.skipped_ms"),
            )
        };
        // Per shape: the runs upsert, and the number of the mark's parameter.
        let shapes = [
            (None, 24),
            (
                Some(runs_upsert(format!("(SELECT {}) AS {h}", run_values("")))),
                35,
            ),
            (
                Some(runs_upsert(format!("unnest({}) AS {h}", run_values("[]")))),
                35,
            ),
        ];
        // `cas` is `{verb} … RETURNING …` when another statement joins it.
        let save = |verb: &str| {
            shapes.clone().map(|(runs, n)| {
                let cas = verb.replace("{mark}", &mark(n));
                [None, Some(skips_insert(n + 1))].map(|skips| {
                    let joined: Vec<String> = runs.iter().chain(&skips).cloned().collect();
                    sql(if joined.is_empty() {
                        cas.clone()
                    } else {
                        format!(
                            "WITH cas AS (\n{cas}\n    RETURNING key, version, updated_at\n), {}\nSELECT 1 FROM cas",
                            joined.join(", ")
                        )
                    })
                })
            })
        };
        let save_update = save(&format!(
            "UPDATE {cp} SET {set}
    WHERE key = $1::text AND version = $2::bigint AND {{mark}}"
        ));
        let save_create = save(&format!(
            "INSERT INTO {cp} ({names})
    SELECT {values} WHERE $2::bigint IS NULL AND {{mark}}
    ON CONFLICT (key) DO NOTHING"
        ));
        Self {
            load: sql(format!("SELECT envelope, version FROM {cp} WHERE key = $1")),
            found: sql(format!("SELECT version, envelope FROM {cp} WHERE key = $1")),
            list: sql(format!(
                "SELECT key, version, status, status_detail, {updated} AS updated_ms, chunks \
                 FROM {cp} ORDER BY key COLLATE \"C\"",
                updated = ms("updated_at")
            )),
            delete: sql(format!("DELETE FROM {cp} WHERE key = $1 AND version = $2")),
            save: [save_update, save_create],
            checkpoints: cp,
        }
    }
}

/// A `u64` for a bigint mirror column (the envelope keeps the exact value).
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The values one save binds.
#[derive(Debug)]
pub(crate) struct SaveArgs {
    pub(crate) key: String,
    pub(crate) expected: Option<i64>,
    pub(crate) version: i64,
    status: &'static str,
    detail: String,
    pub(crate) envelope: Vec<u8>,
    codec: &'static str,
    cursor_type: String,
    job_schema: i64,
    cursor_json: Option<String>,
    counters: [i64; 5],
    created_ms: i64,
    updated_ms: i64,
    host: String,
    pid: i64,
    run_id: Uuid,
    task: Option<String>,
    lease_owner: Option<Uuid>,
    lease_ms: Option<i64>,
    history: History,
    /// The skipped chunks this save records (none, mostly).
    skips: Skips,
    /// What the tables hold once this save commits.
    pub(crate) written: Written,
    /// The run this write is a checkpoint of: the writer, unless it is a
    /// lease renewal.
    checkpoint_of: Option<Uuid>,
    mark: String,
}

/// What the runs and skipped-chunks tables hold of one job, as a store
/// knows from its own committed saves: what a save need not write again.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// The history's records, one per run id (the last wins).
    runs: Vec<RunRecord>,
    /// The skipped chunks recorded, by run and time of the skip: their
    /// start cursors, encoded. Only grows: a chunk a redrive did is still
    /// in the table.
    skips: HashMap<(Uuid, u64), Vec<Vec<u8>>>,
}

impl Written {
    fn holds(&self, skip: &SkippedChunk) -> bool {
        self.skips
            .get(&(skip.run_id, skip.skipped_ms))
            .is_some_and(|starts| starts.contains(&skip.start))
    }
}

/// Skipped chunks to insert, as the arrays a save binds.
#[derive(Debug, Default)]
struct Skips {
    run_id: Vec<Uuid>,
    start: Vec<String>,
    next: Vec<String>,
    items: Vec<i64>,
    attempts: Vec<i32>,
    error: Vec<String>,
    skipped_ms: Vec<i64>,
}

#[derive(Debug, Default)]
struct History {
    run_id: Vec<Uuid>,
    started_ms: Vec<i64>,
    ended_ms: Vec<Option<i64>>,
    outcome: Vec<String>,
    detail: Vec<String>,
    source: Vec<Option<String>>,
    chunks: Vec<i64>,
    host: Vec<String>,
    task: Vec<Option<String>>,
    skipped: Vec<i64>,
}

/// `running`, `completed`, `interrupted` or `failed` from a run's recorded
/// outcome (`interrupted (SIGTERM)`, `failed: …`), and the interruption source.
fn outcome_parts(outcome: &str) -> (String, Option<String>) {
    let word = outcome
        .split([' ', ':', '('])
        .next()
        .unwrap_or_default()
        .to_owned();
    let source = outcome
        .strip_prefix("interrupted (")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(str::to_owned);
    (word, source)
}

/// `s` as a `text` value takes it: Postgres refuses a NUL in text (error
/// 22021), which a job's error may quote from the record it read. Each
/// NUL becomes U+FFFD.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The cursor as JSON text for the `cursor_json` column, when the codec is
/// JSON and Postgres's jsonb accepts it (jsonb refuses `\u0000`).
fn cursor_json(checkpoint: &Checkpoint) -> Option<String> {
    if !checkpoint.codec.is_self_describing() {
        return None;
    }
    let text = std::str::from_utf8(&checkpoint.cursor).ok()?;
    if text.contains("\\u0000") {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    Some(text.to_owned())
}

/// What a save is to the run that writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A checkpoint of the writer's run (`CheckpointStore::save`).
    Checkpoint,
    /// A lease renewal (`CheckpointStore::renew`): the last checkpoint's
    /// cursor written again, which the run's history row does not take as a
    /// checkpoint of its own.
    Renewal,
}

/// Whether `a` and `b` are the same run's record apart from its progress:
/// the chunks it finished and skipped.
fn same_but_progress(a: &RunRecord, b: &RunRecord) -> bool {
    a.run_id == b.run_id
        && RunRecord {
            chunks: b.chunks,
            skipped: b.skipped,
            ..a.clone()
        } == *b
}

impl SaveArgs {
    /// The values to save `checkpoint` over version `expected`. Left out of
    /// the runs upsert: records equal to one in `written` (the runs table
    /// holds them already), and the writer's own record when only its chunk
    /// and skip counts changed since (a checkpoint of progress: the checkpoint row
    /// holds it until the run ends, or a renewal or the next run records it).
    /// Of the skipped chunks, those `written` holds are left out too: a save
    /// records the chunks skipped since the last one (every chunk of the
    /// checkpoint the first time: the table keeps the first record of each).
    ///
    /// Fails only for versions beyond `i64::MAX`, which the `version` column
    /// cannot hold.
    pub(crate) fn new(
        checkpoint: &Checkpoint,
        expected: Option<u64>,
        mark: &str,
        write: Write,
        mut written: Written,
    ) -> Result<Self, String> {
        let version_of = |v: u64| {
            i64::try_from(v).map_err(|_| format!("version {v} does not fit the bigint column"))
        };
        let (status, detail) = match &checkpoint.status {
            Status::Interrupted { source } => ("interrupted", pg_text(source)),
            Status::Failed { message } => ("failed", pg_text(message)),
            other => (other.name(), String::new()),
        };
        let c = &checkpoint.counters;
        let writer = checkpoint.writer.run_id;
        let mut history = History::default();
        // A run id appears once: the last record wins (an upsert cannot touch a row twice).
        let mut seen = std::collections::HashSet::new();
        let mut runs: Vec<RunRecord> = checkpoint
            .history
            .iter()
            .rev()
            .filter(|r| seen.insert(r.run_id))
            .cloned()
            .collect();
        runs.reverse();
        for run in &mut runs {
            if written.runs.contains(run) {
                continue;
            }
            if write == Write::Checkpoint && run.run_id == writer {
                if let Some(held) = written.runs.iter().find(|w| same_but_progress(w, run)) {
                    // Progress: the table keeps holding the record it has.
                    *run = held.clone();
                    continue;
                }
            }
            let outcome = pg_text(&run.outcome);
            let (word, source) = outcome_parts(&outcome);
            history.run_id.push(run.run_id);
            history.started_ms.push(clamp(run.started_ms));
            history
                .ended_ms
                .push((run.ended_ms != 0).then(|| clamp(run.ended_ms)));
            history.outcome.push(word);
            history.detail.push(outcome);
            history.source.push(source);
            history.chunks.push(clamp(run.chunks));
            history.host.push(run.host.clone());
            history.task.push(non_empty(&run.task));
            history.skipped.push(clamp(run.skipped));
        }
        written.runs = runs;
        let mut skips = Skips::default();
        for skip in &checkpoint.skipped {
            if written.holds(skip) {
                continue;
            }
            skips.run_id.push(skip.run_id);
            skips.start.push(pg_text(&skip.start_text));
            skips.next.push(pg_text(&skip.next_text));
            skips.items.push(clamp(skip.items));
            skips
                .attempts
                .push(i32::try_from(skip.attempts).unwrap_or(i32::MAX));
            skips.error.push(pg_text(&skip.error));
            skips.skipped_ms.push(clamp(skip.skipped_ms));
            written
                .skips
                .entry((skip.run_id, skip.skipped_ms))
                .or_default()
                .push(skip.start.clone());
        }
        Ok(Self {
            key: checkpoint.job.to_string(),
            expected: expected.map(version_of).transpose()?,
            version: version_of(checkpoint.version)?,
            status,
            detail,
            envelope: checkpoint.encode(),
            codec: checkpoint.codec.name(),
            cursor_type: checkpoint.cursor_type.clone(),
            job_schema: i64::from(checkpoint.schema),
            cursor_json: cursor_json(checkpoint),
            counters: [c.chunks, c.items, c.checkpoints, c.interruptions, c.runs].map(clamp),
            created_ms: clamp(checkpoint.created_ms),
            updated_ms: clamp(checkpoint.updated_ms),
            host: checkpoint.writer.host.clone(),
            pid: i64::from(checkpoint.writer.pid),
            run_id: checkpoint.writer.run_id,
            task: non_empty(&checkpoint.writer.task),
            lease_owner: checkpoint.lease.map(|l| l.owner),
            lease_ms: checkpoint.lease.map(|l| clamp(l.expires_ms)),
            history,
            skips,
            written,
            checkpoint_of: (write == Write::Checkpoint).then_some(writer),
            mark: mark.to_owned(),
        })
    }

    fn shape(&self) -> Shape {
        match self.history.run_id.len() {
            0 => Shape::NoRuns,
            1 => Shape::OneRun,
            _ => Shape::Runs,
        }
    }

    /// The statement for this save, with every value bound. It changes one
    /// checkpoint row (`rows_affected` 1) when the compare-and-swap wins and
    /// none when it loses, or when the transaction mark does not match (the
    /// job ended its [`SharedTransaction`](crate::postgres::SharedTransaction)'s
    /// transaction itself).
    pub(crate) fn query<'a>(
        &'a self,
        queries: &Queries,
    ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let shape = self.shape();
        let skips = !self.skips.run_id.is_empty();
        let sql = queries.save[usize::from(self.expected.is_none())][shape as usize]
            [usize::from(skips)]
        .clone();
        let [chunks, items, checkpoints, interruptions, runs] = self.counters;
        let query = sqlx::query(sql)
            .bind(&self.key)
            .bind(self.expected)
            .bind(self.version)
            .bind(self.status)
            .bind(&self.detail)
            .bind(&self.envelope)
            .bind(self.codec)
            .bind(&self.cursor_type)
            .bind(self.job_schema)
            .bind(&self.cursor_json)
            .bind(chunks)
            .bind(items)
            .bind(checkpoints)
            .bind(interruptions)
            .bind(runs)
            .bind(self.created_ms)
            .bind(self.updated_ms)
            .bind(&self.host)
            .bind(self.pid)
            .bind(self.run_id)
            .bind(&self.task)
            .bind(self.lease_owner)
            .bind(self.lease_ms);
        let h = &self.history;
        let query = match shape {
            Shape::NoRuns => query,
            Shape::OneRun => query
                .bind(h.run_id[0])
                .bind(h.started_ms[0])
                .bind(h.ended_ms[0])
                .bind(&h.outcome[0])
                .bind(&h.detail[0])
                .bind(&h.source[0])
                .bind(h.chunks[0])
                .bind(&h.host[0])
                .bind(&h.task[0])
                .bind(h.skipped[0])
                .bind(self.checkpoint_of),
            Shape::Runs => query
                .bind(&h.run_id)
                .bind(&h.started_ms)
                .bind(&h.ended_ms)
                .bind(&h.outcome)
                .bind(&h.detail)
                .bind(&h.source)
                .bind(&h.chunks)
                .bind(&h.host)
                .bind(&h.task)
                .bind(&h.skipped)
                .bind(self.checkpoint_of),
        };
        let query = query.bind(&self.mark);
        if !skips {
            return query;
        }
        let s = &self.skips;
        query
            .bind(&s.run_id)
            .bind(&s.start)
            .bind(&s.next)
            .bind(&s.items)
            .bind(&s.attempts)
            .bind(&s.error)
            .bind(&s.skipped_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `$n` a statement uses.
    fn last_parameter(sql: &str) -> usize {
        (1..=50)
            .rev()
            .find(|n| sql.contains(&format!("${n}::")))
            .unwrap_or(0)
    }

    #[test]
    fn each_shape_takes_the_parameters_its_binds_give() {
        let queries = Queries::new("public");
        for (kind, statements) in ["update", "create"].iter().zip(&queries.save) {
            let [none, one, many] = statements
                .each_ref()
                .map(|s| s.each_ref().map(SqlStr::as_str));
            for [plain, skips] in [none, one, many] {
                assert!(!plain.contains(SKIPPED_CHUNKS), "{kind}: {plain}");
                assert_eq!(
                    last_parameter(skips),
                    last_parameter(plain) + 7,
                    "{kind}: {skips}"
                );
                assert!(
                    skips.contains(&format!("unnest(${}::uuid[], ", last_parameter(plain) + 1)),
                    "{kind}: {skips}"
                );
            }
            let [none, one, many] = [none[0], one[0], many[0]];
            assert_eq!(last_parameter(none), 24, "{kind}: {none}");
            assert!(!none.contains("spotbatch_runs"), "{kind}: {none}");
            assert!(!none.contains("RETURNING"), "{kind}: {none}");
            assert_eq!(last_parameter(one), 35, "{kind}: {one}");
            assert!(
                one.contains("$24::uuid,") && !one.contains("[]"),
                "{kind}: {one}"
            );
            assert_eq!(last_parameter(many), 35, "{kind}: {many}");
            assert!(many.contains("unnest($24::uuid[],"), "{kind}: {many}");
        }
    }

    #[test]
    fn outcomes_split_into_word_and_source() {
        assert_eq!(
            outcome_parts("interrupted (SIGTERM)"),
            ("interrupted".into(), Some("SIGTERM".into()))
        );
        assert_eq!(outcome_parts("failed: boom (x)"), ("failed".into(), None));
        assert_eq!(outcome_parts("running"), ("running".into(), None));
        assert_eq!(outcome_parts("completed"), ("completed".into(), None));
    }
}
