//! Object names for job keys, and the percent-encoding of metadata values.

use crate::JobKey;

/// Every checkpoint object's name ends with this.
pub(crate) const SUFFIX: &str = ".ckpt";

/// Encoded names longer than this are cut and completed with a hash. With the
/// suffix, a name is at most 205 bytes: within the 255 bytes per `/`-separated
/// segment that S3-compatible servers on file systems allow (MinIO, SeaweedFS),
/// and leaving 819 bytes of AWS's 1024-byte key limit for the prefix.
pub(crate) const MAX_NAME: usize = 200;

/// The longest prefix accepted (bytes, trailing `/` included).
pub(crate) const MAX_PREFIX: usize = 1024 - MAX_NAME - SUFFIX.len();

/// The object name (without prefix or suffix) for a job key.
///
/// [`JobKey::encoded`], as the file store names its files, with a longer
/// limit: [`MAX_NAME`] bytes.
pub(crate) fn object_name(key: &JobKey) -> String {
    key.encoded(MAX_NAME)
}

/// Percent-encodes text for an `x-amz-meta-*` header: ASCII letters, digits
/// and `-_.~` are kept, every other byte becomes `%XX`.
pub(crate) fn encode_meta(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            push_escape(&mut out, b);
        }
    }
    out
}

/// Reverses [`encode_meta`]; `None` when the text is not valid encoding or not UTF-8.
pub(crate) fn decode_meta(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> JobKey {
        JobKey::new(s).unwrap()
    }

    #[test]
    fn names_are_safe_and_match_the_file_store_rule() {
        assert_eq!(
            object_name(&key("../../etc/passwd")),
            "%2E.%2F..%2Fetc%2Fpasswd"
        );
        assert_eq!(object_name(&key("squares-v2_a.b")), "squares-v2_a.b");
        assert_eq!(object_name(&key("etl/2026-11-24")), "etl%2F2026-11-24");
        assert_eq!(object_name(&key("é")), "%C3%A9");
        for k in ["a/b", "..", ".", "/abs", "sp ace", "ü"] {
            let name = object_name(&key(k));
            assert!(
                !name.contains('/') && !name.starts_with('.'),
                "{k:?} -> {name}"
            );
        }
    }

    #[test]
    fn long_keys_are_hashed_within_the_limit() {
        let longest = "ü".repeat(JobKey::MAX_LEN / 2);
        assert_eq!(longest.len(), JobKey::MAX_LEN);
        let name = object_name(&key(&longest));
        assert!(name.len() <= MAX_NAME, "{} bytes", name.len());
        assert!(name.starts_with("%C3%BC") && name.contains('~'), "{name}");
        // Kept whole up to the limit.
        let fits = "k".repeat(MAX_NAME);
        assert_eq!(object_name(&key(&fits)), fits);
        assert_ne!(object_name(&key(&format!("{fits}k"))), fits);
    }

    #[test]
    fn distinct_keys_get_distinct_names() {
        let long_a = format!("{}a", "x".repeat(600));
        let long_b = format!("{}b", "x".repeat(600));
        let keys = ["a/b", "a%2Fb", "A/b", "é", "e", &long_a, &long_b];
        let mut names: Vec<_> = keys.iter().map(|k| object_name(&key(k))).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), keys.len());
    }

    #[test]
    fn metadata_encoding_round_trips() {
        for text in ["", "SIGTERM", "failed: boom ✗ 100%", "a/b c\td", "%zz"] {
            let encoded = encode_meta(text);
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{encoded}");
            assert_eq!(decode_meta(&encoded).as_deref(), Some(text));
        }
        assert_eq!(decode_meta("%"), None);
        assert_eq!(decode_meta("%zz"), None);
        assert_eq!(decode_meta("%C3"), None, "not UTF-8");
    }
}
