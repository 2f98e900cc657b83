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
    open(url, Create::Yes).await
}

/// Opens the store a URL names, as [`open_store`] does, to read or change
/// what it holds: a store that does not exist yet is an error, not a new,
/// empty store. The `spotbatch` command opens stores so for every command
/// but `import`, so that a misspelt directory or schema says so rather
/// than "no checkpoint".
///
/// | URL | must exist |
/// |---|---|
/// | `file://…` | the directory, readable; nothing is created |
/// | `postgres://…` | the store's table, `<schema>.spotbatch_checkpoints`; the schema is not created (pending migrations are applied to an existing table, as [`open_store`] does) |
/// | `s3://bucket/prefix` | the bucket, which the first request checks (a prefix exists once something is stored under it: an unused one is an empty store) |
/// | `memory://` | nothing: always a new, empty store |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let missing = spotbatch::open_existing_store("file:///no/such/dir").await;
/// let error = missing.expect_err("no such directory").to_string();
/// assert!(error.contains("the directory /no/such/dir does not exist"), "{error}");
/// # }
/// ```
///
/// # Errors
///
/// As [`open_store`], and [`Error::Store`] with
/// [`StoreError::Refused`](crate::StoreError::Refused) naming what is
/// missing, for operation `open the store`: a directory that does not exist, is a
/// file or lies under one ([`Refusal::Location`](crate::Refusal::Location)),
/// or cannot be read ([`Refusal::Permission`](crate::Refusal::Permission));
/// a Postgres schema without the store's table
/// ([`Refusal::Location`](crate::Refusal::Location)).
pub async fn open_existing_store(url: &str) -> Result<Arc<dyn CheckpointStore>, Error> {
    open(url, Create::No).await
}

/// Whether opening a store may create it (its directory, schema, tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes,
    No,
}

async fn open(url: &str, create: Create) -> Result<Arc<dyn CheckpointStore>, Error> {
    match Scheme::of(url)? {
        Scheme::File => {
            let store = FileStore::new(file_dir(url)?);
            if create == Create::No {
                store.check_dir().await?;
            }
            Ok(Arc::new(store))
        }
        Scheme::Memory => Ok(Arc::new(MemoryStore::new())),
        Scheme::S3 => open_s3(url).await,
        Scheme::Postgres => open_postgres(url, create).await,
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
    if let Some(hint) = unexpanded(rest, std::env::var_os("HOME").as_deref()) {
        return Err(bad(url, hint));
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

/// What to write instead when the path of a `file://` URL (`rest`, after
/// the scheme) starts with what only a shell expands: `~`, `~user` or
/// `$VAR` as its first component (`file://~/ckpt`, `file:///~/ckpt`,
/// `file://./$HOME/ckpt`), which would otherwise be read as a host name or
/// a directory named so. `home` is `$HOME`, shown expanded in the hint when
/// it is an absolute path.
fn unexpanded(rest: &str, home: Option<&std::ffi::OsStr>) -> Option<String> {
    let path = rest
        .strip_prefix("./")
        .or_else(|| rest.strip_prefix('/'))
        .unwrap_or(rest);
    let (first, after) = path.split_once('/').unwrap_or((path, ""));
    if !first.starts_with(['~', '$']) {
        return None;
    }
    let after = after.trim_matches('/');
    let under = |dir: &str| {
        if after.is_empty() {
            format!("file://{dir}")
        } else {
            format!("file://{dir}/{after}")
        }
    };
    let instead = if matches!(first, "~" | "$HOME" | "${HOME}") {
        let home = home
            .and_then(|h| h.to_str())
            .filter(|h| h.starts_with('/'))
            .map(|h| h.trim_end_matches('/'));
        let absolute = under(home.unwrap_or("/path/of/your/home"));
        if after.is_empty() {
            absolute
        } else {
            format!(
                "{absolute}, or file://./{after} for a directory relative to the working directory"
            )
        }
    } else if first.starts_with('~') {
        under("/path/of/that/home")
    } else {
        under("/path/it/stands/for")
    };
    Some(format!(
        "`{first}` is not expanded in a store URL (no shell reads it there): \
         write the absolute path, {instead}"
    ))
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
async fn open_postgres(url: &str, create: Create) -> Result<Arc<dyn CheckpointStore>, Error> {
    use crate::postgres::{ConnectError, PostgresOptions, PostgresStore};
    let options = PostgresOptions::default().create(create == Create::Yes);
    match PostgresStore::connect_with(url, options).await {
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
async fn open_postgres(url: &str, _: Create) -> Result<Arc<dyn CheckpointStore>, Error> {
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

    /// `~` and `$HOME` are a shell's: the hint gives the path they stand
    /// for (from `$HOME`, when it is set) or a relative one, never a
    /// directory named `~`.
    #[test]
    fn a_tilde_or_a_variable_is_refused_with_the_path_to_write() {
        let home = Some(std::ffi::OsStr::new("/home/ops/"));
        for (rest, home, instead) in [
            (
                "~/x",
                home,
                "write the absolute path, file:///home/ops/x, or file://./x for a directory relative to the working directory",
            ),
            (
                "~/x/y/",
                None,
                "write the absolute path, file:///path/of/your/home/x/y, or file://./x/y",
            ),
            ("~", home, "write the absolute path, file:///home/ops"),
            ("/~/x", home, "file:///home/ops/x, or file://./x "),
            ("./~/x", home, "file:///home/ops/x, or file://./x "),
            ("$HOME/x", home, "file:///home/ops/x, or file://./x "),
            ("./${HOME}/x", home, "file:///home/ops/x, or file://./x "),
            ("~ops/x", home, "write the absolute path, file:///path/of/that/home/x"),
            ("$DATA/x", home, "write the absolute path, file:///path/it/stands/for/x"),
        ] {
            let hint = unexpanded(rest, home).unwrap_or_else(|| panic!("{rest}: no hint"));
            assert!(
                hint.contains("is not expanded in a store URL") && hint.contains(instead),
                "{rest}: {hint}"
            );
            assert!(!hint.contains("./~") && !hint.contains("/~/"), "{rest}: {hint}");
        }
        // An empty or relative HOME is not a path to suggest.
        for home in ["", "ops"] {
            let hint = unexpanded("~/x", Some(std::ffi::OsStr::new(home))).unwrap();
            assert!(
                hint.contains("file:///path/of/your/home/x"),
                "{home:?}: {hint}"
            );
        }
        for fine in [
            "/var/lib/ckpt",
            "./ckpt",
            ".spotbatch",
            "/var/~x",
            "localhost/var",
        ] {
            assert_eq!(unexpanded(fine, home), None, "{fine}");
        }
    }

    #[tokio::test]
    async fn a_file_url_under_a_tilde_is_refused_before_anything_is_created() {
        for url in ["file://~/ckpt", "file:///~/ckpt", "file://./~/ckpt"] {
            let err = open_store(url).await.expect_err(url);
            assert!(matches!(err, Error::Config(_)), "{url}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains(url)
                    && text.contains("`~` is not expanded")
                    && text.contains("file://./ckpt"),
                "{url}: {text}"
            );
            let hint = &text[text.find("write the absolute path").expect(&text)..];
            assert!(!hint.contains('~'), "{url}: {hint}");
            assert!(check_store_url(url).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn an_existing_store_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        for (path, says) in [
            (
                missing.clone(),
                format!("the directory {} does not exist", missing.display()),
            ),
            (
                file.clone(),
                format!("{} is a file, not a directory", file.display()),
            ),
            (
                file.join("x"),
                format!(
                    "{} lies under {}, which is a file",
                    file.join("x").display(),
                    file.display()
                ),
            ),
        ] {
            let url = format!("file://{}", path.display());
            let err = open_existing_store(&url).await.expect_err(&url);
            let text = err.to_string();
            assert!(
                matches!(
                    &err,
                    Error::Store(crate::StoreError::Refused {
                        cause: crate::Refusal::Location,
                        ..
                    })
                ),
                "{url}: {err:?}"
            );
            assert!(text.contains(&url) && text.contains(&says), "{url}: {text}");
            assert!(!missing.exists(), "{url}: created the directory");
            // A run's opener takes it as a store to create.
            assert!(open_store(&url).await.is_ok(), "{url}");
        }
        let url = format!("file://{}", dir.path().display());
        assert!(open_existing_store(&url).await.is_ok());
        assert_eq!(location("memory://").await, "memory://");
        assert!(open_existing_store("memory://").await.is_ok());
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
