//! Which store a URL names: the one place that knows every store crate.
//!
//! | scheme | store | crate |
//! |---|---|---|
//! | `file://`, `memory://` | the file store, an in-memory store | `spotbatch` |
//! | `s3://bucket/prefix` | one object per job | `spotbatch-s3` |
//! | `postgres://…`, `postgresql://…` | one row per job | `spotbatch-postgres` |
//!
//! To add a store, add a match arm that builds it and returns it as
//! `Arc<dyn CheckpointStore>`, mapping its errors to [`CliError::Config`]
//! with the URL named (and any password hidden).
//!
//! `open` is async because opening a remote store is: the S3 store loads the
//! AWS configuration (region, credentials, endpoint) from the environment, and
//! the Postgres store connects (retrying a server that does not answer for up
//! to 10 s) and applies its migrations.
//!
//! Messages print URLs through [`redacted`], so that a Postgres password
//! never shows.

use std::sync::Arc;

use spotbatch::{CheckpointStore, JobKey};
use spotbatch_postgres::PostgresStore;
use spotbatch_s3::S3Store;

use crate::error::CliError;

/// Opens the store `url` names.
///
/// | URL | store |
/// |---|---|
/// | `file:///var/lib/ckpt`, `file://.spotbatch` | the file store (relative paths are relative to the working directory) |
/// | `memory://` | an empty in-memory store (for tests; forgotten when the command ends) |
/// | `s3://bucket/prefix`, `s3://bucket` | the S3 store; region, credentials and endpoint from the AWS environment, plus `SPOTBATCH_S3_*` |
/// | `postgres://user:pass@host:port/db?schema=name` (or `postgresql://`) | the Postgres store; creates the schema and applies the migrations if needed |
///
/// # Errors
///
/// [`CliError::Config`] naming the URL (a Postgres password shown as `***`)
/// and what is wrong: a malformed URL, a bad `SPOTBATCH_S3_*` variable, a
/// Postgres server that cannot be reached or refuses the login, a failed
/// migration.
pub(crate) async fn open(url: &str) -> Result<Arc<dyn CheckpointStore>, CliError> {
    match scheme(url) {
        Some("s3") => match S3Store::from_url(url).await {
            Ok(store) => Ok(Arc::new(store)),
            // Parse errors name the URL; errors in SPOTBATCH_S3_* name the variable.
            Err(e) => Err(CliError::Config(naming(url, e.to_string()))),
        },
        // The error names the URL with its password hidden: never add the raw URL.
        Some("postgres" | "postgresql") => match PostgresStore::connect(url).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(e) => Err(CliError::Config(e.to_string())),
        },
        _ => spotbatch::open_store(url).map_err(|e| CliError::Config(e.to_string())),
    }
}

/// `message`, prefixed with the URL unless it names it already.
fn naming(url: &str, message: String) -> String {
    if message.contains(url) {
        message
    } else {
        format!("store URL {url:?}: {message}")
    }
}

fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Checks a job key as the runner does.
pub(crate) fn key(url: &str, key: &str) -> Result<JobKey, CliError> {
    JobKey::new(key).map_err(|e| CliError::Config(format!("{}: {e}", redacted(url))))
}

/// `url` as the CLI may print it, its password hidden; see
/// [`spotbatch_postgres::redact_url`].
pub(crate) fn redacted(url: &str) -> String {
    spotbatch_postgres::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> CliError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        match rt.block_on(open(url)) {
            Ok(store) => panic!("{url} opened as {}", store.location()),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_urls_are_config_errors_naming_the_url() {
        for url in ["/var/lib/ckpt", "ftp://host/x", "file://"] {
            let e = err(url);
            assert_eq!(e.code(), 78, "{e}");
            assert!(e.to_string().contains(url), "{e}");
        }
    }

    /// Rejected while parsing: nothing is loaded or sent.
    #[test]
    fn bad_s3_urls_are_config_errors_naming_the_url_and_the_reason() {
        for (url, says) in [
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://My_Bucket/x", "not a valid bucket name"),
            ("s3://bucket/a//b", "empty, '.' or '..' segment"),
            ("s3://bucket/x?region=eu-west-1", "no query"),
        ] {
            let e = err(url);
            assert_eq!(e.code(), 78, "{url}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(&format!("{url:?}")) && text.contains(says),
                "{url}: {text}"
            );
        }
    }

    /// Rejected while parsing, before any connection: the URL is named with
    /// its password hidden.
    #[test]
    fn bad_postgres_urls_are_config_errors_naming_the_url_without_its_password() {
        for (url, says) in [
            ("postgres://u:pw1@h/db?schema=", "empty"),
            ("postgresql://u:pw1@h/db?schema=a&schema=b", "twice"),
            ("postgres://u:pw1@[::1/db", "invalid"),
            ("postgres://u:pw1@h/db?sslmode=bogus", "sslmode"),
        ] {
            let e = err(url);
            assert_eq!(e.code(), 78, "{url}: {e}");
            let text = e.to_string();
            assert!(!text.contains("pw1"), "{url}: the password shows in {text}");
            assert!(
                text.contains(&url.replace(":pw1@", ":***@")) && text.contains(says),
                "{url}: {text}"
            );
        }
    }

    #[test]
    fn passwords_never_show_in_urls_the_cli_prints() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/jobs?schema=b",
                "postgres://app:***@db:5432/jobs?schema=b",
            ),
            (
                "postgresql://app@db/jobs?Password=s3cret&sslmode=require",
                "postgresql://app@db/jobs?Password=***&sslmode=require",
            ),
            ("postgres://db/jobs", "postgres://db/jobs"),
            ("file:///var/lib/a@b:c", "file:///var/lib/a@b:c"),
            ("file://ckpt", "file://ckpt"),
            ("s3://bucket/prefix", "s3://bucket/prefix"),
            ("memory://", "memory://"),
        ] {
            assert_eq!(redacted(url), shown);
        }
        let e = key("postgres://app:s3cret@db/jobs", "").expect_err("empty key");
        assert_eq!(e.code(), 78, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("postgres://app:***@db/jobs") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn messages_that_do_not_name_the_url_get_it_in_front() {
        let url = "s3://bucket/ckpt";
        assert_eq!(
            naming(url, "bad SPOTBATCH_S3_SSE=\"x\"".into()),
            "store URL \"s3://bucket/ckpt\": bad SPOTBATCH_S3_SSE=\"x\""
        );
        let named = format!("bad S3 store URL {url:?}: no query");
        assert_eq!(naming(url, named.clone()), named);
    }
}
