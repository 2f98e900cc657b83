//! The errors of the S3 sink and source: each names the object or prefix
//! (`s3://bucket/key`) and what went wrong with it.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::s3::error::{classify, Failure, S3Error};

/// Why a [`MultipartSink`](crate::s3::MultipartSink) or a
/// [`ListingSource`](crate::s3::ListingSource) failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A request failed after the SDK's retries: transport, timeouts,
    /// throttling, 5xx, access denied, a missing bucket. The message names
    /// the request, the object and the server's answer.
    #[error(transparent)]
    Request(Box<dyn std::error::Error + Send + Sync>),

    /// The output object exists already and the sink may not overwrite it
    /// (see [`MultipartSink::overwrite`](crate::s3::MultipartSink::overwrite)),
    /// or another writer created it while the upload was under way.
    #[error("{url} already exists: the output is written only where no object is (delete it, or allow overwriting)")]
    AlreadyExists {
        /// The output, `s3://bucket/key`.
        url: String,
    },

    /// The multipart upload a checkpoint names no longer exists and did not
    /// become the output object: it was aborted (by hand, or by a bucket
    /// lifecycle rule `AbortIncompleteMultipartUpload`), or completed by
    /// someone else. The output it held is lost; restart the job.
    #[error("the multipart upload {upload_id} of {url} in the checkpoint is gone (aborted, or expired by a lifecycle rule), and {url} is not its completed output: the output the checkpoint covers is lost; restart the job")]
    UploadGone {
        /// The output, `s3://bucket/key`.
        url: String,
        /// The upload's id.
        upload_id: String,
    },

    /// A staged piece of output the checkpoint covers is missing or shorter
    /// than the checkpoint says.
    #[error("{url}: {reason}: the output the checkpoint covers is lost; restart the job")]
    StagingLost {
        /// The staging object, `s3://bucket/key`.
        url: String,
        /// What was found.
        reason: String,
    },

    /// The sink's state in the checkpoint does not fit the sink: parts out
    /// of order, a part size S3 refuses, pieces that do not follow each
    /// other. The checkpoint was not written by this sink, or was edited.
    #[error("the multipart state in the checkpoint does not fit {url}: {reason}")]
    BadState {
        /// The output, `s3://bucket/key`.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// The output would need more than S3's 10,000 parts; use larger parts.
    #[error(
        "{url} would need more than 10,000 parts of {part_size} bytes: set a larger part size"
    )]
    TooLarge {
        /// The output, `s3://bucket/key`.
        url: String,
        /// The part size, in bytes.
        part_size: u64,
    },

    /// The sink was written to before [`resume`](crate::s3::MultipartSink::resume).
    #[error("{url}: MultipartSink::resume must be called (in Job::resume) before the sink is written to")]
    NotResumed {
        /// The output, `s3://bucket/key`.
        url: String,
    },

    /// A listed key could not be decoded: the server's URL encoding of it
    /// (`encoding-type=url`) was malformed or not UTF-8.
    #[error(
        "listing {url}: the key {encoded:?} as the server encoded it cannot be decoded: {reason}"
    )]
    BadKey {
        /// The listing, `s3://bucket/prefix`.
        url: String,
        /// The key as the server sent it.
        encoded: String,
        /// What is wrong.
        reason: String,
    },
}

/// What an SDK error means to the sink and source.
pub(crate) enum Refusal {
    /// 412: a condition did not hold.
    Precondition,
    /// 404: the object or upload is missing.
    NotFound,
    /// Anything else, as an error for people.
    Failed(ObjectError),
}

/// Sorts an SDK error: the cases the sink tells apart, or an [`ObjectError::Request`].
pub(crate) fn refusal<E>(
    err: SdkError<E, HttpResponse>,
    request: &'static str,
    bucket: &str,
    object: &str,
) -> Refusal
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match classify(err, request, bucket, object) {
        Failure::Precondition => Refusal::Precondition,
        Failure::NotFound => Refusal::NotFound,
        // 409 ConditionalRequestConflict: for the sink, a failure like any other.
        Failure::Busy => Refusal::Failed(ObjectError::Request(Box::new(S3Error::Request {
            request,
            bucket: bucket.to_owned(),
            object: object.to_owned(),
            detail: "HTTP 409: a conflicting request on the same key was in progress".into(),
            refusal: None,
        }))),
        Failure::Other(e) => Refusal::Failed(ObjectError::Request(Box::new(e))),
    }
}

/// An SDK error as an [`ObjectError`], whatever it was.
pub(crate) fn failed<E>(
    err: SdkError<E, HttpResponse>,
    request: &'static str,
    bucket: &str,
    object: &str,
) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    match refusal(err, request, bucket, object) {
        Refusal::Failed(e) => e,
        Refusal::Precondition | Refusal::NotFound => {
            ObjectError::Request(Box::new(S3Error::Request {
                request,
                bucket: bucket.to_owned(),
                object: object.to_owned(),
                detail: match (status, code) {
                    (Some(status), Some(code)) => format!("HTTP {status} {code}"),
                    (Some(status), None) => format!("HTTP {status}"),
                    (None, code) => code.unwrap_or_else(|| "refused".into()),
                },
                refusal: None,
            }))
        }
    }
}

/// A body that could not be read to the end.
pub(crate) fn body_failed(err: impl std::fmt::Display, bucket: &str, object: &str) -> ObjectError {
    ObjectError::Request(Box::new(S3Error::Body {
        bucket: bucket.to_owned(),
        object: object.to_owned(),
        detail: err.to_string(),
    }))
}

/// A request that failed in a way the sink does not expect (`detail` says how).
pub(crate) fn request_failed(
    request: &'static str,
    bucket: &str,
    object: &str,
    detail: impl Into<String>,
) -> ObjectError {
    ObjectError::Request(Box::new(S3Error::Request {
        request,
        bucket: bucket.to_owned(),
        object: object.to_owned(),
        detail: detail.into(),
        refusal: None,
    }))
}
