//! Output files whose length rides in the checkpoint, for exactly-once file
//! output: bytes and lines ([`FileSink`]), CSV records ([`CsvSink`]), JSON
//! Lines ([`JsonLinesSink`]).
//!
//! ```
//! use spotbatch::sink::FileSink;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("out.txt");
//! let mut out = FileSink::open(&path).await?;
//! out.write_line("covered by the checkpoint").await?;
//! out.flush().await?; // in Job::flush, before the checkpoint is saved
//! let checkpointed = out.len(); // in the job's state, saved with the checkpoint
//!
//! out.write_line("written after it, then the process was killed").await?;
//! out.flush().await?;
//!
//! // The next run, in Job::resume:
//! let mut out = FileSink::open(&path).await?;
//! out.truncate(checkpointed).await?;
//! assert_eq!(std::fs::read_to_string(&path)?, "covered by the checkpoint\n");
//! # Ok(()) }
//! ```

mod lines;

pub use lines::{CsvSink, JsonLinesSink};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes buffered before they are written out (still not durable until [`FileSink::flush`]).
const SPILL_AT: usize = 1 << 20;

/// An append-only output file that makes file output exactly-once across
/// kills, when its [`len`](Self::len) is saved in the job's state.
///
/// The pattern:
///
/// 1. after writing a chunk's lines, copy [`len`](Self::len) into the state;
/// 2. in [`Job::flush`](crate::Job::flush), call [`flush`](Self::flush)
///    (write and `fsync`), so the checkpoint is saved only after the bytes it
///    covers are durable;
/// 3. in [`Job::resume`](crate::Job::resume), call [`truncate`](Self::truncate)
///    with the length from the state: whatever a killed run wrote past the
///    checkpoint is cut off, and the resumed run writes it again, once.
#[derive(Debug)]
pub struct FileSink {
    file: Arc<File>,
    path: PathBuf,
    buffer: Vec<u8>,
    /// Bytes written to the file (not necessarily synced).
    written: u64,
}

impl FileSink {
    /// Opens (or creates, `0644`) the file for appending, keeping its contents.
    /// Its directory is synced too, so a file it created survives a crash
    /// along with the bytes later flushed to it.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let (file, written) = blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&opened)?;
            let dir = match opened.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await
        .map_err(|e| with_path(e, "open", &path))?;
        Ok(Self {
            file: Arc::new(file),
            path,
            buffer: Vec::with_capacity(64 * 1024),
            written,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The output's length, buffered bytes included: what to save in the state.
    pub fn len(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes (buffered).
    ///
    /// # Errors
    ///
    /// The I/O error of writing out a full buffer.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= SPILL_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Appends a line and a `\n` (buffered).
    ///
    /// # Errors
    ///
    /// The I/O error of writing out a full buffer.
    pub async fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.buffer.reserve(line.len() + 1);
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
        if self.buffer.len() >= SPILL_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes the buffer out and `fsync`s the file: everything up to
    /// [`len`](Self::len) is durable when this returns `Ok`.
    ///
    /// # Errors
    ///
    /// The I/O error, with the path in its message.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.write_out().await?;
        let file = self.file.clone();
        blocking(move || file.sync_data())
            .await
            .map_err(|e| with_path(e, "fsync", &self.path))
    }

    /// Cuts the file back to `len` bytes (the length saved with the
    /// checkpoint) and syncs, dropping anything buffered.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] when the file is shorter than `len`:
    /// output the checkpoint covers is missing, so resuming would leave a hole
    /// (the message says to restore the file or start the job over).
    pub async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.buffer.clear();
        let file = self.file.clone();
        let path = self.path.clone();
        blocking(move || {
            let found = file.metadata()?.len();
            if found < len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {found} bytes but the checkpoint covers {len}: output was lost; \
                         restore the file, or start the job over \
                         (`spotbatch reset STORE_URL JOB`, or `Runner::restart()`)",
                        path.display()
                    ),
                ));
            }
            if found > len {
                file.set_len(len)?;
                file.sync_all()?;
            }
            Ok(())
        })
        .await?;
        self.written = len;
        Ok(())
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let file = self.file.clone();
        let offset = self.written;
        let (result, mut buffer) = blocking_owned(move || {
            let result = file.write_all_at(&buffer, offset);
            (result, buffer)
        })
        .await?;
        result.map_err(|e| with_path(e, "write", &self.path))?;
        self.written += buffer.len() as u64;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }
}

fn with_path(e: io::Error, operation: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot {operation} {}: {e}", path.display()),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

async fn blocking_owned<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn length_tracks_buffered_output_and_truncate_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut sink = FileSink::open(&path).await.unwrap();
        sink.write_line("one").await.unwrap();
        let covered = sink.len();
        assert_eq!(covered, 4);
        sink.flush().await.unwrap();
        sink.write_line("two, past the checkpoint").await.unwrap();
        sink.flush().await.unwrap();
        drop(sink);

        let mut resumed = FileSink::open(&path).await.unwrap();
        assert_eq!(resumed.len(), 29);
        resumed.truncate(covered).await.unwrap();
        resumed.write_line("two").await.unwrap();
        resumed.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }

    #[tokio::test]
    async fn large_writes_spill_and_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let mut sink = FileSink::open(&path).await.unwrap();
        let line = "x".repeat(999);
        for _ in 0..3000 {
            sink.write_line(&line).await.unwrap();
        }
        assert_eq!(sink.len(), 3_000_000);
        sink.flush().await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3_000_000);
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_checkpoint_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, "abc").unwrap();
        let mut sink = FileSink::open(&path).await.unwrap();
        let err = sink.truncate(10).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("short")
                && err.to_string().contains("covers 10")
                && err.to_string().contains("spotbatch reset"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }
}
