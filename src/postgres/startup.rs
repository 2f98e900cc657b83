//! Start-up: the first connection (with retries and a clear error), the
//! migrations, and the backoff every retry loop of the store uses.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::postgres::error::{is_transient, refusal, ConnectError};
use crate::postgres::options::{quote_ident, PostgresOptions};
use crate::postgres::sql::{CHECKPOINTS, MIGRATIONS};
use crate::retry::Backoff;

/// The backoff of one store operation or connection: from
/// [`retry_initial`](PostgresOptions::retry_initial) up to
/// [`retry_max`](PostgresOptions::retry_max), with jitter, for
/// [`retry_for`](PostgresOptions::retry_for).
pub(crate) fn retry_backoff(options: &PostgresOptions) -> Backoff {
    Backoff::new(options.retry_initial, options.retry_max).within(options.retry_for)
}

/// A first connection to the server, retried on transient errors.
pub(crate) async fn connect_retrying(
    connect: &PgConnectOptions,
    options: &PostgresOptions,
    location: &str,
) -> Result<PgConnection, ConnectError> {
    let timeout = options.connect_timeout;
    retrying_connect(options, location, || async {
        match tokio::time::timeout(timeout, PgConnection::connect_with(connect)).await {
            Ok(connected) => connected,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))),
        }
    })
    .await
}

/// A connection from `pool`, retried on transient errors.
pub(crate) async fn acquire_retrying(
    pool: &PgPool,
    options: &PostgresOptions,
    location: &str,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, ConnectError> {
    retrying_connect(options, location, || pool.acquire()).await
}

/// Runs `attempt` until it succeeds, fails for good, or the backoff of
/// `options` runs out; then names the store and how long it tried.
async fn retrying_connect<T, F, Fut>(
    options: &PostgresOptions,
    location: &str,
    mut attempt: F,
) -> Result<T, ConnectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = retry_backoff(options);
    loop {
        let error = match attempt().await {
            Ok(connected) => return Ok(connected),
            Err(e) => e,
        };
        match is_transient(&error).then(|| backoff.next_delay()).flatten() {
            Some(delay) => {
                warn!(store = %location, %error, retry_in = ?delay, "cannot connect yet; retrying");
                tokio::time::sleep(delay).await;
            }
            None => {
                if let Some(cause) = refusal(&error) {
                    return Err(ConnectError::Refused {
                        url: location.to_owned(),
                        cause,
                        source: error,
                    });
                }
                return Err(ConnectError::Unreachable {
                    url: location.to_owned(),
                    tried: backoff.elapsed(),
                    source: error,
                });
            }
        }
    }
}

/// Fails with [`ConnectError::Missing`] unless the store's table exists in
/// `schema`; creates nothing. Any other error is the server's: a refusal
/// (no `USAGE` on the schema…), or what the connection ran into.
pub(crate) async fn check_exists(
    conn: &mut PgConnection,
    schema: &str,
    location: &str,
) -> Result<(), ConnectError> {
    let table = format!("{}.{CHECKPOINTS}", quote_ident(schema));
    let probe = format!("SELECT 1 FROM {table} LIMIT 0");
    let Err(error) = conn.execute(sqlx::AssertSqlSafe(probe)).await else {
        return Ok(());
    };
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .unwrap_or_default();
    // undefined_table, invalid_schema_name
    if matches!(code.as_ref(), "42P01" | "3F000") {
        return Err(ConnectError::Missing {
            url: location.to_owned(),
            table,
        });
    }
    Err(match refusal(&error) {
        Some(cause) => ConnectError::Refused {
            url: location.to_owned(),
            cause,
            source: error,
        },
        None => ConnectError::Unreachable {
            url: location.to_owned(),
            tried: std::time::Duration::ZERO,
            source: error,
        },
    })
}

/// Applies `migrations/` to `schema` (creating it) under sqlx's advisory
/// lock, on a one-connection pool of its own whose `search_path` is the
/// schema, closed afterwards: that also releases the lock should a migration
/// fail half-way, and no connection with a changed `search_path` reaches the
/// store's pool (or yours, with `from_pool`).
pub(crate) async fn migrate(
    connect: PgConnectOptions,
    options: &PostgresOptions,
    location: &str,
) -> Result<(), ConnectError> {
    let quoted = quote_ident(&options.schema);
    let set_path = format!("SET search_path TO {quoted}");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.connect_timeout.max(options.retry_for))
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                Ok(())
            })
        })
        .connect_lazy_with(connect);
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(format!("{quoted}.{MIGRATIONS}"));
    migrator.create_schema(quoted);
    let started = Instant::now();
    let result = migrator.run(&pool).await;
    pool.close().await;
    result.map_err(|source| ConnectError::Migrate {
        url: location.to_owned(),
        source,
    })?;
    debug!(store = %location, took = ?started.elapsed(), "migrations applied");
    Ok(())
}
