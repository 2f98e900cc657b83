//! Job keys: the name a job's checkpoint is stored under.

use std::fmt;
use std::str::FromStr;

/// The name a job's checkpoint is stored under, e.g. `"nightly-etl/2026-11-24"`.
///
/// A key is 1 to [`JobKey::MAX_LEN`] bytes of UTF-8 with no control characters.
/// Any other text is allowed (slashes, dots, spaces, non-ASCII): each store
/// encodes keys so that no key can name a place outside the store, so
/// `"../../etc/passwd"` is an ordinary, harmless key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey(String);

impl JobKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Checks and wraps a key.
    ///
    /// # Errors
    ///
    /// [`InvalidKey`] when the key is empty, longer than [`JobKey::MAX_LEN`]
    /// bytes, or contains a control character.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key = key.into();
        let reason = if key.is_empty() {
            Some("a job key cannot be empty")
        } else if key.len() > Self::MAX_LEN {
            Some("a job key is at most 1024 bytes")
        } else if key.chars().any(char::is_control) {
            Some("a job key cannot contain control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidKey {
                key: shorten(&key),
                reason,
            }),
            None => Ok(Self(key)),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as a name that is safe as a file name or an object name
    /// segment, at most `max_len` bytes (`max_len` ≥ 80); stores name their
    /// entries with it.
    ///
    /// ASCII letters, digits, `-` and `_` are kept, `.` is kept except first,
    /// every other byte becomes `%XX`: a name never holds `/`, never starts
    /// with `.`, and no two keys share one. A name over `max_len` bytes is cut
    /// (never inside an escape) and completed with `~` and the UUIDv5 of the
    /// whole key. The rule is part of where stores keep checkpoints: it never
    /// changes.
    pub fn encoded(&self, max_len: usize) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(self.0.len());
        for (i, b) in self.0.bytes().enumerate() {
            let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
            if keep {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
        }
        if out.len() <= max_len {
            return out;
        }
        let mut cut = max_len.max(80) - 40;
        // Never split a %XX escape.
        while out.as_bytes()[cut - 1] == b'%' || out.as_bytes()[cut - 2] == b'%' {
            cut -= 1;
        }
        let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, self.0.as_bytes());
        format!("{}~{}", &out[..cut], digest.simple())
    }

    /// The key as log lines show it: whole up to [`SHOWN`] characters, longer
    /// ones cut there and completed with `…` and their length in bytes
    /// (`etl/aaaa…(1024 bytes)`), so that one long key cannot flood a log.
    pub(crate) fn short(&self) -> impl fmt::Display + '_ {
        short(&self.0)
    }
}

/// How many characters of a long key log lines and [`InvalidKey`] show.
const SHOWN: usize = 64;

/// `key` as log lines show it (see [`JobKey::short`]), for keys not yet checked.
pub(crate) fn short(key: &str) -> impl fmt::Display + '_ {
    Short(key)
}

struct Short<'a>(&'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN) {
            Some((cut, _)) => write!(f, "{}…({} bytes)", &self.0[..cut], self.0.len()),
            None => f.write_str(self.0),
        }
    }
}

fn shorten(key: &str) -> String {
    Short(key).to_string()
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for JobKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for JobKey {
    type Error = InvalidKey;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for JobKey {
    type Error = InvalidKey;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// A job key that [`JobKey::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job key {key:?}: {reason}")]
pub struct InvalidKey {
    key: String,
    reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unusual_keys() {
        for key in [
            "squares",
            "etl/2026-11-24",
            "../../etc/passwd",
            "données ✓",
            " ",
        ] {
            assert_eq!(JobKey::new(key).unwrap().as_str(), key);
        }
        let longest = "k".repeat(JobKey::MAX_LEN);
        assert!(JobKey::new(longest).is_ok());
    }

    #[test]
    fn refuses_empty_too_long_and_control_characters() {
        let empty = JobKey::new("").unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let long = JobKey::new("k".repeat(JobKey::MAX_LEN + 1)).unwrap_err();
        assert!(long.to_string().contains("1024"), "{long}");
        assert!(long.to_string().len() < 200, "the message shortens the key");
        let control = JobKey::new("a\nb").unwrap_err();
        assert!(control.to_string().contains("control"), "{control}");
        assert!(JobKey::new("nul\0").is_err());
    }

    #[test]
    fn log_lines_cut_long_keys() {
        let key = JobKey::new("k".repeat(JobKey::MAX_LEN)).unwrap();
        assert_eq!(
            key.short().to_string(),
            format!("{}…(1024 bytes)", "k".repeat(64))
        );
        let key = JobKey::new("é".repeat(64)).unwrap();
        assert_eq!(key.short().to_string(), "é".repeat(64));
        let key = JobKey::new("é".repeat(65)).unwrap();
        assert_eq!(
            key.short().to_string(),
            format!("{}…(130 bytes)", "é".repeat(64))
        );
    }
}
