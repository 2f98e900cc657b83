//! The store's private errors, and how they map to [`StoreError`].

use crate::{Refusal, StoreError};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// How an S3 request failed, as far as compare-and-swap cares.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 412 PreconditionFailed: the condition (If-Match / If-None-Match) did not hold.
    Precondition,
    /// 409 ConditionalRequestConflict: a concurrent conditional request; retry after re-reading.
    Busy,
    /// 404 for the object (not for the bucket): absent.
    NotFound,
    /// Anything else: transport, timeouts, throttling, 5xx (which may pass);
    /// access denied, a missing bucket, a request refused as invalid (which
    /// will not: [`S3Error::refusal`]).
    Other(S3Error),
}

/// A failed request, with what was asked of which object.
#[derive(Debug, thiserror::Error)]
pub(crate) enum S3Error {
    /// The request failed (after the SDK's own retries).
    #[error("{request} s3://{bucket}/{object} failed: {detail}")]
    Request {
        request: &'static str,
        bucket: String,
        object: String,
        detail: String,
        /// Why retrying cannot help, if it cannot ([`refusal`]).
        refusal: Option<Refusal>,
    },
    /// The response body could not be read to the end.
    #[error("reading the body of s3://{bucket}/{object} failed: {detail}")]
    Body {
        bucket: String,
        object: String,
        detail: String,
    },
    /// The server answered without an ETag, so If-Match cannot be used.
    #[error("{request} s3://{bucket}/{object}: the server returned no ETag, so conditional writes are impossible")]
    NoEtag {
        request: &'static str,
        bucket: String,
        object: String,
    },
    /// Conditional requests kept colliding (409) or the object kept changing.
    #[error("{request} s3://{bucket}/{object}: gave up after {attempts} attempts: {why}")]
    GaveUp {
        request: &'static str,
        bucket: String,
        object: String,
        attempts: u32,
        why: &'static str,
    },
}

impl S3Error {
    /// As a [`StoreError`]: [`StoreError::Refused`] for an answer that
    /// retrying cannot change ([`refusal`]), [`StoreError::Io`] for the rest.
    pub(crate) fn into_store_error(
        self,
        store: String,
        key: String,
        operation: &'static str,
    ) -> StoreError {
        match self {
            S3Error::Request {
                refusal: Some(cause),
                ..
            } => StoreError::Refused {
                store,
                key,
                operation,
                cause,
                source: Box::new(self),
            },
            _ => StoreError::Io {
                store,
                key,
                operation,
                source: Box::new(self),
            },
        }
    }
}

/// Whether an S3 error answer (HTTP `status`, error `code`) is one that
/// retrying cannot change, and why; `None` for those that may pass: 5xx,
/// throttling (`SlowDown`, 429, 503), timeouts (408 `RequestTimeout`), and
/// credentials that a refresh or a clock sync may mend (`ExpiredToken`,
/// `RequestTimeTooSkewed`).
///
/// The codes are S3's [error responses](https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html#ErrorCodeList):
///
/// | answer | refusal |
/// |---|---|
/// | `NoSuchBucket`, `InvalidBucketName`, `PermanentRedirect` (301: the bucket is in another region), `AuthorizationHeaderMalformed` (a request signed for the wrong region) | [`Location`](Refusal::Location) |
/// | `AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `AllAccessDisabled`, `AccountProblem`, `InvalidToken`, any other 401 or 403 | [`Permission`](Refusal::Permission) |
/// | any other 4xx (`InvalidArgument`, `EntityTooLarge`, `InvalidRequest`…) | [`Rejected`](Refusal::Rejected) |
pub(crate) fn refusal(status: Option<u16>, code: &str) -> Option<Refusal> {
    match code {
        "RequestTimeout"
        | "RequestTimeTooSkewed"
        | "ExpiredToken"
        | "TokenRefreshRequired"
        | "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "InternalError"
        | "ServiceUnavailable" => return None,
        "NoSuchBucket"
        | "InvalidBucketName"
        | "PermanentRedirect"
        | "AuthorizationHeaderMalformed" => return Some(Refusal::Location),
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "AllAccessDisabled"
        | "AccountProblem"
        | "InvalidToken" => return Some(Refusal::Permission),
        _ => {}
    }
    match status? {
        301 => Some(Refusal::Location),
        401 | 403 => Some(Refusal::Permission),
        408 | 429 => None,
        400..=499 => Some(Refusal::Rejected),
        _ => None,
    }
}

/// Sorts an SDK error into the cases compare-and-swap tells apart.
pub(crate) fn classify<E>(
    err: SdkError<E, HttpResponse>,
    request: &'static str,
    bucket: &str,
    object: &str,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or_default();
    match (status, code) {
        (Some(412), _) | (_, "PreconditionFailed") => return Failure::Precondition,
        (Some(409), "ConditionalRequestConflict" | "OperationAborted" | "") => {
            return Failure::Busy
        }
        (Some(404), "NoSuchBucket") => {}
        (Some(404), _) | (_, "NoSuchKey" | "NotFound") => return Failure::NotFound,
        _ => {}
    }
    let detail = match (status, err.code()) {
        (Some(status), Some(code)) => format!(
            "HTTP {status} {code}: {}",
            err.message().unwrap_or("(no message)")
        ),
        (Some(status), None) => format!("HTTP {status}: {}", chain(&err)),
        (None, _) => chain(&err),
    };
    Failure::Other(S3Error::Request {
        request,
        bucket: bucket.to_owned(),
        object: object.to_owned(),
        detail,
        refusal: refusal(status, code),
    })
}

/// An error and its sources, one `: ` apart, e.g. `dispatch failure: io error:
/// … tcp connect error: Connection refused (os error 111)`. (The SDK's own
/// `DisplayErrorContext` appends the whole raw response's `Debug`.)
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    fn service(status: u16, code: &str, message: &str) -> SdkError<PutObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(PutObjectError::generic(meta), raw)
    }

    fn sort(err: SdkError<PutObjectError, HttpResponse>) -> Failure {
        classify(err, "PutObject", "bucket", "ckpt/job.ckpt")
    }

    #[test]
    fn conditional_answers_are_told_apart() {
        assert!(matches!(
            sort(service(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold"
            )),
            Failure::Precondition
        ));
        assert!(matches!(
            sort(service(
                409,
                "ConditionalRequestConflict",
                "A conflicting operation is in progress"
            )),
            Failure::Busy
        ));
        // If-Match on a missing key: 404 on AWS.
        assert!(matches!(
            sort(service(
                404,
                "NoSuchKey",
                "The specified key does not exist."
            )),
            Failure::NotFound
        ));
    }

    #[test]
    fn answers_retrying_cannot_change_are_refusals_and_the_others_are_not() {
        for (status, code, expected) in [
            (404, "NoSuchBucket", Some(Refusal::Location)),
            (301, "PermanentRedirect", Some(Refusal::Location)),
            (400, "AuthorizationHeaderMalformed", Some(Refusal::Location)),
            (403, "AccessDenied", Some(Refusal::Permission)),
            (403, "InvalidAccessKeyId", Some(Refusal::Permission)),
            (403, "SignatureDoesNotMatch", Some(Refusal::Permission)),
            (403, "", Some(Refusal::Permission)),
            (400, "InvalidArgument", Some(Refusal::Rejected)),
            (400, "EntityTooLarge", Some(Refusal::Rejected)),
            (400, "RequestTimeout", None),
            (403, "RequestTimeTooSkewed", None),
            (400, "ExpiredToken", None),
            (408, "", None),
            (429, "", None),
            (500, "InternalError", None),
            (503, "SlowDown", None),
        ] {
            let refused = match sort(service(status, code, "no")) {
                Failure::Other(e) => {
                    let refused =
                        e.into_store_error("s3://bucket/ckpt/".into(), "job".into(), "save");
                    assert_eq!(refused.is_transient(), expected.is_none(), "{refused}");
                    refused.refusal()
                }
                other => panic!("{status} {code}: {other:?}"),
            };
            assert_eq!(refused, expected, "{status} {code}");
        }
        // No answer at all: the network, which may come back.
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        match sort(SdkError::dispatch_failure(ConnectorError::io(
            refused.into(),
        ))) {
            Failure::Other(e) => assert!(matches!(e, S3Error::Request { refusal: None, .. })),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn everything_else_is_an_error_for_people() {
        for (status, code, says) in [
            (404, "NoSuchBucket", "HTTP 404 NoSuchBucket: no bucket"),
            (403, "AccessDenied", "HTTP 403 AccessDenied: no bucket"),
            (503, "SlowDown", "HTTP 503 SlowDown: no bucket"),
        ] {
            match sort(service(status, code, "no bucket")) {
                Failure::Other(e) => {
                    let text = e.to_string();
                    assert_eq!(
                        text,
                        format!("PutObject s3://bucket/ckpt/job.ckpt failed: {says}")
                    );
                }
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let dispatch = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        match sort(dispatch) {
            Failure::Other(e) => assert!(e.to_string().contains("connection refused"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
