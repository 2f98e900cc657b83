//! Choosing a store by URL: the one opener behind [`Runner::store_url`],
//! the examples and the `spotbatch` command.
//!
//! [`Runner::store_url`]: crate::Runner::store_url

use std::path::PathBuf;
use std::sync::Arc;

use super::{CheckpointStore, FileStore, MemoryStore};
use crate::error::Error;

/// Opens the store a URL names.
///
/// | URL | store | feature |
/// |---|---|---|
/// | `file:///var/lib/ckpt` | [`FileStore`] in `/var/lib/ckpt` | |
/// | `file://localhost/var/lib/ckpt` | the same (RFC 8089's host form) | |
/// | `file://.spotbatch`, `file://./ckpt`, `file://../ckpt` | [`FileStore`] in a directory relative to the working directory | |
/// | `memory://` | a new, empty [`MemoryStore`] | |
/// | `s3://bucket/prefix`, `s3://bucket` | `S3Store`: region, credentials and endpoint from the AWS environment (`spotbatch::s3`) | `s3` |
/// | `postgres://user:password@host:port/db?schema=name` (or `postgresql://`) | `PostgresStore`: connects, creates the schema and applies the migrations (`spotbatch::postgres`) | `postgres` |
///
/// Opening an S3 store loads the AWS configuration; opening a Postgres store
/// connects (retrying an unreachable server for up to 10 s) and migrates.
/// [`Runner::store_url`](crate::Runner::store_url) does this inside
/// [`run`](crate::Runner::run), where a stop request interrupts it.
///
/// Percent-encoded bytes in a `file://` path are decoded (`%20` is a space).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spotbatch::Error> {
/// let store = spotbatch::open_store("memory://").await?;
/// assert_eq!(store.location(), "memory://");
///
/// let refused = spotbatch::open_store("ftp://host/ckpt").await;
/// assert!(matches!(refused, Err(spotbatch::Error::Config(_))));
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// - [`Error::Config`] naming the URL (any password shown as `***`) and what
///   is wrong with it: no scheme, an unknown scheme, a `file://` URL naming
///   another host, a malformed S3 bucket or prefix, a malformed Postgres URL.
/// - [`Error::StoreNotBuilt`] when the URL's scheme names a store whose
///   feature this build leaves out (`s3`, `postgres`).
/// - [`Error::Store`] with [`StoreError::Refused`](crate::StoreError::Refused)
///   when the store refuses for a reason that retrying cannot fix: a
///   Postgres login that fails, a database that does not exist, migrations
///   the role may not run or a read-only database refuses.
/// - [`Error::Open`] when the store is well named but cannot be opened for
///   another reason: a Postgres server that cannot be reached, failed
///   migrations.
pub async fn open_store(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    match Scheme::of(url)? {
        Scheme::File => Ok(Arc::new(FileStore::new(file_dir(url)?))),
        Scheme::Memory => Ok(Arc::new(MemoryStore::new())),
        Scheme::S3 => open_s3(url).await,
        Scheme::Postgres => open_postgres(url).await,
    }
}

/// Checks what can be checked of a store URL without opening it: that it
/// parses and names a store this build serves. [`Runner::store_url`] calls
/// it, so that a misspelt URL is reported before anything runs.
///
/// [`Runner::store_url`]: crate::Runner::store_url
pub(crate) fn check_store_url(url: &str) -> Result<(), Error> {
    match Scheme::of(url)? {
        Scheme::File => file_dir(url).map(drop),
        Scheme::Memory | Scheme::S3 | Scheme::Postgres => Ok(()),
    }
}

/// `raw` as it may be printed: the password in a URL's user info
/// (`postgres://app:***@db/jobs`) and any `password=` value (a query
/// parameter, or a key=value connection string) become `***`. Text without
/// either (`file://…`, `s3://…`) comes back unchanged. Works on URLs that do
/// not parse, too.
pub fn redact_url(raw: &str) -> String {
    let mut out = raw.to_owned();
    // The user info ends at the last `@`: a password may hold `/`, `?` or `#`
    // unencoded (generated ones often do), and hiding too much is the safe
    // side. `file://` URLs carry no credentials, and their paths may hold `@`.
    let scheme_end = out.find("://");
    let is_file = scheme_end.is_some_and(|i| out[..i].eq_ignore_ascii_case("file"));
    if let (Some(start), false) = (scheme_end.map(|i| i + 3), is_file) {
        if let Some(at) = out[start..].rfind('@').map(|i| start + i) {
            if let Some(colon) = out[start..at].find(':').map(|i| start + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    // `password=…` anywhere (a query parameter, or a key=value connection string).
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' ', '#'])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

fn bad(url: &str, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("bad store URL {:?}: {reason}", redact_url(url)))
}

enum Scheme {
    File,
    Memory,
    S3,
    Postgres,
}

impl Scheme {
    fn of(url: &str) -> Result<Self, Error> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                url,
                "expected scheme://…, e.g. file:///var/lib/ckpt, s3://bucket/prefix or postgres://host/db",
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => Ok(Scheme::File),
            "memory" if rest.is_empty() => Ok(Scheme::Memory),
            "memory" => Err(bad(url, "memory:// takes nothing after the scheme")),
            "s3" if cfg!(feature = "s3") => Ok(Scheme::S3),
            "s3" => Err(not_built(url, "S3", "s3")),
            "postgres" | "postgresql" if cfg!(feature = "postgres") => Ok(Scheme::Postgres),
            "postgres" | "postgresql" => Err(not_built(url, "Postgres", "postgres")),
            other => Err(bad(
                url,
                format!("unknown scheme {other:?}; expected file, s3, postgres or memory"),
            )),
        }
    }
}

fn not_built(url: &str, store: &'static str, feature: &'static str) -> Error {
    Error::StoreNotBuilt {
        url: redact_url(url),
        store,
        feature,
    }
}

/// The directory a `file://` URL names.
///
/// `file://` followed by `.` is a path relative to the working directory,
/// taken as written (`file://.spotbatch`). Everything else is parsed as an
/// RFC 8089 URL (by the `url` crate) and must name this machine: no host, or
/// `localhost`.
fn file_dir(url: &str) -> Result<PathBuf, Error> {
    let rest = &url["file://".len()..];
    if rest.is_empty() {
        return Err(bad(
            url,
            "a file:// URL needs a directory, e.g. file:///var/lib/ckpt",
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(bad(url, "file:// URLs take no query or fragment"));
    }
    if rest.starts_with('.') {
        let decoded = percent_decode(rest)
            .ok_or_else(|| bad(url, "the path is not valid UTF-8 once percent-decoded"))?;
        return Ok(PathBuf::from(decoded));
    }
    let parsed = ::url::Url::parse(url).map_err(|e| bad(url, e))?;
    match parsed.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(bad(
                url,
                format!(
                    "a file:// URL names a directory on this machine, but this one names the host {host:?}; \
                     write file:///abs/path for an absolute path or file://./{host}{} for a relative one",
                    parsed.path().trim_end_matches('/')
                ),
            ))
        }
    }
    if parsed.path().trim_matches('/').is_empty() {
        return Err(bad(
            url,
            "a file:// URL needs a directory other than the root, e.g. file:///var/lib/ckpt",
        ));
    }
    parsed
        .to_file_path()
        .map_err(|()| bad(url, "not a local path"))
}

/// `%XX` sequences decoded; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(feature = "s3")]
async fn open_s3(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    Ok(Arc::new(crate::s3::S3Store::from_url(url).await?))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    Err(not_built(url, "S3", "s3"))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    use crate::postgres::{ConnectError, PostgresStore};
    match PostgresStore::connect(url).await {
        Ok(store) => Ok(Arc::new(store)),
        // Their messages name the URL, password hidden.
        Err(e @ (ConnectError::BadUrl { .. } | ConnectError::BadOptions { .. })) => {
            Err(Error::Config(e.to_string()))
        }
        Err(e) => match e.into_refused(redact_url(url)) {
            Ok(refused) => Err(Error::Store(refused)),
            Err(e) => Err(Error::Open {
                url: redact_url(url),
                source: Box::new(e),
            }),
        },
    }
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    Err(not_built(url, "Postgres", "postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn location(url: &str) -> String {
        open_store(url).await.unwrap().location()
    }

    #[tokio::test]
    async fn opens_file_and_memory_stores() {
        assert_eq!(
            location("file:///var/lib/ckpt").await,
            "file:///var/lib/ckpt"
        );
        assert_eq!(
            location("FILE:///var/lib/ckpt").await,
            "file:///var/lib/ckpt"
        );
        assert_eq!(
            location("file://.spotbatch").await,
            "file://.spotbatch (relative)"
        );
        assert_eq!(
            location("file://./ckpt/a").await,
            "file://./ckpt/a (relative)"
        );
        assert_eq!(
            location("file://localhost/var/lib/ckpt").await,
            "file:///var/lib/ckpt"
        );
        assert_eq!(
            location("file:///var/lib/my%20ckpt").await,
            "file:///var/lib/my ckpt"
        );
        assert_eq!(
            location("file://./my%20ckpt").await,
            "file://./my ckpt (relative)"
        );
        assert_eq!(location("memory://").await, "memory://");
    }

    #[tokio::test]
    async fn bad_urls_say_what_and_where() {
        let mut cases = vec![
            ("/var/lib/ckpt", "expected scheme"),
            ("file://", "needs a directory"),
            ("file:///x?y=1", "no query"),
            ("file://otherhost/x", "names the host \"otherhost\""),
            ("file://localhost", "other than the root"),
            ("file:///", "other than the root"),
            ("file://otherhost/x", "file://./otherhost/x"),
            ("file://localhost.d/x", "names the host"),
            ("ftp://host/x", "unknown scheme \"ftp\""),
            ("memory://x", "takes nothing"),
        ];
        let mut not_built = vec![];
        if cfg!(not(feature = "s3")) {
            not_built.push(("s3://bucket/prefix", "enable the `s3` feature"));
        } else {
            cases.push(("s3://Bad_Bucket/x", "not a valid bucket name"));
        }
        if cfg!(not(feature = "postgres")) {
            not_built.push(("postgres://u:pw@h/db", "enable the `postgres` feature"));
            not_built.push(("postgresql://localhost/db", "enable the `postgres` feature"));
        } else {
            cases.push(("postgres://u:pw@h/db?schema=", "empty"));
        }
        for (url, says) in not_built {
            let err = open_store(url).await.expect_err(url);
            assert!(
                matches!(&err, Error::StoreNotBuilt { url: shown, .. } if *shown == redact_url(url)),
                "{url}: {err:?}"
            );
            assert_eq!(err.kind(), crate::FailureKind::BadConfig, "{url}");
            let text = err.to_string();
            assert!(
                text.contains(says) && !text.contains(":pw@"),
                "{url}: {text}"
            );
        }
        for (url, says) in cases {
            let err = open_store(url).await.expect_err(url);
            assert!(matches!(err, Error::Config(_)), "{url}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains(&redact_url(url)) && text.contains(says),
                "{url}: {text}"
            );
            assert!(
                !text.contains(":pw@"),
                "{url}: the password shows in {text}"
            );
            // The same URL is refused before the run, where that can be known.
            if !url.starts_with("s3") && !url.starts_with("postgres") {
                assert!(check_store_url(url).is_err(), "{url}");
            }
        }
    }

    #[test]
    fn passwords_never_show() {
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
            ("s3://bucket/prefix", "s3://bucket/prefix"),
            // Unencoded `/`, `#`, `?` and `@` in a password.
            (
                "postgres://u:Super/Secret@127.0.0.1:5555/db",
                "postgres://u:***@127.0.0.1:5555/db",
            ),
            ("postgres://u:Super#Secret@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:Super?Secret@h/db?schema=a",
                "postgres://u:***@h/db?schema=a",
            ),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "s3://AKIAXX:SuperSecret@bucket/x",
                "s3://AKIAXX:***@bucket/x",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
