//! Which store a URL names: the one place that knows every store crate.
//!
//! To add a store, add a match arm that builds it and returns it as
//! `Arc<dyn CheckpointStore>`, e.g.
//!
//! ```text
//! "s3" => Ok(Arc::new(spotbatch_s3::S3Store::from_url(url).await.map_err(|e| bad(&e.to_string()))?)),
//! ```
//!
//! `open` is async because opening a remote store is (loading AWS
//! credentials, connecting to Postgres).

use std::sync::Arc;

use spotbatch::{CheckpointStore, JobKey};

use crate::error::CliError;

/// Opens the store `url` names.
///
/// | URL | store |
/// |---|---|
/// | `file:///var/lib/ckpt`, `file://.spotbatch` | the file store (relative paths are relative to the working directory) |
/// | `memory://` | an empty in-memory store (for tests; forgotten when the command ends) |
/// | `s3://bucket/prefix`, `postgres://…` | not in this build yet: an error that says so |
///
/// # Errors
///
/// [`CliError::Config`] naming the URL and what is wrong with it.
pub(crate) async fn open(url: &str) -> Result<Arc<dyn CheckpointStore>, CliError> {
    let not_yet = |store: &str, krate: &str| {
        CliError::Config(format!(
            "store URL {url:?}: the {store} store (crate {krate}) is not built into this spotbatch CLI yet; \
             for now the CLI opens file:// and memory:// stores (to move a checkpoint, \
             `spotbatch export` it here and import it with the store's own tools)"
        ))
    };
    match scheme(url) {
        Some("s3") => Err(not_yet("S3", "spotbatch-s3")),
        Some("postgres" | "postgresql") => Err(not_yet("Postgres", "spotbatch-postgres")),
        _ => spotbatch::open_store(url).map_err(|e| CliError::Config(e.to_string())),
    }
}

fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Checks a job key as the runner does.
pub(crate) fn key(url: &str, key: &str) -> Result<JobKey, CliError> {
    JobKey::new(key).map_err(|e| CliError::Config(format!("{url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> CliError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(open(url)).expect_err(url)
    }

    #[test]
    fn remote_stores_say_they_are_not_built_in_yet() {
        for (url, says) in [
            ("s3://bucket/prefix", "spotbatch-s3"),
            ("postgres://localhost/db", "spotbatch-postgres"),
            ("postgresql://localhost/db", "spotbatch-postgres"),
        ] {
            let e = err(url);
            assert_eq!(e.code(), 78, "{e}");
            assert!(
                e.to_string().contains(url) && e.to_string().contains(says),
                "{e}"
            );
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
}
