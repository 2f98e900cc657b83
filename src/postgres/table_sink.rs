//! Rows into a table inside a [`SharedTransaction`]: committed with the
//! checkpoint that covers them.

use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::OnceCell;

use crate::postgres::{SharedTransaction, TxError};

/// A table written one statement per chunk in a [`SharedTransaction`]: the
/// rows of each chunk are committed together with the checkpoint that
/// covers them, so after a SIGKILL a resumed run writes none of them twice
/// (the transaction's guarantees, and its rules for the job, apply).
///
/// Each chunk is one `INSERT INTO t (c1, c2) SELECT c1::type1, c2::type2
/// FROM unnest($1::text[], $2::text[])`: each field is sent as text and
/// converted by the column type's input function, as `COPY` does (`'42'`
/// into an `integer`, `'2024-01-31'` into a `date`). Every field is a value,
/// empty strings included; there is no NULL. The columns' types are read
/// from the catalog at the first chunk.
///
/// (Not `COPY`: sqlx 0.9.0 does not set `TCP_NODELAY`, so each `COPY`'s end
/// waits for the server's delayed ACK, about 40 ms on Linux, which costs more
/// than the `INSERT` for chunks of thousands of rows.)
///
/// ```no_run
/// # use spotbatch::postgres::{TableSink, PostgresStore};
/// # async fn f() -> Result<(), spotbatch::BoxError> {
/// let store = PostgresStore::connect("postgres://app@db/jobs").await?;
/// let tx = store.transactional()?;
/// let sink = TableSink::new(tx.clone(), "public.people", ["name", "city"]);
/// sink.write_chunk([["Ada", "London"], ["Renée", "Paris"]]).await?; // in Handler::handle
/// sink.check().await?; // in Handler::flush
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TableSink {
    tx: SharedTransaction,
    table: String,
    columns: Vec<String>,
    /// The `INSERT`, once the columns' types are known.
    statement: std::sync::Arc<OnceCell<String>>,
}

/// Why [`TableSink::write_chunk`] failed. The chunk's rows are rolled back
/// either way.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TableSinkError {
    /// The shared transaction is lost, or could not be begun.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// A row has another number of fields than the sink has columns.
    #[error("a row of {found} fields for the {expected} columns of {table}")]
    Width {
        /// The table.
        table: String,
        /// Its columns written.
        expected: usize,
        /// The row's fields.
        found: usize,
    },
    /// The server refused the rows (a value its column's type does not
    /// parse, a constraint, a missing table or column) or the connection failed.
    #[error("writing into {table} failed: {source}")]
    Write {
        /// The table.
        table: String,
        /// The server's error.
        source: sqlx::Error,
    },
}

impl TableSink {
    /// Writes into `columns` of `table` (its name as SQL takes it, e.g.
    /// `sales.orders` or `"Mixed Case"`; column names are quoted here,
    /// exactly as given) through `tx`, whose
    /// [`store`](SharedTransaction::store) the runner saves to.
    pub fn new<I, C>(tx: SharedTransaction, table: &str, columns: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: AsRef<str>,
    {
        Self {
            tx,
            table: table.to_owned(),
            columns: columns.into_iter().map(|c| c.as_ref().to_owned()).collect(),
            statement: std::sync::Arc::default(),
        }
    }

    /// The `INSERT` statement, built from the columns' types in the catalog.
    async fn statement(&self, pool: &PgPool) -> Result<&str, TableSinkError> {
        self.statement
            .get_or_try_init(|| async {
                let mut casts = Vec::with_capacity(self.columns.len());
                for column in &self.columns {
                    let found: Option<String> = sqlx::query_scalar(
                        "SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
                          WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0
                            AND NOT attisdropped",
                    )
                    .bind(&self.table)
                    .bind(column)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| self.error(e))?;
                    let Some(sql_type) = found else {
                        return Err(self.error(sqlx::Error::Protocol(format!(
                            "no column {column:?} in table {} (or no such table)",
                            self.table
                        ))));
                    };
                    casts.push((quote(column), sql_type));
                }
                let names = casts.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
                let select = casts
                    .iter()
                    .enumerate()
                    .map(|(i, (_, t))| format!("c{i}::{t}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let params = (1..=casts.len())
                    .map(|i| format!("${i}::text[]"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let aliases = (0..casts.len())
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok(format!(
                    "INSERT INTO {} ({names}) SELECT {select} FROM unnest({params}) AS u ({aliases})",
                    self.table
                ))
            })
            .await
            .map(String::as_str)
    }

    /// Writes `rows` (each a record of fields, one per column) as one
    /// chunk's writes: opens the chunk on the shared transaction, inserts
    /// the rows in one statement, and marks the chunk done. Returns the rows
    /// written.
    ///
    /// # Errors
    ///
    /// [`TableSinkError::Tx`] when the transaction is lost or cannot be
    /// begun; [`TableSinkError::Width`] for a row of the wrong width (nothing
    /// is written); [`TableSinkError::Write`] when the server refuses the
    /// rows. The chunk's rows are then rolled back, the others kept.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, the chunk's rows are rolled back (the
    /// chunk is not marked done).
    pub async fn write_chunk<R, F>(
        &self,
        rows: impl IntoIterator<Item = R>,
    ) -> Result<u64, TableSinkError>
    where
        R: IntoIterator<Item = F>,
        F: AsRef<str>,
    {
        let width = self.columns.len();
        let mut columns: Vec<Vec<&str>> = vec![Vec::new(); width];
        let rows: Vec<Vec<F>> = rows.into_iter().map(|r| r.into_iter().collect()).collect();
        for row in &rows {
            if row.len() != width {
                return Err(TableSinkError::Width {
                    table: self.table.clone(),
                    expected: width,
                    found: row.len(),
                });
            }
            for (column, field) in columns.iter_mut().zip(row) {
                column.push(field.as_ref());
            }
        }
        let statement = self.statement(self.tx.store().pool()).await?;
        let mut insert = sqlx::query(AssertSqlSafe(statement));
        for column in &columns {
            insert = insert.bind(column);
        }
        let mut chunk = self.tx.chunk().await?;
        let written = insert
            .execute(&mut *chunk)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected();
        chunk.done().await?;
        Ok(written)
    }

    /// [`SharedTransaction::check`]: call it in the handler's `flush`.
    ///
    /// # Errors
    ///
    /// [`TxError::Lost`] when the transaction is gone.
    pub async fn check(&self) -> Result<(), TxError> {
        self.tx.check().await
    }

    /// The shared transaction the rows are written in.
    pub fn transaction(&self) -> &SharedTransaction {
        &self.tx
    }

    fn error(&self, source: sqlx::Error) -> TableSinkError {
        TableSinkError::Write {
            table: self.table.clone(),
            source,
        }
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
