//! Rows into a table by `COPY`, inside a [`SharedTransaction`]: committed
//! with the checkpoint that covers them.

use crate::postgres::{SharedTransaction, TxError};

/// A table written by `COPY … FROM STDIN`, one `COPY` per chunk, in a
/// [`SharedTransaction`]: the rows of each chunk are committed together with
/// the checkpoint that covers them, so after a SIGKILL a resumed run writes
/// none of them twice (the transaction's guarantees, and its rules for the
/// job, apply).
///
/// Each field is sent as text and parsed by the column type's input
/// function, as `COPY` does: `'42'` into an `integer`, `'2024-01-31'` into a
/// `date`. Every field is a value, empty strings included; there is no NULL.
///
/// ```no_run
/// # use spotbatch::postgres::{CopySink, PostgresStore};
/// # async fn f() -> Result<(), spotbatch::BoxError> {
/// let store = PostgresStore::connect("postgres://app@db/jobs").await?;
/// let tx = store.transactional()?;
/// let sink = CopySink::new(tx.clone(), "public.people", ["name", "city"]);
/// sink.write_chunk([["Ada", "London"], ["Renée", "Paris"]]).await?; // in Handler::handle
/// sink.check().await?; // in Handler::flush
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CopySink {
    tx: SharedTransaction,
    statement: String,
    table: String,
}

/// Why [`CopySink::write_chunk`] failed. The chunk's rows are rolled back
/// either way; the run goes on only after a [`Copy`](Self::Copy) error, and
/// only if the job chooses to.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The shared transaction is lost, or could not be begun.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// The server refused the rows (a value its column's type does not
    /// parse, a constraint, a missing table or column) or the connection failed.
    #[error("COPY into {table} failed: {source}")]
    Copy {
        /// The table.
        table: String,
        /// The server's error.
        source: sqlx::Error,
    },
}

impl CopySink {
    /// Writes into `columns` of `table` (its name as SQL takes it, e.g.
    /// `sales.orders` or `"Mixed Case"`; column names are quoted here,
    /// exactly as given) through `tx`, whose
    /// [`store`](SharedTransaction::store) the runner saves to.
    pub fn new<I, C>(tx: SharedTransaction, table: &str, columns: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: AsRef<str>,
    {
        let columns = columns
            .into_iter()
            .map(|c| format!("\"{}\"", c.as_ref().replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            tx,
            statement: format!("COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)"),
            table: table.to_owned(),
        }
    }

    /// Copies `rows` (each a record of fields, one per column) as one
    /// chunk's writes: opens the chunk on the shared transaction, sends the
    /// rows in one `COPY`, and marks the chunk done. Returns the rows copied.
    ///
    /// # Errors
    ///
    /// [`CopyError::Tx`] when the transaction is lost or cannot be begun;
    /// [`CopyError::Copy`] when the server refuses the rows. The chunk's
    /// rows are then rolled back, the others kept.
    ///
    /// # Cancel safety
    ///
    /// Dropped before it returns, the chunk's rows are rolled back (the
    /// chunk is not marked done).
    pub async fn write_chunk<R, F>(
        &self,
        rows: impl IntoIterator<Item = R>,
    ) -> Result<u64, CopyError>
    where
        R: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        let mut data = csv::WriterBuilder::new()
            .has_headers(false)
            .quote_style(csv::QuoteStyle::Always) // "" is an empty string; unquoted would be NULL
            .from_writer(Vec::with_capacity(64 * 1024));
        for row in rows {
            data.write_record(row)
                .map_err(|e| self.copy_error(sqlx::Error::Encode(e.into())))?;
        }
        let data = data
            .into_inner()
            .map_err(|e| self.copy_error(sqlx::Error::Encode(e.into_error().into())))?;
        let mut chunk = self.tx.chunk().await?;
        let copied = async {
            let mut copy = chunk.copy_in_raw(&self.statement).await?;
            copy.send(data).await?;
            copy.finish().await
        }
        .await
        .map_err(|e| self.copy_error(e))?;
        chunk.done().await?;
        Ok(copied)
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

    fn copy_error(&self, source: sqlx::Error) -> CopyError {
        CopyError::Copy {
            table: self.table.clone(),
            source,
        }
    }
}
