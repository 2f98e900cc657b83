//! Which store a URL names: [`spotbatch::open_store`], the opener the
//! runner and the examples use, with its errors as the CLI's.
//!
//! | scheme | store | feature of this crate |
//! |---|---|---|
//! | `file://`, `memory://` | the file store, an in-memory store | always |
//! | `s3://bucket/prefix` | one object per job | `s3` (default) |
//! | `postgres://…`, `postgresql://…` | one row per job | `postgres` (default) |
//!
//! Messages print URLs through [`redacted`], so that a Postgres password
//! never shows.

use std::sync::Arc;

use spotbatch::{CheckpointStore, Error, JobKey, StoreError};

use crate::error::CliError;

/// Whether a command may create the store it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// The store must exist ([`spotbatch::open_existing_store`]): every
    /// command that reads or changes what a store holds.
    Existing,
    /// It is created if needed, as a run does ([`spotbatch::open_store`]):
    /// `import`, and `simulate`, whose job's runs create it.
    OrCreate,
}

/// Opens the store `url` names; see [`spotbatch::open_existing_store`] and
/// [`spotbatch::open_store`].
///
/// # Errors
///
/// [`CliError::Config`] naming the URL (a Postgres password shown as `***`)
/// and what is wrong: a malformed URL, a scheme this build leaves out (the
/// message says how to install a command with it), a bad
/// `SPOTBATCH_S3_*` variable, a Postgres server that cannot be reached, a
/// failed migration; [`CliError::Store`] for a store that refuses for good
/// (a refused login, a database that does not exist) or, with
/// [`Open::Existing`], does not exist (a missing directory or schema).
pub(crate) async fn open(url: &str, how: Open) -> Result<Arc<dyn CheckpointStore>, CliError> {
    let opened = match how {
        Open::Existing => spotbatch::open_existing_store(url).await,
        Open::OrCreate => spotbatch::open_store(url).await,
    };
    opened.map_err(|e| {
        let message = match e {
            // Names the URL (password hidden) and what to fix: exit 74.
            Error::Store(refused @ StoreError::Refused { .. }) => return CliError::Store(refused),
            Error::Config(message) => message,
            // The library's advice names a dependency; here it is this binary's feature.
            Error::StoreNotBuilt { url, feature, .. } => {
                return CliError::Config(format!(
                    "store URL {url:?}: this spotbatch command was built without the `{feature}` \
                     feature; to add it: \
                     cargo install --path crates/spotbatch-cli --features {feature}"
                ))
            }
            other => other.to_string(),
        };
        CliError::Config(naming(url, message))
    })
}

/// `message`, prefixed with the URL unless it names it already.
fn naming(url: &str, message: String) -> String {
    let shown = redacted(url);
    if message.contains(&shown) || message.contains(&format!("{shown:?}")) {
        message
    } else {
        format!("store URL {shown:?}: {message}")
    }
}

/// Checks a job key as the runner does.
pub(crate) fn key(url: &str, key: &str) -> Result<JobKey, CliError> {
    JobKey::new(key).map_err(|e| CliError::Config(format!("{}: {e}", redacted(url))))
}

/// `url` as the CLI may print it, its password hidden; see
/// [`spotbatch::redact_url`].
pub(crate) fn redacted(url: &str) -> String {
    spotbatch::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> CliError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        match rt.block_on(open(url, Open::Existing)) {
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

    /// A scheme whose feature this build leaves out: the advice is to
    /// reinstall the command with that feature, not to change a dependency.
    #[test]
    fn schemes_this_build_leaves_out_say_how_to_install_them() {
        let mut left_out = vec![];
        if cfg!(not(feature = "s3")) {
            left_out.push(("s3://b/x", "s3"));
        }
        if cfg!(not(feature = "postgres")) {
            left_out.push(("postgres://u:pw1@h/db", "postgres"));
        }
        for (url, feature) in left_out {
            let e = err(url);
            assert_eq!(e.code(), 78, "{e}");
            let text = e.to_string();
            assert!(
                text.contains(&redacted(url))
                    && text.contains(&format!(
                        "cargo install --path crates/spotbatch-cli --features {feature}"
                    ))
                    && !text.contains("spotbatch = {")
                    && !text.contains("pw1"),
                "{url}: {text}"
            );
        }
    }

    /// Rejected while parsing: nothing is loaded or sent.
    #[cfg(feature = "s3")]
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
    #[cfg(feature = "postgres")]
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
