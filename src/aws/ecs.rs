//! ECS task identity from the task metadata endpoint v4.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::error_chain;
use crate::error::BoxError;

/// The variable ECS sets in every container of a task (platform 1.4+ on
/// Fargate, agent 1.39+ on EC2): the base URL of the task metadata endpoint v4.
pub const ECS_METADATA_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The largest `/task` answer read, in bytes (a task with ten containers
/// answers a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Who this ECS task is, from `${ECS_CONTAINER_METADATA_URI_V4}/task`
/// ("Amazon ECS task metadata endpoint version 4" in AWS's docs).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EcsTask {
    /// The task ARN, e.g. `arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c`.
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    /// The cluster (name or ARN); empty when the answer has none.
    #[serde(default)]
    pub cluster: String,
    /// The task definition family; empty when the answer has none.
    #[serde(default)]
    pub family: String,
    /// The task definition revision, e.g. `"26"`; empty when the answer has none.
    #[serde(default)]
    pub revision: String,
    /// The Availability Zone, e.g. `us-west-2d`; empty when the answer has none.
    #[serde(default)]
    pub availability_zone: String,
    /// `FARGATE` or `EC2`; empty when the answer has none.
    #[serde(default)]
    pub launch_type: String,
}

/// Why the ECS task metadata could not be read. Each variant names the URL asked.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EcsMetadataError {
    /// The endpoint (from [`ECS_METADATA_VAR`] or given) is not an `http://` URL.
    #[error("{url}: not a usable task metadata URL: {source}")]
    Url {
        /// The URL, `{base}/task`.
        url: String,
        /// What is wrong with it.
        source: BoxError,
    },
    /// The request failed: connection refused or reset, a bad HTTP answer.
    #[error("{url}: {}", error_chain(&**.source))]
    Request {
        /// The URL asked.
        url: String,
        /// The HTTP client's error.
        source: BoxError,
    },
    /// No whole answer came within the time allowed.
    #[error("{url}: no answer within {limit:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The time allowed.
        limit: Duration,
    },
    /// The endpoint answered with a status other than 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status, e.g. 500.
        status: u16,
    },
    /// The answer is not the documented JSON (no `TaskARN`, not JSON, over 1 MiB).
    #[error("{url}: unreadable task metadata: {source}")]
    Unreadable {
        /// The URL asked.
        url: String,
        /// Why it could not be read.
        source: BoxError,
    },
}

impl EcsTask {
    /// Reads the task's identity when running on ECS: `Ok(None)` at once,
    /// asking nothing, when [`ECS_METADATA_VAR`] is not set.
    ///
    /// # Errors
    ///
    /// As [`fetch`](Self::fetch), when the variable is set.
    pub async fn from_environment(limit: Duration) -> Result<Option<Self>, EcsMetadataError> {
        let Ok(base) = std::env::var(ECS_METADATA_VAR) else {
            return Ok(None);
        };
        Self::fetch(&base, limit).await.map(Some)
    }

    /// Reads `{base}/task` with one HTTP/1.1 GET, waiting at most `limit` in
    /// all (connect, request, whole answer).
    ///
    /// # Errors
    ///
    /// An [`EcsMetadataError`] naming the URL: not an `http://` URL, no
    /// connection, no answer within `limit`, a non-2xx status, or an answer
    /// that is not the documented JSON.
    pub async fn fetch(base: &str, limit: Duration) -> Result<Self, EcsMetadataError> {
        let url = format!("{}/task", base.trim_end_matches('/'));
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                return Err(EcsMetadataError::Url {
                    url,
                    source: Box::new(e),
                })
            }
        };
        // One GET: keep no idle connection behind.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http::<Empty<Bytes>>();
        let exchange = async {
            let response = client
                .get(uri)
                .await
                .map_err(|e| EcsMetadataError::Request {
                    url: url.clone(),
                    source: Box::new(e),
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|source| {
                    if source.is::<LengthLimitError>() {
                        EcsMetadataError::Unreadable {
                            url: url.clone(),
                            source,
                        }
                    } else {
                        EcsMetadataError::Request {
                            url: url.clone(),
                            source,
                        }
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(limit, exchange).await.map_err(|_| {
            EcsMetadataError::Timeout {
                url: url.clone(),
                limit,
            }
        })??;
        if !status.is_success() {
            return Err(EcsMetadataError::Status {
                url,
                status: status.as_u16(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| EcsMetadataError::Unreadable {
            url,
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_what_is_not_an_http_url_naming_it() {
        for (base, want) in [
            ("not a url", "not a usable task metadata URL"),
            (
                "https://169.254.170.2/v4/x",
                "https://169.254.170.2/v4/x/task: ",
            ),
        ] {
            let err = EcsTask::fetch(base, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(err.to_string().contains(want), "{base}: {err}");
        }
    }
}
