//! Keyset scans of a Postgres table or query (feature `postgres`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, Column, Executor, PgPool, Postgres, Row, SqlSafeStr, Statement, TypeInfo,
};
use time::{Date, OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use super::{Batch, Limit, Source, SourceError};
use crate::error::BoxError;

/// The rows of a table or a query, in the order of a key of one or more
/// columns, read by keyset pagination: each batch is
///
/// ```sql
/// SELECT * FROM (<query>) AS spotbatch_scan
///  WHERE (k1, k2) > ($1, $2) ORDER BY k1, k2 LIMIT n
/// ```
///
/// with the key of the last row of the batch before as the cursor (never
/// `OFFSET`, which skips or repeats rows when rows are inserted or deleted
/// behind it, and reads every skipped row again). An index on the key
/// columns, in that order, makes each batch one index range scan.
///
/// # The key
///
/// - **Unique**: no two rows may share a key, or the rows sharing the key at
///   a batch's end would be skipped. A scan checks it on every row it reads
///   (each batch fetches one row more than it returns, to see the next key)
///   and fails, naming the key, on two rows with the same key.
/// - **Not NULL**: a row whose key is NULL is never greater than anything,
///   so it would never be read. A key column that the catalog says can be
///   NULL (a table's column without `NOT NULL`, or a query's output column
///   taken from one) is refused when the scan is built; a computed column
///   is checked on every row read.
/// - **Of a supported type**: `smallint`, `integer`, `bigint`, `text`,
///   `varchar`, `char(n)`, `uuid`, `date`, `timestamp`, `timestamptz`
///   ([`KeyValue`]). Others are refused when the scan is built.
///
/// # Rows that change during the scan
///
/// A row inserted or updated with a key after the cursor is read when the
/// scan gets there; one whose key is before the cursor is not (it is read
/// by the next scan); deleted rows are not read. No row is read twice by
/// one scan, whatever changes, and no row that stays in place is skipped.
/// Each batch is its own statement: the scan is not a snapshot.
///
/// ```no_run
/// use spotbatch::source::{KeysetScan, Limit, Source};
/// use sqlx::Row;
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), spotbatch::BoxError> {
/// let mut orders = KeysetScan::table(&pool, "sales.orders", &["region", "id"]).await?;
/// let batch = orders.next_batch(&Vec::new(), Limit::records(500)).await?.ok_or("empty")?;
/// for row in batch.records() {
///     let total: i64 = row.try_get("total_cents")?;
/// }
/// // batch.next() is the last row's (region, id): where the next batch starts.
/// # Ok(()) }
/// ```
pub struct KeysetScan {
    pool: PgPool,
    /// The table or the query, for messages.
    relation: String,
    keys: Vec<KeyColumn>,
    /// The first batch: no lower bound.
    first: String,
    /// The following batches: from after the cursor's key.
    after: String,
}

impl std::fmt::Debug for KeysetScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysetScan")
            .field("relation", &self.relation)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct KeyColumn {
    name: String,
    kind: KeyKind,
    /// The column's type as Postgres names it, for the parameter's cast.
    sql_type: String,
    /// Not NULL by the catalog: no need to check each row.
    not_null: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Int2,
    Int4,
    Int8,
    Text,
    Uuid,
    Date,
    Timestamp,
    TimestampTz,
}

/// One value of a [`KeysetScan`]'s key, as saved in the cursor.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyValue {
    /// `smallint`, `integer` or `bigint`.
    Int(i64),
    /// `text`, `varchar` or `char(n)`.
    Text(String),
    /// `uuid`.
    Uuid(Uuid),
    /// `date`.
    Date(Date),
    /// `timestamp` (without time zone).
    Timestamp(PrimitiveDateTime),
    /// `timestamptz`.
    TimestampTz(OffsetDateTime),
}

impl KeysetScan {
    /// A scan of the table `table` (a name as in SQL: `orders`,
    /// `sales.orders`, `"Mixed Case"`, found through the `search_path`) in
    /// the order of the columns `key`.
    ///
    /// # Errors
    ///
    /// [`SourceError::Scan`] when there is no such table or key column, a
    /// key column can be NULL or has a type not supported, or no key is
    /// given; [`SourceError::Database`] when the database fails.
    pub async fn table(pool: &PgPool, table: &str, key: &[&str]) -> Result<Self, SourceError> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(|source| SourceError::Database {
                relation: table.to_owned(),
                source,
            })?;
        let Some(name) = found else {
            return Err(SourceError::Scan {
                relation: table.to_owned(),
                reason: "no such table or view (in the search_path)".into(),
            });
        };
        Self::build(pool, name.clone(), format!("SELECT * FROM {name}"), key).await
    }

    /// A scan of the rows of `query` (a `SELECT`; no parameters, no
    /// `ORDER BY` or `LIMIT` of its own) in the order of its output columns
    /// `key`.
    ///
    /// # Errors
    ///
    /// As [`table`](Self::table); [`SourceError::Database`] also when the
    /// query is not valid SQL.
    pub async fn query(pool: &PgPool, query: &str, key: &[&str]) -> Result<Self, SourceError> {
        let relation = format!(
            "query `{}`",
            query.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        Self::build(pool, relation, query.to_owned(), key).await
    }

    async fn build(
        pool: &PgPool,
        relation: String,
        inner: String,
        key: &[&str],
    ) -> Result<Self, SourceError> {
        let scan_error = |reason: String| SourceError::Scan {
            relation: relation.clone(),
            reason,
        };
        let db_error = |source| SourceError::Database {
            relation: relation.clone(),
            source,
        };
        if key.is_empty() {
            return Err(scan_error("a scan needs at least one key column".into()));
        }
        let outer = format!("SELECT * FROM ({inner}) AS spotbatch_scan");
        let mut conn = pool.acquire().await.map_err(db_error)?;
        let statement = (&mut *conn)
            .prepare(AssertSqlSafe(format!("{outer} LIMIT 0")).into_sql_str())
            .await
            .map_err(db_error)?;
        let mut keys = Vec::with_capacity(key.len());
        for name in key {
            let Some(column) = statement.columns().iter().find(|c| c.name() == *name) else {
                let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
                return Err(scan_error(format!(
                    "no column {name:?} for the key (the columns are {})",
                    names.join(", ")
                )));
            };
            let type_name = column.type_info().name().to_owned();
            let Some(kind) = KeyKind::of(&type_name) else {
                return Err(scan_error(format!(
                    "key column {name:?} is of type {type_name}; a key may be smallint, integer, \
                     bigint, text, varchar, char, uuid, date, timestamp or timestamptz"
                )));
            };
            let not_null = match (column.relation_id(), column.relation_attribute_no()) {
                (Some(table), Some(attnum)) => {
                    let not_null: bool = sqlx::query_scalar(
                        "SELECT attnotnull FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                    )
                    .bind(table)
                    .bind(attnum)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    if !not_null {
                        return Err(scan_error(format!(
                            "key column {name:?} can be NULL, and rows with a NULL key would never \
                             be read (NULL is not greater than any key): declare it NOT NULL, or \
                             scan a query that leaves those rows out or replaces their NULLs \
                             (coalesce)"
                        )));
                    }
                    true
                }
                _ => false,
            };
            keys.push(KeyColumn {
                name: (*name).to_owned(),
                kind,
                // `char` alone would be char(1): the parameter's type is `bpchar`.
                sql_type: match type_name.as_str() {
                    "CHAR" => "bpchar".to_owned(),
                    other => other.to_lowercase(),
                },
                not_null,
            });
        }
        let order = keys
            .iter()
            .map(|k| quote(&k.name))
            .collect::<Vec<_>>()
            .join(", ");
        let params = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::{}", i + 1, k.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        let n = keys.len();
        Ok(Self {
            pool: pool.clone(),
            first: format!("{outer} ORDER BY {order} LIMIT $1"),
            after: format!(
                "{outer} WHERE ({order}) > ({params}) ORDER BY {order} LIMIT ${}",
                n + 1
            ),
            relation,
            keys,
        })
    }

    /// The table or query scanned, as messages name it.
    pub fn relation(&self) -> &str {
        &self.relation
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::Scan {
            relation: self.relation.clone(),
            reason,
        }
    }

    /// The key of `row`.
    fn key_of(&self, row: &PgRow) -> Result<Vec<KeyValue>, SourceError> {
        let mut values = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let value = k.decode(row).map_err(|source| SourceError::Database {
                relation: self.relation.clone(),
                source,
            })?;
            match value {
                Some(v) => values.push(v),
                None => {
                    return Err(self.error(format!(
                    "a row's key column {:?} is NULL{}: such rows are never read in key order; \
                         leave them out of the query or replace their NULLs (coalesce)",
                    k.name,
                    if k.not_null {
                        " although the catalog says NOT NULL (an outer join?)"
                    } else {
                        ""
                    }
                )))
                }
            }
        }
        Ok(values)
    }
}

impl KeyKind {
    fn of(type_name: &str) -> Option<Self> {
        Some(match type_name {
            "INT2" => Self::Int2,
            "INT4" => Self::Int4,
            "INT8" => Self::Int8,
            "TEXT" | "VARCHAR" | "CHAR" | "BPCHAR" => Self::Text,
            "UUID" => Self::Uuid,
            "DATE" => Self::Date,
            "TIMESTAMP" => Self::Timestamp,
            "TIMESTAMPTZ" => Self::TimestampTz,
            _ => return None,
        })
    }
}

impl KeyColumn {
    fn decode(&self, row: &PgRow) -> Result<Option<KeyValue>, sqlx::Error> {
        let name = self.name.as_str();
        Ok(match self.kind {
            KeyKind::Int2 => row
                .try_get::<Option<i16>, _>(name)?
                .map(|v| KeyValue::Int(v.into())),
            KeyKind::Int4 => row
                .try_get::<Option<i32>, _>(name)?
                .map(|v| KeyValue::Int(v.into())),
            KeyKind::Int8 => row.try_get::<Option<i64>, _>(name)?.map(KeyValue::Int),
            KeyKind::Text => row.try_get::<Option<String>, _>(name)?.map(KeyValue::Text),
            KeyKind::Uuid => row.try_get::<Option<Uuid>, _>(name)?.map(KeyValue::Uuid),
            KeyKind::Date => row.try_get::<Option<Date>, _>(name)?.map(KeyValue::Date),
            KeyKind::Timestamp => row
                .try_get::<Option<PrimitiveDateTime>, _>(name)?
                .map(KeyValue::Timestamp),
            KeyKind::TimestampTz => row
                .try_get::<Option<OffsetDateTime>, _>(name)?
                .map(KeyValue::TimestampTz),
        })
    }
}

fn bind<'q>(
    query: Query<'q, Postgres, PgArguments>,
    value: &KeyValue,
) -> Query<'q, Postgres, PgArguments> {
    match value {
        KeyValue::Int(v) => query.bind(*v),
        KeyValue::Text(v) => query.bind(v.clone()),
        KeyValue::Uuid(v) => query.bind(*v),
        KeyValue::Date(v) => query.bind(*v),
        KeyValue::Timestamp(v) => query.bind(*v),
        KeyValue::TimestampTz(v) => query.bind(*v),
    }
}

/// `name` as a quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl Source for KeysetScan {
    /// The key of the last row read (its columns in key order); empty before
    /// the first.
    type Cursor = Vec<KeyValue>;
    type Record = PgRow;

    async fn next_batch(
        &mut self,
        from: &Vec<KeyValue>,
        limit: Limit,
    ) -> Result<Option<Batch<Self>>, BoxError> {
        let n = limit.max_records_or_default();
        // One row more, to see whether the last row's key repeats after it.
        let fetch = i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX);
        let mut rows = if from.is_empty() {
            sqlx::query(AssertSqlSafe(self.first.as_str()))
                .bind(fetch)
                .fetch_all(&self.pool)
                .await
        } else {
            if from.len() != self.keys.len() {
                return Err(self
                    .error(format!(
                        "the cursor holds {} key values, and the key has {} columns: was the key changed?",
                        from.len(),
                        self.keys.len()
                    ))
                    .into());
            }
            let mut query = sqlx::query(AssertSqlSafe(self.after.as_str()));
            for value in from {
                query = bind(query, value);
            }
            query.bind(fetch).fetch_all(&self.pool).await
        }
        .map_err(|source| SourceError::Database {
            relation: self.relation.clone(),
            source,
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut keys: Vec<Vec<KeyValue>> = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = self.key_of(row)?;
            if keys.last() == Some(&key) {
                return Err(self
                    .error(format!(
                        "two rows have the key {key:?} ({}): the key must be unique, or rows \
                         sharing a key at a batch's end would be skipped",
                        self.keys
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .into());
            }
            keys.push(key);
        }
        rows.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        keys.truncate(rows.len());
        let last = keys.pop().unwrap_or_default();
        Ok(Some(Batch::new(rows, last)))
    }
}
