//! EC2 Spot interruption notices from instance metadata (IMDSv2), through the
//! AWS SDK's IMDS client.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::imds::client::error::ImdsError;
use aws_config::imds::client::{Builder, ImdsResponseRetryClassifier};
use aws_config::imds::Client;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, SharedRetryClassifier,
};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::error_chain;
use crate::shutdown::{InterruptSource, StopRequest, StopSource};

const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// Polls EC2 instance metadata for a Spot interruption notice (and, if asked,
/// a rebalance recommendation), and stops the run like SIGTERM when one appears.
///
/// The notice's `time` ("the approximate time, in UTC, when the instance
/// will be stopped or terminated") is the stop's deadline
/// ([`StopRequest::time_left`]): the drain ends a checkpoint reserve before
/// it, or before the end of the grace period if that comes first. A
/// rebalance recommendation sets no deadline.
///
/// For ECS on EC2 and plain EC2. It asks through the AWS SDK's IMDSv2 client
/// ([`aws_config::imds::Client`](https://docs.rs/aws-config/latest/aws_config/imds/client/struct.Client.html)), which follows IMDSv2 as AWS documents it
/// ("Use instance metadata to manage your EC2 instance" and "Spot Instance
/// interruption notices"): a session token from `PUT /latest/api/token`
/// (six hours, cached and renewed two minutes before it expires), then
/// `GET /latest/meta-data/spot/instance-action`: 404 while nothing is
/// scheduled, 200 with `{"action": "terminate", "time": "…"}` once it is. The
/// SDK retries a 5xx answer (up to 4 attempts, with backoff). A 401 (the token
/// is no longer valid) is answered here: the poller starts a new client,
/// hence a new token, and asks again at once. The rebalance recommendation is
/// `GET /latest/meta-data/events/recommendations/rebalance` (`{"noticeTime": "…"}`).
///
/// Where no metadata service answers the first question (not on EC2, or on
/// Fargate, which has no Spot metadata: its notice *is* SIGTERM), the poller
/// logs one line and stops. The runner polls on a task of its own: start-up
/// is not delayed.
///
/// ```no_run
/// # use spotbatch::prelude::*;
/// # fn f<J: Job>(runner: Runner<J>) -> Runner<J> {
/// runner.stop_source(spotbatch::aws::Ec2SpotNotices::new().rebalance(true))
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Ec2SpotNotices {
    endpoint: Option<String>,
    interval: Duration,
    timeout: Duration,
    rebalance: bool,
    /// Gave its notice, or found no metadata service: nothing more to say.
    finished: bool,
}

impl Default for Ec2SpotNotices {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

#[derive(Deserialize)]
struct Rebalance {
    #[serde(rename = "noticeTime")]
    notice_time: String,
}

/// Why one poll failed.
enum PollError {
    /// The metadata service could not be asked, or answered an error status.
    Ask {
        path: &'static str,
        error: Box<ImdsError>,
    },
    /// It answered 200 with something else than the documented JSON.
    Unreadable {
        path: &'static str,
        error: serde_json::Error,
    },
}

impl PollError {
    /// Whether the metadata service answered at all (an HTTP status), as
    /// opposed to no connection, no answer in time or no token.
    fn answered(&self) -> bool {
        match self {
            PollError::Ask { error, .. } => matches!(**error, ImdsError::ErrorResponse(_)),
            PollError::Unreadable { .. } => true,
        }
    }
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Ask { path, error } => match &**error {
                ImdsError::ErrorResponse(response) => write!(
                    f,
                    "{path} answered HTTP {}",
                    response.response().status().as_u16()
                ),
                error => write!(f, "{path}: {}", error_chain(error)),
            },
            PollError::Unreadable { path, error } => write!(f, "{path}: unreadable: {error}"),
        }
    }
}

impl Ec2SpotNotices {
    /// Polls every 5 s, each connection and each read limited to 1 s.
    ///
    /// The metadata service's address is found as the AWS SDKs find it:
    /// [`endpoint`](Self::endpoint) if given, else
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` (e.g. `http://[fd00:ec2::254]` for
    /// IPv6), else `ec2_metadata_service_endpoint` in the `~/.aws/config`
    /// profile, else `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` (or the
    /// profile's `ec2_metadata_service_endpoint_mode`), else `http://169.254.169.254`.
    pub fn new() -> Self {
        Self {
            endpoint: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rebalance: false,
            finished: false,
        }
    }

    /// The metadata service's base URL, e.g. `http://127.0.0.1:8080` in
    /// tests, instead of the one found as [`new`](Self::new) says. A URL that
    /// does not parse is logged as a warning when polling starts, and nothing
    /// is polled.
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// How often to ask (default 5 s; the notice comes two minutes ahead).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long connecting, and then each read, may take (default 1 s, the
    /// SDK's default). A metadata service that does not answer the first
    /// request within it counts as none.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also stop on a rebalance recommendation (an elevated risk of
    /// interruption, often well before the notice). Default off.
    #[must_use]
    pub fn rebalance(mut self, on: bool) -> Self {
        self.rebalance = on;
        self
    }

    fn builder(&self) -> Result<Builder, String> {
        let builder = Client::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .retry_classifier(SharedRetryClassifier::new(NewTokenOn401::default()));
        match &self.endpoint {
            None => Ok(builder),
            Some(url) => builder
                .endpoint(url)
                .map_err(|e| format!("{url:?}: {}", error_chain(&*e))),
        }
    }

    async fn poll(&self, imds: &mut Imds) -> Result<Option<StopRequest>, PollError> {
        if let Some(text) = imds.get(INSTANCE_ACTION).await? {
            let a: InstanceAction =
                serde_json::from_str(&text).map_err(|error| PollError::Unreadable {
                    path: INSTANCE_ACTION,
                    error,
                })?;
            let request = StopRequest::new(InterruptSource::Notice {
                from: "EC2 spot".into(),
                detail: format!("{} at {}", a.action, a.time),
            });
            return Ok(Some(match time_left(&a.time, SystemTime::now()) {
                Some(left) => request.time_left(left),
                None => {
                    warn!(time = %a.time, "the Spot notice's time is not an RFC 3339 UTC time: the grace period applies");
                    request
                }
            }));
        }
        if self.rebalance {
            if let Some(text) = imds.get(REBALANCE).await? {
                let r: Rebalance =
                    serde_json::from_str(&text).map_err(|error| PollError::Unreadable {
                        path: REBALANCE,
                        error,
                    })?;
                // A recommendation sets no time: the grace period applies.
                return Ok(Some(StopRequest::new(InterruptSource::Notice {
                    from: "EC2 rebalance recommendation".into(),
                    detail: format!("issued at {}", r.notice_time),
                })));
            }
        }
        Ok(None)
    }
}

/// The IMDS client in use, and its configured builder to start a new one.
struct Imds {
    builder: Builder,
    client: Client,
}

impl Imds {
    fn new(builder: Builder) -> Self {
        Self {
            client: builder.clone().build(),
            builder,
        }
    }

    /// Asks for `path`: `Ok(None)` for a 404 (nothing there). A 401 is asked
    /// again once, at once, with a new client (a new token).
    async fn get(&mut self, path: &'static str) -> Result<Option<String>, PollError> {
        let mut renewed = false;
        loop {
            let error = match self.client.get(path).await {
                Ok(text) => return Ok(Some(text.into())),
                Err(error) => error,
            };
            let status = match &error {
                ImdsError::ErrorResponse(r) => Some(r.response().status().as_u16()),
                _ => None,
            };
            match status {
                Some(404) => return Ok(None),
                Some(401) if !renewed => {
                    debug!(
                        path,
                        "instance metadata answered 401: asking again with a new token"
                    );
                    self.client = self.builder.clone().build();
                    renewed = true;
                }
                _ => {
                    return Err(PollError::Ask {
                        path,
                        error: Box::new(error),
                    })
                }
            }
        }
    }
}

#[async_trait]
impl StopSource for Ec2SpotNotices {
    async fn next(&mut self) -> Option<StopRequest> {
        if self.finished {
            return None;
        }
        let endpoint = self
            .endpoint
            .as_deref()
            .unwrap_or("the AWS SDK's default")
            .to_owned();
        let mut imds = match self.builder() {
            Ok(builder) => Imds::new(builder),
            Err(e) => {
                warn!(error = %e, "bad instance metadata endpoint: not polling for Spot notices");
                self.finished = true;
                return None;
            }
        };
        let mut answered = false;
        loop {
            match self.poll(&mut imds).await {
                Ok(Some(notice)) => {
                    self.finished = true;
                    return Some(notice);
                }
                Ok(None) => {
                    if !answered {
                        debug!(%endpoint, interval = ?self.interval, "polling for EC2 Spot notices");
                    }
                    answered = true;
                }
                Err(e) if !answered && !e.answered() => {
                    info!(%endpoint, error = %e, "no EC2 instance metadata service: not polling for Spot notices");
                    self.finished = true;
                    return None;
                }
                Err(e) => {
                    answered = true;
                    warn!(error = %e, "instance metadata poll failed");
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// From `now` until `time`, a notice's RFC 3339 UTC time (`2015-01-05T18:02:00Z`):
/// zero when it has passed; `None` when it is not such a time.
fn time_left(time: &str, now: SystemTime) -> Option<Duration> {
    let at =
        aws_smithy_types::DateTime::from_str(time, aws_smithy_types::date_time::Format::DateTime)
            .ok()?;
    let at = SystemTime::try_from(at).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The SDK's IMDS retry rules ([`ImdsResponseRetryClassifier`]: a 5xx is
/// retried with backoff, a connection failure or timeout is not), except for
/// a 401: the SDK would retry it with the same cached token, which the
/// service has just refused, so it comes back at once and
/// [`Ec2SpotNotices`] asks again with a new client, hence a new token.
#[derive(Debug, Default)]
struct NewTokenOn401(ImdsResponseRetryClassifier);

impl ClassifyRetry for NewTokenOn401 {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response() {
            Some(response) if response.status().as_u16() == 401 => RetryAction::RetryForbidden,
            _ => self.0.classify_retry(ctx),
        }
    }

    fn name(&self) -> &'static str {
        "IMDS, 401 answered with a new token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_time_is_the_time_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_480_800); // 2015-01-05T18:00:00Z
        assert_eq!(
            time_left("2015-01-05T18:02:00Z", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(time_left("2015-01-05T17:59:00Z", now), Some(Duration::ZERO));
        assert_eq!(time_left("tomorrow", now), None);
    }
}
