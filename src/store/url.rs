//! Choosing a store by URL.

use std::sync::Arc;

use super::{CheckpointStore, FileStore, MemoryStore};
use crate::error::Error;

/// Opens the store a URL names.
///
/// | URL | store |
/// |---|---|
/// | `file:///var/lib/ckpt` | [`FileStore`] in `/var/lib/ckpt` |
/// | `file://localhost/var/lib/ckpt` | the same (RFC 8089's host form) |
/// | `file://.spotbatch` | [`FileStore`] in `.spotbatch`, relative to the working directory |
/// | `memory://` | a new, empty [`MemoryStore`] |
///
/// `s3://` and `postgres://` URLs are served by the `spotbatch-s3` and
/// `spotbatch-postgres` crates; this function names them in its error.
///
/// # Errors
///
/// [`Error::Config`] naming the URL and what is wrong with it.
pub fn open_store(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    let bad = |reason: &str| Error::Config(format!("bad store URL {url:?}: {reason}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "expected scheme://…, e.g. file:///var/lib/ckpt, s3://bucket/prefix or postgres://host/db",
        ));
    };
    match scheme {
        "file" => {
            if rest.is_empty() {
                return Err(bad("a file:// URL needs a directory, e.g. file:///var/lib/ckpt"));
            }
            if rest.contains(['?', '#']) {
                return Err(bad("file:// URLs take no query or fragment"));
            }
            // RFC 8089: `file://localhost/path` is `file:///path`.
            let dir = rest.strip_prefix("localhost").filter(|p| p.starts_with('/')).unwrap_or(rest);
            Ok(Arc::new(FileStore::new(dir)))
        }
        "memory" if rest.is_empty() => Ok(Arc::new(MemoryStore::new())),
        "memory" => Err(bad("memory:// takes nothing after the scheme")),
        "s3" => Err(bad(
            "the S3 store lives in the spotbatch-s3 crate: open it with spotbatch_s3::open_store or S3Store::from_url",
        )),
        "postgres" | "postgresql" => Err(bad(
            "the Postgres store lives in the spotbatch-postgres crate: open it with PostgresStore::connect",
        )),
        other => Err(bad(&format!(
            "unknown scheme {other:?}; expected file, s3, postgres or memory"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_file_and_memory_stores() {
        assert_eq!(
            open_store("file:///var/lib/ckpt").unwrap().location(),
            "file:///var/lib/ckpt"
        );
        assert_eq!(
            open_store("file://.spotbatch").unwrap().location(),
            "file://.spotbatch (relative)"
        );
        assert_eq!(
            open_store("file://localhost/var/lib/ckpt")
                .unwrap()
                .location(),
            "file:///var/lib/ckpt"
        );
        assert_eq!(
            open_store("file://localhost.d/x").unwrap().location(),
            "file://localhost.d/x (relative)"
        );
        assert_eq!(open_store("memory://").unwrap().location(), "memory://");
    }

    #[test]
    fn bad_urls_say_what_and_where() {
        for (url, says) in [
            ("/var/lib/ckpt", "expected scheme"),
            ("file://", "needs a directory"),
            ("file:///x?y=1", "no query"),
            ("ftp://host/x", "unknown scheme \"ftp\""),
            ("s3://bucket/prefix", "spotbatch-s3"),
            ("postgres://localhost/db", "spotbatch-postgres"),
        ] {
            let err = open_store(url).expect_err(url).to_string();
            assert!(err.contains(url) && err.contains(says), "{url}: {err}");
        }
    }
}
