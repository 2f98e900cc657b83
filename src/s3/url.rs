//! `s3://bucket/prefix` URLs.

use crate::Error;

use crate::s3::names::MAX_PREFIX;

/// A parsed `s3://bucket/prefix` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Url {
    pub(crate) bucket: String,
    /// Empty, or ending with `/`.
    pub(crate) prefix: String,
}

/// Parses `s3://bucket` or `s3://bucket/prefix[/]`.
///
/// # Errors
///
/// [`Error::Config`] naming the URL and what is wrong with it.
pub(crate) fn parse(url: &str) -> Result<S3Url, Error> {
    let bad = |reason: &str| {
        Error::Config(format!(
            "bad S3 store URL {:?}: {reason}",
            crate::store::redact_url(url)
        ))
    };
    let (bucket, prefix) = split(url, "s3://bucket or s3://bucket/prefix").map_err(|r| bad(&r))?;
    let prefix = normalize_prefix(prefix).map_err(|reason| bad(&reason))?;
    Ok(S3Url {
        bucket: bucket.to_owned(),
        prefix,
    })
}

/// Parses `s3://bucket/rest` into the bucket and `rest` as it is (an object
/// key, or a listing's prefix), for the sinks and sources: `what` names the
/// URL in errors (`"output"`), `expected` its form (`"s3://bucket/key"`).
/// An empty `rest` is refused when `rest_required`.
///
/// # Errors
///
/// [`Error::Config`] naming the URL and what is wrong with it.
pub(crate) fn parse_location(
    url: &str,
    what: &str,
    expected: &str,
    rest_required: bool,
) -> Result<(String, String), Error> {
    let bad = |reason: &str| {
        Error::Config(format!(
            "bad S3 {what} URL {:?}: {reason}",
            crate::store::redact_url(url)
        ))
    };
    let (bucket, rest) = split(url, expected).map_err(|r| bad(&r))?;
    if rest_required && rest.is_empty() {
        return Err(bad(&format!("the key is missing: expected {expected}")));
    }
    if rest.len() > 1024 {
        return Err(bad(&format!(
            "the key is {} bytes; S3 keys are at most 1024",
            rest.len()
        )));
    }
    Ok((bucket.to_owned(), rest.to_owned()))
}

/// Splits `s3://bucket/rest` after checking the scheme, that it carries no
/// credentials, query or fragment, and the bucket name.
fn split<'a>(url: &'a str, expected: &str) -> Result<(&'a str, &'a str), String> {
    let rest = url
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("s3://"))
        .map(|_| &url[5..])
        .ok_or_else(|| format!("expected {expected}"))?;
    if rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(
            "s3:// URLs take no credentials; they come from the AWS environment \
             (the task role, AWS_PROFILE, AWS_ACCESS_KEY_ID…)"
                .into(),
        );
    }
    if rest.contains(['?', '#']) {
        return Err(
            "s3:// URLs take no query or fragment; set the endpoint, path style and \
             encryption with S3StoreBuilder or the AWS_ENDPOINT_URL_S3 and SPOTBATCH_S3_* variables"
                .into(),
        );
    }
    let (bucket, rest) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket)?;
    Ok((bucket, rest))
}

/// Checks a bucket name against S3's rules for general purpose buckets.
pub(crate) fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is missing, e.g. s3://my-bucket/checkpoints".into());
    }
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ok_ends || bucket.contains("..") {
        return Err(format!(
            "{bucket:?} is not a valid bucket name (3 to 63 lowercase letters, digits, \
             '.' and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// `""` stays empty; anything else gets exactly one trailing `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().any(char::is_control) {
        return Err("the prefix contains a control character".into());
    }
    if let Some(segment) = trimmed
        .split('/')
        .find(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(format!(
            "the prefix {prefix:?} has an empty, '.' or '..' segment ({segment:?})"
        ));
    }
    let normalized = format!("{trimmed}/");
    if normalized.len() > MAX_PREFIX {
        return Err(format!(
            "the prefix is {} bytes; at most {MAX_PREFIX} fit S3's 1024-byte keys",
            normalized.len()
        ));
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        for (url, bucket, prefix) in [
            ("s3://my-bucket", "my-bucket", ""),
            ("s3://my-bucket/", "my-bucket", ""),
            ("s3://my-bucket/ckpt", "my-bucket", "ckpt/"),
            ("s3://my-bucket/ckpt/", "my-bucket", "ckpt/"),
            ("s3://my.bucket-2/a/b c/é", "my.bucket-2", "a/b c/é/"),
            ("S3://my-bucket/ckpt", "my-bucket", "ckpt/"),
            ("s3://my-bucket/user@example/", "my-bucket", "user@example/"),
        ] {
            assert_eq!(
                parse(url).unwrap(),
                S3Url {
                    bucket: bucket.into(),
                    prefix: prefix.into()
                },
                "{url}"
            );
        }
    }

    #[test]
    fn bad_urls_name_the_url_and_the_reason() {
        let long = format!("s3://bucket/{}", "p/".repeat(450));
        for (url, says) in [
            ("bucket/prefix", "expected s3://bucket"),
            ("s3:/bucket", "expected s3://bucket"),
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://My_Bucket/x", "not a valid bucket name"),
            ("s3://ab", "not a valid bucket name"),
            ("s3://bucket-/x", "not a valid bucket name"),
            ("s3://a..b/x", "not a valid bucket name"),
            ("s3://bucket/a//b", "empty, '.' or '..' segment"),
            ("s3://bucket/../x", "empty, '.' or '..' segment"),
            ("s3://bucket/x?region=eu-west-1", "no query"),
            (long.as_str(), "fit S3's 1024-byte keys"),
            ("s3://AKIA:secret@bucket/x", "no credentials"),
        ] {
            let err = parse(url).expect_err(url).to_string();
            let shown = crate::store::redact_url(url);
            assert!(
                err.contains(&format!("{shown:?}")) && err.contains(says),
                "{url}: {err}"
            );
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }
}
