//! Errors: the public ones of start-up and of chunk transactions, and the
//! private one that store operations map into [`StoreError`].

use std::time::Duration;

use crate::{Refusal, StoreError};

/// Why [`PostgresStore::connect`](crate::postgres::PostgresStore::connect) or
/// [`from_pool`](crate::postgres::PostgresStore::from_pool) failed. Each message names
/// the server by its URL, with the password replaced by `***`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or an option is malformed.
    #[error("bad Postgres store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting of [`PostgresOptions`](crate::postgres::PostgresOptions) is out of range.
    #[error("bad Postgres store options for {url}: {reason}")]
    BadOptions {
        /// The server, password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached, through every retry.
    #[error("cannot connect to the Postgres store at {url} (tried for {tried:?}): {source}")]
    Unreachable {
        /// The server, password hidden.
        url: String,
        /// How long the store kept trying.
        tried: Duration,
        /// The last error.
        source: sqlx::Error,
    },
    /// The server refused the connection for a reason that retrying
    /// cannot fix: a failed login (SQLSTATE class 28), a database that does
    /// not exist (`3D000`), no `CONNECT` privilege. Not retried.
    #[error("the Postgres store at {url} refused the connection: {source} ({cause}; retrying cannot help)")]
    Refused {
        /// The server, password hidden.
        url: String,
        /// What must change.
        cause: Refusal,
        /// The server's answer.
        source: sqlx::Error,
    },
    /// The schema has no store in it (no table `spotbatch_checkpoints`),
    /// and [`PostgresOptions::create`](crate::postgres::PostgresOptions::create)
    /// is off. Nothing was created.
    #[error("the Postgres store at {url} does not exist: there is no table {table}")]
    Missing {
        /// The server, password hidden.
        url: String,
        /// The table looked for, schema-qualified and quoted.
        table: String,
    },
    /// Applying `migrations/` failed (nothing half-applied stays: each
    /// migration runs in its own transaction).
    #[error("cannot apply the spotbatch migrations to {url}: {source}")]
    Migrate {
        /// The server, password hidden.
        url: String,
        /// What failed.
        source: sqlx::migrate::MigrateError,
    },
}

/// A job's statements on a [`SharedTransaction`](crate::postgres::SharedTransaction) failed,
/// or the transaction is gone.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The transaction holding the chunks done since the last checkpoint was
    /// lost (its connection dropped, the server restarted, a commit failed, or
    /// the job ended it itself). Their writes were rolled back with it, so the
    /// run must stop; the next run resumes from the last checkpoint.
    #[error(
        "{store}: the transaction holding the writes of job {key:?} since its last checkpoint was lost ({reason}); \
         they were rolled back with it and the next run redoes them"
    )]
    Lost {
        /// The store.
        store: String,
        /// The job, or `""` before the first save bound the handle to one.
        key: String,
        /// What happened.
        reason: String,
    },
    /// No transaction could be begun (the server stayed unreachable through
    /// the store's retries). Nothing was lost: no transaction was open.
    #[error("cannot begin the chunk's transaction: {source}")]
    Begin {
        /// The store's error.
        source: Box<crate::StoreError>,
    },
    /// The store's pool cannot serve a shared transaction: the open
    /// transaction keeps one connection and lease renewals need another.
    #[error(
        "{store}: a SharedTransaction needs a pool of at least 2 connections \
         (the open transaction keeps one, lease renewals use another); this pool has {connections}"
    )]
    PoolTooSmall {
        /// The store.
        store: String,
        /// The pool's maximum.
        connections: u32,
    },
    /// A statement failed.
    #[error("{store}: {source}")]
    Sql {
        /// The store.
        store: String,
        /// sqlx's error.
        source: sqlx::Error,
    },
}

impl ConnectError {
    /// Why the server refused for good, if it did: [`ConnectError::Refused`],
    /// [`ConnectError::Missing`] ([`Refusal::Location`]), or migrations that
    /// the server refused to run (a role without the `CREATE` privilege they
    /// need, a read-only database).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ConnectError::Refused { cause, .. } => Some(*cause),
            ConnectError::Missing { .. } => Some(Refusal::Location),
            ConnectError::Migrate { source, .. } => migrate_refusal(source),
            _ => None,
        }
    }

    /// As the [`StoreError::Refused`] it is, when [`refusal`](Self::refusal)
    /// says it is one: what the server said, under `store` (the URL, password
    /// hidden).
    pub(crate) fn into_refused(self, store: String) -> Result<StoreError, Self> {
        let Some(cause) = self.refusal() else {
            return Err(self);
        };
        let source: crate::BoxError = match self {
            ConnectError::Refused { source, .. } => Box::new(source),
            ConnectError::Migrate { source, .. } => Box::new(source),
            other => Box::new(other),
        };
        Ok(StoreError::Refused {
            store,
            key: String::new(),
            operation: "open the store",
            cause,
            source,
        })
    }
}

fn migrate_refusal(e: &sqlx::migrate::MigrateError) -> Option<Refusal> {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => refusal(e),
        _ => None,
    }
}

/// What a store operation ran into, before it becomes a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Refused(String),
    #[error("{0} (gave up after {1:?} of retries)")]
    GaveUp(sqlx::Error, Duration),
}

/// An operation's error on its way out of the store.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A database or connection error: retried while transient, then `StoreError::Io`.
    Sql(sqlx::Error),
    /// A final answer (conflict, corrupt, not found, lost transaction).
    Store(StoreError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// SQLSTATEs after which the same statement may succeed on a new attempt:
/// the connection or server went away, the server is starting, too many
/// connections, a serialization failure or deadlock, or a statement timeout.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection_exception
        || matches!(
            code,
            "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now
                | "57014" // query_canceled (statement_timeout)
                | "53300" // too_many_connections
                | "40001" // serialization_failure
                | "40P01" // deadlock_detected
        )
}

/// Why retrying cannot fix a database error, if it cannot: a refusal that a
/// person must act on, by the error's SQLSTATE
/// ([error codes](https://www.postgresql.org/docs/current/errcodes-appendix.html)):
///
/// | SQLSTATE | refusal |
/// |---|---|
/// | `3D000` invalid catalog name (no such database), `3F000` invalid schema name, `42P01` undefined table | [`Location`](Refusal::Location) |
/// | class `28` invalid authorization (a failed login), `42501` insufficient privilege | [`Permission`](Refusal::Permission) |
/// | `25006` read-only SQL transaction (a standby, `default_transaction_read_only`) | [`ReadOnly`](Refusal::ReadOnly) |
/// | `53100` disk full | [`Full`](Refusal::Full) |
/// | class `22` data exception, class `23` integrity constraint violation, the rest of class `42` (syntax error or access rule violation), class `54` program limit exceeded, `0A000` feature not supported, `21000` cardinality violation, `44000` with check option violation | [`Rejected`](Refusal::Rejected) |
///
/// Everything else (connection errors, class `08`, `57P01`–`57P03`,
/// `40001`, `40P01`, `53300`, `57014`, and codes not listed) is `None`: it
/// may pass, and [`is_transient`] says whether the store itself retries it.
pub(crate) fn refusal(e: &sqlx::Error) -> Option<Refusal> {
    sqlstate_refusal(&e.as_database_error()?.code()?)
}

/// [`refusal`] by SQLSTATE.
fn sqlstate_refusal(code: &str) -> Option<Refusal> {
    let class = code.get(..2).unwrap_or_default();
    match (code, class) {
        ("3D000" | "3F000" | "42P01", _) => Some(Refusal::Location),
        ("42501", _) | (_, "28") => Some(Refusal::Permission),
        ("25006", _) => Some(Refusal::ReadOnly),
        ("53100", _) => Some(Refusal::Full),
        ("0A000" | "21000" | "44000", _) | (_, "22" | "23" | "42" | "54") => {
            Some(Refusal::Rejected)
        }
        _ => None,
    }
}

/// Whether retrying may help: the connection, the pool or the server's state,
/// never the data.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
        _ => false,
    }
}

/// Whether the error means the connection itself is gone (so an open
/// transaction on it is lost), as opposed to a statement that failed.
pub(crate) fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_retrying_cannot_fix_are_refusals_and_the_others_are_not() {
        for (code, expected) in [
            ("3D000", Some(Refusal::Location)),
            ("3F000", Some(Refusal::Location)),
            ("42P01", Some(Refusal::Location)),
            ("28P01", Some(Refusal::Permission)),
            ("28000", Some(Refusal::Permission)),
            ("42501", Some(Refusal::Permission)),
            ("25006", Some(Refusal::ReadOnly)),
            ("53100", Some(Refusal::Full)),
            ("22003", Some(Refusal::Rejected)),
            ("22P02", Some(Refusal::Rejected)),
            ("23505", Some(Refusal::Rejected)),
            ("23514", Some(Refusal::Rejected)),
            ("42601", Some(Refusal::Rejected)),
            ("42703", Some(Refusal::Rejected)),
            ("54000", Some(Refusal::Rejected)),
            ("0A000", Some(Refusal::Rejected)),
            ("08006", None),
            ("57P01", None),
            ("57P03", None),
            ("40001", None),
            ("40P01", None),
            ("53300", None),
            ("53200", None),
            ("57014", None),
            ("55P03", None),
            ("XX000", None),
        ] {
            assert_eq!(sqlstate_refusal(code), expected, "{code}");
            if expected.is_some() {
                assert!(!transient_sqlstate(code), "{code} is both");
            }
        }
    }
}
