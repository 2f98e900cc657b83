//! Why a store refused an operation for good: the cause of
//! [`StoreError::Refused`](super::StoreError::Refused), and how each store's
//! errors sort into retry-worthy and not.

use std::io;

/// Why a store refused an operation in a way that retrying cannot fix: what
/// a person must change before the job can run.
///
/// The runner never retries such an error: it records the failure on the
/// last checkpoint where the store still takes writes, and exits with
/// [`ExitCodes::store_refused`](crate::ExitCodes::store_refused).
/// Each store's docs say which of its errors give which cause.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The store's place does not exist or cannot hold checkpoints: a path
    /// through a file that is not a directory, a name too long, a symlink
    /// loop; a bucket, database, schema or table that does not exist.
    Location,
    /// Access denied: the credentials are refused (unknown key, bad
    /// signature, failed login) or grant too little (file permissions, an
    /// IAM policy, a missing SQL privilege).
    Permission,
    /// The store takes no writes: a read-only file system, a database in a
    /// read-only transaction or on a standby.
    ReadOnly,
    /// No space left: a full disk, a disk quota, a file size limit, a
    /// database server out of disk.
    Full,
    /// The store refused the request or its data as invalid: a value out of
    /// range or that does not fit a column, a constraint or trigger that
    /// rejects the row, a statement or request the server does not accept.
    Rejected,
}

impl std::fmt::Display for Refusal {
    /// What to fix, for people.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Location => {
                "the store's location does not exist or cannot hold checkpoints: check the store URL"
            }
            Refusal::Permission => {
                "access denied: check the credentials and the permissions they grant"
            }
            Refusal::ReadOnly => "the store is read-only: give the job a writable store",
            Refusal::Full => "the store is out of space: free some, or raise its quota",
            Refusal::Rejected => {
                "the store rejected the request as invalid: check the store's schema, constraints and settings"
            }
        })
    }
}

impl Refusal {
    /// The refusal an I/O error of a local or network file system means, or
    /// `None` when retrying may help (`EIO`, `ESTALE`, `ETIMEDOUT`, `EINTR`,
    /// a file that vanished while the directory was read…).
    ///
    /// | errno | refusal |
    /// |---|---|
    /// | `ENOTDIR`, `EISDIR`, `ELOOP`, `ENAMETOOLONG` | [`Location`](Self::Location) |
    /// | `EACCES`, `EPERM` | [`Permission`](Self::Permission) |
    /// | `EROFS` | [`ReadOnly`](Self::ReadOnly) |
    /// | `ENOSPC`, `EDQUOT`, `EFBIG` | [`Full`](Self::Full) |
    ///
    /// For a store kept in files; see [`errno(3)`](https://man7.org/linux/man-pages/man3/errno.3.html).
    pub fn from_io_error(error: &io::Error) -> Option<Self> {
        match error.raw_os_error()? {
            libc::ENOTDIR | libc::EISDIR | libc::ELOOP | libc::ENAMETOOLONG => {
                Some(Refusal::Location)
            }
            libc::EACCES | libc::EPERM => Some(Refusal::Permission),
            libc::EROFS => Some(Refusal::ReadOnly),
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Some(Refusal::Full),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_retrying_cannot_fix_are_refusals_and_the_others_are_not() {
        for (errno, refusal) in [
            (libc::ENOTDIR, Some(Refusal::Location)),
            (libc::EISDIR, Some(Refusal::Location)),
            (libc::ELOOP, Some(Refusal::Location)),
            (libc::ENAMETOOLONG, Some(Refusal::Location)),
            (libc::EACCES, Some(Refusal::Permission)),
            (libc::EPERM, Some(Refusal::Permission)),
            (libc::EROFS, Some(Refusal::ReadOnly)),
            (libc::ENOSPC, Some(Refusal::Full)),
            (libc::EDQUOT, Some(Refusal::Full)),
            (libc::EFBIG, Some(Refusal::Full)),
            (libc::EIO, None),
            (libc::ESTALE, None),
            (libc::ETIMEDOUT, None),
            (libc::EINTR, None),
            (libc::ENOENT, None),
        ] {
            let error = io::Error::from_raw_os_error(errno);
            assert_eq!(Refusal::from_io_error(&error), refusal, "{error}");
        }
        let without_errno = io::Error::other("a task panicked");
        assert_eq!(Refusal::from_io_error(&without_errno), None);
    }
}
