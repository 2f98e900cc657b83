//! The store's settings, and reading them from a `postgres://` URL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::postgres::error::ConnectError;
use crate::store::redact_url;

/// The schema the store uses when none is given.
pub const DEFAULT_SCHEMA: &str = "public";

/// Settings of a [`PostgresStore`](crate::postgres::PostgresStore).
///
/// ```
/// # use std::time::Duration;
/// use spotbatch::postgres::PostgresOptions;
///
/// let options = PostgresOptions::default()
///     .schema("batch")
///     .max_connections(4)
///     .statement_timeout(Some(Duration::from_secs(5)))
///     .retry_for(Duration::from_secs(20));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The schema holding the store's tables (default `public`); created if missing.
    pub schema: String,
    /// Apply the migrations of `migrations/` at start-up (default `true`).
    pub migrate: bool,
    /// Create the schema and the store's tables when they do not exist
    /// (default `true`, with [`migrate`](Self::migrate)). `false`: a schema
    /// without the store's table is refused at connect
    /// ([`ConnectError::Missing`](crate::postgres::ConnectError::Missing)),
    /// for a tool that reads what a store holds, where a misspelt schema must
    /// not become a new, empty store
    /// ([`open_existing_store`](crate::open_existing_store)). Pending
    /// migrations are still applied to an existing table.
    pub create: bool,
    /// Most connections the pool opens (default 4; a [`SharedTransaction`](crate::postgres::SharedTransaction) holds one while a chunk transaction is open).
    pub max_connections: u32,
    /// Connections kept open when idle (default 0).
    pub min_connections: u32,
    /// How long to wait for one connection to be established, or for a free one from the pool (default 5 s).
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of the store's connections (default 10 s;
    /// `None` leaves the server's setting). It applies to a job's statements on
    /// a [`SharedTransaction`](crate::postgres::SharedTransaction) too; a job that needs
    /// longer runs `SET LOCAL statement_timeout = …` in its transaction.
    pub statement_timeout: Option<Duration>,
    /// How long one store operation keeps retrying after connection errors
    /// (default 10 s), with exponential backoff and jitter from
    /// [`retry_initial`](Self::retry_initial) up to [`retry_max`](Self::retry_max):
    /// the first wait is `retry_initial`, each later one is drawn between
    /// `retry_initial` and three times the previous wait. A wait that would
    /// end past `retry_for` is not taken. `Duration::ZERO`: no retry.
    pub retry_for: Duration,
    /// The first backoff (default 100 ms).
    pub retry_initial: Duration,
    /// The longest backoff (default 2 s).
    pub retry_max: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            migrate: true,
            create: true,
            max_connections: 4,
            min_connections: 0,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(10)),
            retry_for: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

impl PostgresOptions {
    /// Sets [`schema`](Self::schema).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`migrate`](Self::migrate): `false` when you apply `migrations/` yourself
    /// (e.g. with `sqlx migrate run`, or from your own migration tool).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Sets [`create`](Self::create).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`min_connections`](Self::min_connections).
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`statement_timeout`](Self::statement_timeout).
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`retry_for`](Self::retry_for).
    pub fn retry_for(mut self, budget: Duration) -> Self {
        self.retry_for = budget;
        self
    }

    /// Sets [`retry_initial`](Self::retry_initial) and [`retry_max`](Self::retry_max).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }

    /// [`validate`](Self::validate), as the error of a store at `location`.
    pub(crate) fn check(&self, location: &str) -> Result<(), ConnectError> {
        self.validate().map_err(|reason| ConnectError::BadOptions {
            url: location.to_owned(),
            reason,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        check_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.min_connections > self.max_connections {
            return Err("min_connections cannot exceed max_connections".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be more than zero".into());
        }
        Ok(())
    }
}

/// A schema name Postgres accepts: 1 to 63 bytes, no NUL.
fn check_schema(schema: &str) -> Result<(), String> {
    if schema.is_empty() {
        Err("the schema name is empty".into())
    } else if schema.len() > 63 {
        Err(format!("schema name {schema:?} is longer than 63 bytes"))
    } else if schema.contains('\0') {
        Err("the schema name contains a NUL byte".into())
    } else {
        Ok(())
    }
}

/// `name` as a quoted SQL identifier: `"my ""odd"" schema"`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A `postgres://` URL read for the store: sqlx's options, the schema, and
/// the URL with its password hidden, for messages.
#[derive(Debug)]
pub(crate) struct ParsedUrl {
    pub(crate) connect: PgConnectOptions,
    pub(crate) schema: Option<String>,
    /// The URL without the `schema` parameter.
    pub(crate) stripped: url::Url,
}

/// Query parameters that hold secrets and never appear in messages.
fn is_secret_param(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// Parses `postgres://user:pass@host:port/db?schema=name&…`.
///
/// The `schema` parameter is the store's; it is removed before the URL goes
/// to sqlx, which reads every other parameter (`sslmode`, `application_name`…).
pub(crate) fn parse_url(raw: &str) -> Result<ParsedUrl, ConnectError> {
    let bad = |reason: String| ConnectError::BadUrl {
        url: redact_url(raw),
        reason,
    };
    let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad(format!(
            "expected a postgres:// or postgresql:// URL, not {}://",
            url.scheme()
        )));
    }
    let mut schema = None;
    let mut kept = Vec::new();
    for (name, value) in url.query_pairs() {
        if name == "schema" {
            if schema.is_some() {
                return Err(bad("the schema parameter is given twice".into()));
            }
            check_schema(&value).map_err(&bad)?;
            schema = Some(value.into_owned());
        } else {
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(&kept);
    }
    let connect = PgConnectOptions::from_str(url.as_str()).map_err(|e| ConnectError::BadUrl {
        url: redact(&url, schema.as_deref()),
        reason: e.to_string(),
    })?;
    Ok(ParsedUrl {
        connect,
        schema,
        stripped: url,
    })
}

/// The URL with its password (in the user info or a query parameter) replaced by `***`.
pub(crate) fn redact(url: &url::Url, schema: Option<&str>) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Cannot fail: the URL has a host, since it has a password.
        let _ = shown.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if is_secret_param(&k) {
                "***".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .chain(schema.map(|s| ("schema".to_owned(), s.to_owned())))
        .collect();
    if pairs.is_empty() {
        shown.set_query(None);
    } else {
        shown.query_pairs_mut().clear().extend_pairs(&pairs);
    }
    shown.to_string()
}

/// How the store names a pool it was given, for messages: `postgres://user@host:port/db?schema=…`.
pub(crate) fn describe(options: &PgConnectOptions, schema: &str) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let mut url = format!(
        "postgres://{}@{host}/{}",
        options.get_username(),
        options.get_database().unwrap_or_default()
    );
    url.push_str("?schema=");
    url.push_str(schema);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_ours_and_the_password_never_shows() {
        let parsed =
            parse_url("postgres://app:s3cret@db.internal:6432/jobs?schema=batch&sslmode=disable")
                .unwrap();
        assert_eq!(parsed.schema.as_deref(), Some("batch"));
        assert_eq!(parsed.connect.get_database(), Some("jobs"));
        assert_eq!(parsed.connect.get_port(), 6432);
        let shown = redact(&parsed.stripped, parsed.schema.as_deref());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            shown,
            "postgres://app:***@db.internal:6432/jobs?sslmode=disable&schema=batch"
        );
        let none = parse_url("postgresql://localhost/db").unwrap();
        assert_eq!(none.schema, None);
        assert_eq!(redact(&none.stripped, None), "postgresql://localhost/db");
    }

    #[test]
    fn bad_urls_name_the_url_without_its_password() {
        for (url, says) in [
            ("mysql://u:pw1@h/db", "postgres://"),
            ("postgres://u:pw1@h/db?schema=", "empty"),
            ("postgres://u:pw1@h/db?schema=a&schema=b", "twice"),
            ("postgres://u:pw1@[::1/db", "invalid"),
            ("not a url, password=pw1", "relative URL"),
            ("postgres://u@h/db?password=pw1&sslmode=bogus", "sslmode"),
        ] {
            let err = parse_url(url).expect_err(url).to_string();
            assert!(!err.contains("pw1"), "{url}: {err}");
            assert!(err.contains(says), "{url}: {err}");
        }
        let long = format!("postgres://h/db?schema={}", "s".repeat(64));
        assert!(parse_url(&long).unwrap_err().to_string().contains("63"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
