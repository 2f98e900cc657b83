//! The store's statements, with its schema's table names, and the values a
//! save binds.

use crate::{Checkpoint, RunRecord, Status};
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use uuid::Uuid;

use crate::postgres::options::quote_ident;

/// Table names inside the schema (also in `migrations/`).
pub(crate) const CHECKPOINTS: &str = "spotbatch_checkpoints";
pub(crate) const RUNS: &str = "spotbatch_runs";
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

/// Every statement of one store, with its schema's names.
#[derive(Debug, Clone)]
pub(crate) struct Queries {
    pub(crate) checkpoints: String,
    pub(crate) load: SqlStr,
    pub(crate) save_update: SqlStr,
    pub(crate) save_create: SqlStr,
    pub(crate) found: SqlStr,
    pub(crate) list: SqlStr,
    pub(crate) delete: SqlStr,
}

impl Queries {
    pub(crate) fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let cp = format!("{s}.{CHECKPOINTS}");
        let runs = format!("{s}.{RUNS}");
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();

        // $1..$23: the checkpoint; $24..$32: its run history; $33: the
        // transaction mark ('' outside a SharedTransaction).
        let values = format!(
            "v AS (
    SELECT $1::text AS key, $2::bigint AS expected, $3::bigint AS version,
           $4::text AS status, $5::text AS status_detail, $6::bytea AS envelope,
           $7::text AS cursor_codec, $8::text AS cursor_type, $9::bigint AS job_schema,
           $10::text::jsonb AS cursor_json,
           $11::bigint AS chunks, $12::bigint AS items, $13::bigint AS checkpoints,
           $14::bigint AS interruptions, $15::bigint AS runs,
           {created} AS created_at, {updated} AS updated_at,
           $18::text AS writer_host, $19::bigint AS writer_pid, $20::uuid AS writer_run_id,
           $21::text AS writer_task, $22::uuid AS lease_owner, {lease} AS lease_expires_at
    WHERE coalesce(current_setting('{TX_MARK}', true), '') = $33::text
)",
            created = ts("$16::bigint"),
            updated = ts("$17::bigint"),
            lease = ts("$23::bigint"),
        );
        let columns = "key, version, status, status_detail, envelope, cursor_codec, cursor_type, \
             job_schema, cursor_json, chunks, items, checkpoints, interruptions, runs, created_at, \
             updated_at, writer_host, writer_pid, writer_run_id, writer_task, lease_owner, lease_expires_at";
        let set = columns
            .split(", ")
            .filter(|c| *c != "key")
            .map(|c| format!("{c} = v.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let history = format!(
            "h AS (
    SELECT * FROM unnest($24::uuid[], $25::bigint[], $26::bigint[], $27::text[], $28::text[],
                         $29::text[], $30::bigint[], $31::text[], $32::text[])
        AS h(run_id, started_ms, ended_ms, outcome, outcome_detail, source, chunks, host, task)
), hist AS (
    INSERT INTO {runs} AS r (run_id, job_key, started_at, ended_at, outcome, outcome_detail,
                             interruption_source, chunks, writer_host, writer_task,
                             last_saved_at, last_version)
    SELECT h.run_id, v.key, {started}, {ended}, h.outcome, h.outcome_detail, h.source, h.chunks,
           h.host, h.task, v.updated_at, v.version
    FROM h CROSS JOIN v
    WHERE EXISTS (SELECT 1 FROM cas)
    ON CONFLICT (run_id) DO UPDATE SET
        started_at = excluded.started_at, ended_at = excluded.ended_at,
        outcome = excluded.outcome, outcome_detail = excluded.outcome_detail,
        interruption_source = excluded.interruption_source, chunks = excluded.chunks,
        writer_host = excluded.writer_host, writer_task = excluded.writer_task,
        last_saved_at = excluded.last_saved_at, last_version = excluded.last_version
    WHERE r.job_key = excluded.job_key
      AND (r.started_at, r.ended_at, r.outcome, r.outcome_detail, r.interruption_source,
           r.chunks, r.writer_host, r.writer_task)
          IS DISTINCT FROM
          (excluded.started_at, excluded.ended_at, excluded.outcome, excluded.outcome_detail,
           excluded.interruption_source, excluded.chunks, excluded.writer_host, excluded.writer_task)
    RETURNING 1
)
SELECT (SELECT count(*) FROM cas) AS saved, (SELECT count(*) FROM v) AS marked",
            started = ts("h.started_ms"),
            ended = ts("h.ended_ms"),
        );
        let save_update = format!(
            "WITH {values}, cas AS (
    UPDATE {cp} AS c SET {set}
    FROM v WHERE c.key = v.key AND c.version = v.expected
    RETURNING c.key
), {history}"
        );
        let save_create = format!(
            "WITH {values}, cas AS (
    INSERT INTO {cp} ({columns})
    SELECT {columns} FROM v WHERE v.expected IS NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), {history}"
        );
        Self {
            load: sql(format!("SELECT envelope, version FROM {cp} WHERE key = $1")),
            found: sql(format!("SELECT version, envelope FROM {cp} WHERE key = $1")),
            list: sql(format!(
                "SELECT key, version, status, status_detail, {updated} AS updated_ms, chunks \
                 FROM {cp} ORDER BY key COLLATE \"C\"",
                updated = ms("updated_at")
            )),
            delete: sql(format!("DELETE FROM {cp} WHERE key = $1 AND version = $2")),
            save_update: sql(save_update),
            save_create: sql(save_create),
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
    mark: String,
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

impl SaveArgs {
    /// The values to save `checkpoint` over version `expected`.
    ///
    /// Fails only for versions beyond `i64::MAX`, which the `version` column
    /// cannot hold.
    pub(crate) fn new(
        checkpoint: &Checkpoint,
        expected: Option<u64>,
        mark: &str,
    ) -> Result<Self, String> {
        let version_of = |v: u64| {
            i64::try_from(v).map_err(|_| format!("version {v} does not fit the bigint column"))
        };
        let (status, detail) = match &checkpoint.status {
            Status::Interrupted { source } => ("interrupted", source.clone()),
            Status::Failed { message } => ("failed", message.clone()),
            other => (other.name(), String::new()),
        };
        let c = &checkpoint.counters;
        let mut history = History::default();
        // A run id appears once: the last record wins (an upsert cannot touch a row twice).
        let mut seen = std::collections::HashSet::new();
        let records: Vec<&RunRecord> = checkpoint
            .history
            .iter()
            .rev()
            .filter(|r| seen.insert(r.run_id))
            .collect();
        for run in records.into_iter().rev() {
            let (word, source) = outcome_parts(&run.outcome);
            history.run_id.push(run.run_id);
            history.started_ms.push(clamp(run.started_ms));
            history
                .ended_ms
                .push((run.ended_ms != 0).then(|| clamp(run.ended_ms)));
            history.outcome.push(word);
            history.detail.push(run.outcome.clone());
            history.source.push(source);
            history.chunks.push(clamp(run.chunks));
            history.host.push(run.host.clone());
            history.task.push(non_empty(&run.task));
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
            mark: mark.to_owned(),
        })
    }

    /// The statement for this save, with every value bound.
    pub(crate) fn query<'a>(
        &'a self,
        queries: &Queries,
    ) -> sqlx::query::QueryAs<'a, sqlx::Postgres, (i64, i64), sqlx::postgres::PgArguments> {
        let sql = if self.expected.is_some() {
            queries.save_update.clone()
        } else {
            queries.save_create.clone()
        };
        let h = &self.history;
        let [chunks, items, checkpoints, interruptions, runs] = self.counters;
        sqlx::query_as(sql)
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
            .bind(self.lease_ms)
            .bind(&h.run_id)
            .bind(&h.started_ms)
            .bind(&h.ended_ms)
            .bind(&h.outcome)
            .bind(&h.detail)
            .bind(&h.source)
            .bind(&h.chunks)
            .bind(&h.host)
            .bind(&h.task)
            .bind(&self.mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
