//! A store on the local file system (or EFS/NFS): one file per job.

mod leftovers;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::debug;

use super::{CheckpointStore, Listing, Refusal, StoreError};
use crate::checkpoint::Checkpoint;
use crate::key::JobKey;

const EXTENSION: &str = "ckpt";
/// Encoded names longer than this are shortened and completed with a hash,
/// keeping every file name well under the usual 255-byte limit.
const MAX_STEM: usize = 120;
/// After a key's first sweep, its saves sweep again at most this often: a
/// sweep reads the whole directory.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Checkpoints as files in one directory: `DIR/<encoded key>.ckpt`.
///
/// # Durability
///
/// A save writes a temporary file in the same directory, `fsync`s it, renames
/// it over the old checkpoint and `fsync`s the directory, so after a crash the
/// file holds either the old checkpoint or the new one, whole.
///
/// # Compare-and-swap
///
/// A save or delete takes an exclusive `flock` on `DIR/<encoded key>.lock`,
/// reads the stored version, compares, writes and releases. This serialises
/// writers across threads and processes on one machine; on NFS (EFS) it relies
/// on the server's NFSv4 locks. Lock files are left in place (removing them
/// would race with the next writer); they are empty.
///
/// # Temporary files
///
/// A save's temporary file is named after the checkpoint and its writer:
/// `.<encoded key>.ckpt.pid<pid>-ns<n>-boot<b>-t<t>.<32 hex random>.tmp`,
/// where `pid` is the writing process, `n` the inode of its PID namespace,
/// `b` the first 16 hex digits of the kernel's boot id
/// (`/proc/sys/kernel/random/boot_id`: one per boot of one machine) and `t`
/// the process's start time in clock ticks since boot (`/proc/<pid>/stat`).
/// A kill between its creation and the rename leaves it behind. It is
/// removed later, while holding the key's lock (so no writer that takes the
/// lock is in the middle of a save), by:
///
/// - the first load of the key by this store value (or a clone), which is a
///   runner's start, unless a save of the key holds the lock right then;
/// - the first save of the key by this store value, then one save a minute
///   at most (a sweep reads the whole directory), and every delete;
/// - [`list`](CheckpointStore::list), for every key, without waiting for a
///   lock that a save holds.
///
/// A temporary file is removed when:
///
/// - its writer ran on this boot of this machine in this PID namespace, and
///   that process (pid *and* start time, so a reused pid is not mistaken for
///   it) is gone, or is a zombie;
/// - otherwise (another host sharing the directory over NFS/EFS, another
///   container, a platform without `/proc`, a name that does not record its
///   writer), when its modification time is more than 1 hour old: far longer
///   than a save takes, and a writer that still held it would find its
///   rename failing and the old checkpoint whole, never a torn one.
///
/// A temporary file whose writer is running is never removed. Liveness is
/// read from `/proc` and `kill(pid, 0)`: where `/proc` is mounted with
/// `hidepid`, a writer hidden from this user cannot be checked, and its file
/// goes by age. [`list`](CheckpointStore::list)
/// reports the temporary files it leaves, with why, as
/// [`Listing::Leftover`], after the checkpoints.
///
/// # Key encoding
///
/// ASCII letters, digits, `-` and `_` are kept; `.` is kept except first;
/// every other byte becomes `%XX`. No key can therefore contain a path
/// separator or be `.`/`..`, so no key escapes the directory. A name that
/// would exceed 120 bytes is cut and completed with `~` and a UUIDv5 of the
/// whole key; the key itself is always read back from inside the file.
///
/// # Permissions
///
/// The directory is created `0700` and checkpoint files `0600`.
///
/// # Errors
///
/// An I/O error names the file or directory it happened at. One that
/// retrying cannot fix (a path through a file, a read-only file system,
/// permission denied, a full disk: the table is on
/// [`Refusal::from_io_error`]) is [`StoreError::Refused`], on which the runner
/// stops at once; any other is [`StoreError::Io`], which it retries. A save
/// refused while writing its temporary file removes that file: the old
/// checkpoint stays whole.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    /// When this store (or a clone) last swept each stem's temporary files.
    swept: Arc<Mutex<HashMap<String, Instant>>>,
}

impl FileStore {
    /// A store in `dir`. Nothing touches the disk until the first save, which
    /// creates the directory (and its parents) if needed. Until then the
    /// store is empty: a load finds no checkpoint and a list lists nothing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            swept: Arc::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `key`'s checkpoint.
    pub fn path_of(&self, key: &JobKey) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", file_stem(key)))
    }

    /// Checks that the directory exists and can be listed, without
    /// creating it: [`open_existing_store`](crate::open_existing_store)'s
    /// test, so that a misspelt directory is not read as an empty store.
    ///
    /// # Errors
    ///
    /// [`StoreError::Refused`] for operation `open the store`, naming the directory:
    /// [`Refusal::Location`] when it does not exist, is a file, or lies
    /// under a file; [`Refusal::Permission`] when it cannot be read.
    /// [`StoreError::Io`] for another I/O error.
    pub(crate) async fn check_dir(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.check_dir_blocking())
            .await
            .map_err(|e| StoreError::Io {
                store: self.location(),
                key: String::new(),
                operation: "open the store",
                source: e.into(),
            })?
    }

    fn check_dir_blocking(&self) -> Result<(), StoreError> {
        let refused = |message: String| StoreError::Refused {
            store: self.location(),
            key: String::new(),
            operation: "open the store",
            cause: Refusal::Location,
            source: message.into(),
        };
        let shown = shown_path(&self.dir);
        match fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(refused(format!("{shown} is a file, not a directory"))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(refused(format!("the directory {shown} does not exist")))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                let message = match self.dir.ancestors().skip(1).find(|a| a.is_file()) {
                    Some(file) => format!(
                        "{shown} lies under {}, which is a file, not a directory",
                        shown_path(file)
                    ),
                    None => format!("{shown}: {e}"),
                };
                return Err(refused(message));
            }
            Err(e) => {
                return Err(fs_error(
                    self.location(),
                    String::new(),
                    "open the store",
                    AtPath::new(&self.dir, e),
                ))
            }
        }
        fs::read_dir(&self.dir).map(drop).map_err(|e| {
            fs_error(
                self.location(),
                String::new(),
                "open the store",
                AtPath::new(&self.dir, e),
            )
        })
    }

    /// The error for `operation` on `key` failing with `error`:
    /// [`StoreError::Refused`] when retrying cannot help
    /// ([`Refusal::from_io_error`]), else [`StoreError::Io`].
    fn io_error(&self, key: &JobKey, operation: &'static str, error: AtPath) -> StoreError {
        fs_error(self.location(), key.to_string(), operation, error)
    }

    /// The checkpoint stored in `path`, read to compare its version.
    fn read_stored(&self, key: &JobKey, path: &Path) -> Result<Option<Checkpoint>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => self.decode(key, path, &bytes).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(key, "read", AtPath::new(path, e))),
        }
    }

    /// The checkpoint in `path`'s bytes, which must be `key`'s.
    fn decode(&self, key: &JobKey, path: &Path, bytes: &[u8]) -> Result<Checkpoint, StoreError> {
        Checkpoint::decode_for(key, bytes).map_err(|reason| StoreError::Corrupt {
            store: self.location(),
            key: key.to_string(),
            path: path.display().to_string(),
            reason: Box::new(reason),
        })
    }

    /// Takes the key's lock, creating the directory and lock file if needed.
    fn lock(&self, key: &JobKey) -> Result<File, AtPath> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| AtPath::new(&self.dir, e))?;
        let stem = file_stem(key);
        let at_lock = |e| AtPath::new(self.dir.join(format!("{stem}.lock")), e);
        let lock = self.open_lock(&stem, true).map_err(at_lock)?;
        lock.lock().map_err(at_lock)?;
        Ok(lock)
    }

    /// The lock file of the key whose file stem is `stem`, not yet locked.
    fn open_lock(&self, stem: &str, create: bool) -> io::Result<File> {
        // Opened for writing: on NFS an exclusive lock needs it.
        OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(format!("{stem}.lock")))
    }

    /// Whether `stem` is due a sweep: this store never swept it, or (with
    /// `every`) not for that long.
    fn sweep_due(&self, stem: &str, every: Option<Duration>) -> bool {
        let swept = self.swept.lock().unwrap_or_else(PoisonError::into_inner);
        match (swept.get(stem), every) {
            (None, _) => true,
            (Some(last), Some(every)) => last.elapsed() >= every,
            (Some(_), None) => false,
        }
    }

    /// Records a sweep of `stem` now.
    fn swept_now(&self, stem: &str) {
        self.swept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stem.to_owned(), Instant::now());
    }

    /// Removes the stale temporary files of `stem`'s checkpoint; the caller
    /// holds its lock. Never fails: what stays is reported by `list`.
    fn sweep_locked(&self, stem: &str) {
        self.swept_now(stem);
        let names: Vec<String> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect(),
            Err(e) => {
                debug!(dir = %self.dir.display(), error = %e, "cannot look for temporary files");
                return;
            }
        };
        for kept in leftovers::sweep(&self.dir, stem, names.iter().map(String::as_str)) {
            debug!(path = %kept.path.display(), reason = %kept.reason, "temporary file left in place");
        }
    }

    /// Sweeps `stem`'s temporary files unless a save holds its lock (its
    /// store sweeps them) or no save ever took it (it left none).
    fn sweep_if_free(&self, stem: &str) {
        let Ok(lock) = self.open_lock(stem, false) else {
            return;
        };
        if lock.try_lock().is_ok() {
            self.sweep_locked(stem);
        }
    }

    fn check(
        &self,
        key: &JobKey,
        expected: Option<u64>,
        found: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        StoreError::unless_version(self, key, expected, found)
    }

    fn save_blocking(
        &self,
        key: &JobKey,
        bytes: &[u8],
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let _lock = self.lock(key).map_err(|e| self.io_error(key, "save", e))?;
        let stem = file_stem(key);
        if self.sweep_due(&stem, Some(SWEEP_EVERY)) {
            self.sweep_locked(&stem);
        }
        let path = self.path_of(key);
        let found = self.read_stored(key, &path)?;
        self.check(key, expected, found.as_ref())?;
        replace_durably(&self.dir, &path, bytes).map_err(|e| self.io_error(key, "save", e))
    }

    fn delete_blocking(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        let path = self.path_of(key);
        if !path.exists() {
            return Err(StoreError::NotFound {
                store: self.location(),
                key: key.to_string(),
            });
        }
        let _lock = self
            .lock(key)
            .map_err(|e| self.io_error(key, "delete", e))?;
        self.sweep_locked(&file_stem(key));
        match self.read_stored(key, &path)? {
            None => Err(StoreError::NotFound {
                store: self.location(),
                key: key.to_string(),
            }),
            Some(found) => {
                self.check(key, Some(expected), Some(&found))?;
                fs::remove_file(&path)
                    .map_err(|e| self.io_error(key, "delete", AtPath::new(&path, e)))?;
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| self.io_error(key, "delete", AtPath::new(&self.dir, e)))
            }
        }
    }

    fn list_blocking(&self) -> Result<Vec<Listing>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(fs_error(
                    self.location(),
                    String::new(),
                    "list",
                    AtPath::new(&self.dir, e),
                ))
            }
        };
        let mut out = Vec::new();
        // Temporary files by the stem of their checkpoint.
        let mut temps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Stems of the checkpoints.
        let mut stems = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            if let Some(name) = file_name.to_str() {
                if let Some(temp) = leftovers::parse(name) {
                    temps
                        .entry(temp.stem.to_owned())
                        .or_default()
                        .push(name.to_owned());
                    continue;
                }
            }
            let path = entry.path();
            let is_checkpoint = path.extension().is_some_and(|e| e == EXTENSION)
                && !entry.file_name().to_string_lossy().starts_with('.');
            if !is_checkpoint {
                continue;
            }
            let unreadable = |reason: String| Listing::Unreadable {
                key: path.display().to_string(),
                reason,
            };
            let listing = match fs::read(&path) {
                Ok(bytes) => match Checkpoint::decode(&bytes) {
                    // Another job's checkpoint, copied or renamed here by hand.
                    Ok(c) if self.path_of(&c.job) != path => unreadable(format!(
                        "holds the checkpoint of job {:?}, whose file is {}",
                        c.job.as_str(),
                        self.path_of(&c.job).display()
                    )),
                    Ok(c) => Listing::Checkpoint((&c).into()),
                    Err(e) => unreadable(e.to_string()),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => unreadable(e.to_string()),
            };
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                stems.push(stem.to_owned());
            }
            out.push(listing);
        }
        out.sort_by(|a, b| listing_key(a).cmp(listing_key(b)));
        // Those without a temporary file are as good as swept.
        for stem in stems.iter().filter(|s| !temps.contains_key(*s)) {
            self.swept_now(stem);
        }
        let mut left: Vec<Listing> = temps
            .iter()
            .flat_map(|(stem, names)| self.sweep_for_list(stem, names))
            .map(|kept| Listing::Leftover {
                name: kept.path.display().to_string(),
                reason: kept.reason,
            })
            .collect();
        left.sort_by(|a, b| listing_key(a).cmp(listing_key(b)));
        out.append(&mut left);
        Ok(out)
    }

    /// `list`'s sweep of `stem`'s temporary files `names`: under its lock if
    /// it is free at once, else they are all left, with why.
    fn sweep_for_list(&self, stem: &str, names: &[String]) -> Vec<leftovers::Kept> {
        let reason = match self.open_lock(stem, true).map(|lock| {
            let locked = lock.try_lock();
            (lock, locked)
        }) {
            Ok((_lock, Ok(()))) => {
                self.swept_now(stem);
                return leftovers::sweep(&self.dir, stem, names.iter().map(String::as_str));
            }
            Ok((_, Err(TryLockError::WouldBlock))) => {
                "a save of this job holds its lock right now (this may be that save's own file); checked again at the next save or list".to_owned()
            }
            Ok((_, Err(TryLockError::Error(e)))) | Err(e) => {
                format!("the job's lock could not be taken to check it: {e}")
            }
        };
        names
            .iter()
            .map(|name| leftovers::Kept {
                path: self.dir.join(name),
                reason: reason.clone(),
            })
            .collect()
    }
}

fn listing_key(l: &Listing) -> &str {
    match l {
        Listing::Checkpoint(s) => s.job.as_str(),
        Listing::Unreadable { key, .. } => key,
        Listing::Leftover { name, .. } => name,
    }
}

/// Writes `bytes` to a temporary file next to `path` (named as the type's
/// docs say), fsyncs it, renames it over `path` and fsyncs the directory.
/// The directory fsync lives here so it cannot be forgotten at a call site.
fn replace_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), AtPath> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(leftovers::temp_name(&name));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AtPath::new(&tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| AtPath::new(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| AtPath::new(path, e))
    })();
    if let Err(e) = written {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AtPath::new(dir, e))
}

/// An I/O error and the path it happened at.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
struct AtPath {
    path: PathBuf,
    error: io::Error,
}

impl AtPath {
    fn new(path: impl Into<PathBuf>, error: io::Error) -> Self {
        Self {
            path: path.into(),
            error,
        }
    }
}

/// `path` for a message: a relative one made absolute (from the working
/// directory), so that the message says where it was looked for.
fn shown_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `operation` on `store`'s `key` (empty: the whole store) failing with
/// `error`: [`StoreError::Refused`] when retrying cannot help
/// ([`Refusal::from_io_error`]), else [`StoreError::Io`].
fn fs_error(store: String, key: String, operation: &'static str, error: AtPath) -> StoreError {
    match Refusal::from_io_error(&error.error) {
        Some(cause) => StoreError::Refused {
            store,
            key,
            operation,
            cause,
            source: error.into(),
        },
        None => StoreError::Io {
            store,
            key,
            operation,
            source: error.into(),
        },
    }
}

/// The file name (without extension) for a key; see the type's docs.
pub(crate) fn file_stem(key: &JobKey) -> String {
    key.encoded(MAX_STEM)
}

#[async_trait]
impl CheckpointStore for FileStore {
    fn location(&self) -> String {
        let dir = self.dir.display().to_string();
        if dir.starts_with('/') {
            format!("file://{dir}")
        } else {
            format!("file://{dir} (relative)")
        }
    }

    async fn load(&self, key: &JobKey) -> Result<Option<Checkpoint>, StoreError> {
        let stem = file_stem(key);
        if self.sweep_due(&stem, None) {
            let store = self.clone();
            // Best effort: a failed sweep fails no load.
            let _ = tokio::task::spawn_blocking(move || store.sweep_if_free(&stem)).await;
        }
        let path = self.path_of(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(key, "load", AtPath::new(&path, e))),
        };
        self.decode(key, &path, &bytes).map(Some)
    }

    async fn save(&self, checkpoint: &Checkpoint, expected: Option<u64>) -> Result<(), StoreError> {
        let store = self.clone();
        let key = checkpoint.job.clone();
        let bytes = checkpoint.encode();
        tokio::task::spawn_blocking(move || store.save_blocking(&key, &bytes, expected))
            .await
            .map_err(|e| {
                let error = AtPath::new(self.path_of(&checkpoint.job), io::Error::other(e));
                self.io_error(&checkpoint.job, "save", error)
            })?
    }

    async fn list(&self) -> Result<Vec<Listing>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.list_blocking())
            .await
            .map_err(|e| StoreError::Io {
                store: self.location(),
                key: String::new(),
                operation: "list",
                source: e.into(),
            })?
    }

    async fn delete(&self, key: &JobKey, expected: u64) -> Result<(), StoreError> {
        let store = self.clone();
        let owned = key.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(&owned, expected))
            .await
            .map_err(|e| {
                self.io_error(
                    key,
                    "delete",
                    AtPath::new(self.path_of(key), io::Error::other(e)),
                )
            })?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::checkpoint::Writer;

    fn key(s: &str) -> JobKey {
        JobKey::new(s).unwrap()
    }

    use crate::conformance::{Capabilities, Corrupter};
    use crate::BoxError;

    /// Damages entries by writing their files directly.
    struct Files(FileStore);

    #[async_trait]
    impl Corrupter for Files {
        async fn stored(&self, key: &JobKey) -> Result<Option<Vec<u8>>, BoxError> {
            match fs::read(self.0.path_of(key)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        }

        async fn overwrite(&self, key: &JobKey, bytes: &[u8]) -> Result<(), BoxError> {
            Ok(fs::write(self.0.path_of(key), bytes)?)
        }
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("ckpt"));
        let files = Files(store.clone());
        let skipped =
            crate::conformance::run_all(Arc::new(store), Capabilities::new().corrupter(&files))
                .await;
        assert!(skipped.is_empty(), "{skipped:?}");
    }

    #[test]
    fn no_key_escapes_the_directory() {
        let store = FileStore::new("/srv/ckpt");
        let long_unicode = "é/".repeat(340);
        for k in [
            "../../etc/passwd",
            "..",
            ".",
            "/abs",
            "a/b",
            "a\\b",
            ".hidden",
            "ü",
            &long_unicode,
        ] {
            let path = store.path_of(&key(k));
            assert_eq!(
                path.parent(),
                Some(Path::new("/srv/ckpt")),
                "{k:?} -> {path:?}"
            );
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(!name.starts_with('.'), "{k:?} -> {name}");
            assert!(name.len() <= MAX_STEM + 5, "{k:?} -> {} bytes", name.len());
        }
        assert_eq!(
            file_stem(&key("../../etc/passwd")),
            "%2E.%2F..%2Fetc%2Fpasswd"
        );
        assert_eq!(file_stem(&key("squares-v2_a.b")), "squares-v2_a.b");
    }

    #[test]
    fn distinct_keys_get_distinct_files() {
        let long_a = format!("{}a", "x".repeat(500));
        let long_b = format!("{}b", "x".repeat(500));
        let keys = ["a/b", "a%2Fb", "A/b", "é", "e", &long_a, &long_b];
        let mut stems: Vec<_> = keys.iter().map(|k| file_stem(&key(k))).collect();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), keys.len());
    }

    #[tokio::test]
    async fn files_are_private_and_no_temporaries_remain() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("ckpt"));
        let mut ckpt = Checkpoint::new(key("../../etc/passwd"), Writer::this_process());
        store.save(&ckpt, None).await.unwrap();
        ckpt.version = 2;
        store.save(&ckpt, Some(1)).await.unwrap();

        let dir_mode = fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let path = store.path_of(&ckpt.job);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert!(!dir.path().join("etc").exists());
    }

    /// A temporary file of `key` whose name does not record its writer,
    /// last modified `age` ago: removable only once old.
    fn anonymous_temp(store: &FileStore, key: &JobKey, age: Duration) -> PathBuf {
        let path = store.dir().join(format!(
            ".{}.{EXTENSION}.{}.tmp",
            file_stem(key),
            uuid::Uuid::new_v4().simple()
        ));
        let file = File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[tokio::test]
    async fn saves_deletes_first_loads_and_lists_remove_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let job = key("job");
        let stale = || anonymous_temp(&store, &job, leftovers::STALE_AFTER * 2);
        let mut ckpt = Checkpoint::new(job.clone(), Writer::this_process());
        store.save(&ckpt, None).await.unwrap();
        // This process's own name: a live writer's.
        let live = store.dir().join(leftovers::temp_name(&format!(
            "{}.{EXTENSION}",
            file_stem(&job)
        )));
        File::create(&live).unwrap();
        let young = anonymous_temp(&store, &job, Duration::ZERO);
        let other_job = anonymous_temp(&store, &key("other"), leftovers::STALE_AFTER * 2);

        // The first save swept; the next ones sweep once a minute.
        let t = stale();
        ckpt.version = 2;
        store.save(&ckpt, Some(1)).await.unwrap();
        assert!(t.exists(), "a save swept again within a minute");
        for last in store.swept.lock().unwrap().values_mut() {
            *last -= SWEEP_EVERY;
        }
        ckpt.version = 3;
        store.save(&ckpt, Some(2)).await.unwrap();
        assert!(!t.exists(), "a save kept a stale temporary file");
        assert!(other_job.exists(), "a save of one job swept another's");
        let t = stale();
        ckpt.version = 4;
        FileStore::new(dir.path())
            .save(&ckpt, Some(3))
            .await
            .unwrap();
        assert!(!t.exists(), "a first save kept a stale temporary file");

        let t = stale();
        let fresh = FileStore::new(dir.path());
        assert!(fresh.load(&job).await.unwrap().is_some());
        assert!(!t.exists(), "a first load kept a stale temporary file");
        let t = stale();
        fresh.clone().load(&job).await.unwrap();
        assert!(t.exists(), "a second load swept again");

        let listed = fresh.list().await.unwrap();
        assert!(!t.exists(), "list kept a stale temporary file");
        assert!(!other_job.exists(), "list kept a stale temporary file");
        assert!(
            matches!(&listed[0], Listing::Checkpoint(s) if s.job == job),
            "{listed:?}"
        );
        let left: Vec<(&String, &String)> = listed[1..]
            .iter()
            .map(|l| match l {
                Listing::Leftover { name, reason } => (name, reason),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(left.len(), 2, "{listed:?}");
        let reason_of = |p: &Path| {
            left.iter()
                .find(|(n, _)| n.as_str() == p.display().to_string())
                .unwrap_or_else(|| panic!("{} not listed: {listed:?}", p.display()))
                .1
        };
        assert!(
            reason_of(&live).contains("is running on this host"),
            "{listed:?}"
        );
        assert!(
            reason_of(&young).contains("may still be saving"),
            "{listed:?}"
        );

        // A save in progress holds the lock: load and list leave its files alone.
        let held = store.lock(&job).unwrap();
        let t = stale();
        FileStore::new(dir.path()).load(&job).await.unwrap();
        assert!(t.exists(), "a first load swept under a held lock");
        let listed = store.list().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|l| matches!(l, Listing::Leftover { name, reason }
                if *name == t.display().to_string() && reason.contains("holds its lock"))),
            "{listed:?}"
        );
        drop(held);
        store.delete(&job, 4).await.unwrap();
        assert!(!t.exists(), "a delete kept a stale temporary file");
        assert!(live.exists() && young.exists());
    }

    #[tokio::test]
    async fn corrupt_file_is_named_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let ckpt = Checkpoint::new(key("job"), Writer::this_process());
        store.save(&ckpt, None).await.unwrap();
        let path = store.path_of(&ckpt.job);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        fs::write(&path, &bytes).unwrap();

        let err = store.load(&ckpt.job).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("\"job\"") && text.contains(&path.display().to_string()),
            "{text}"
        );
        assert!(text.contains("checksum"), "{text}");

        let mut next = ckpt.clone();
        next.version = 2;
        assert!(matches!(
            store.save(&next, Some(1)).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "the corrupt file was changed"
        );
        let listed = store.list().await.unwrap();
        assert!(
            matches!(&listed[..], [Listing::Unreadable { .. }]),
            "{listed:?}"
        );
    }

    #[tokio::test]
    async fn a_file_holding_another_jobs_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let other = Checkpoint::new(key("other"), Writer::this_process());
        store.save(&other, None).await.unwrap();
        fs::rename(store.path_of(&other.job), store.path_of(&key("mine"))).unwrap();
        let err = store.load(&key("mine")).await.unwrap_err();
        assert!(
            err.to_string().contains("belongs to job \"other\""),
            "{err}"
        );
    }
}
