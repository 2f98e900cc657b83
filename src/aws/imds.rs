//! EC2 Spot interruption notices from instance metadata (IMDSv2).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::http::{request, Endpoint};
use crate::shutdown::{InterruptSource, StopSource};

const TOKEN_TTL: &str = "21600";

/// Polls EC2 instance metadata for a Spot interruption notice (and, if asked,
/// a rebalance recommendation), and stops the run like SIGTERM when one appears.
///
/// For ECS on EC2 and plain EC2. It follows IMDSv2 as AWS documents it
/// ("Use instance metadata to manage your EC2 instance" and "Spot Instance
/// interruption notices"): `PUT /latest/api/token` with
/// `X-aws-ec2-metadata-token-ttl-seconds`, then
/// `GET /latest/meta-data/spot/instance-action` with `X-aws-ec2-metadata-token`:
/// 404 while nothing is scheduled, 200 with `{"action": "terminate", "time": "…"}`
/// once it is, 401 when the token expired (a new one is fetched). The
/// rebalance recommendation is `GET /latest/meta-data/events/recommendations/rebalance`
/// (`{"noticeTime": "…"}`).
///
/// Where no metadata service answers (not on EC2, or on Fargate, which has no
/// Spot metadata: its notice *is* SIGTERM), the poller logs one line and stops.
///
/// ```no_run
/// # use spotbatch::prelude::*;
/// # fn f<J: Job>(runner: Runner<J>) -> Runner<J> {
/// runner.stop_source(spotbatch::Ec2SpotNotices::new().rebalance(true))
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Ec2SpotNotices {
    endpoint: String,
    interval: Duration,
    timeout: Duration,
    rebalance: bool,
    fired: bool,
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

enum Poll {
    Notice(InterruptSource),
    Nothing,
    TokenExpired,
}

impl Ec2SpotNotices {
    /// The IPv4 instance metadata address.
    pub const DEFAULT_ENDPOINT: &'static str = "http://169.254.169.254";

    /// Polls every 5 s with 1 s timeouts, at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
    /// if set (as the AWS SDKs do; e.g. `http://[fd00:ec2::254]` for IPv6),
    /// else at [`DEFAULT_ENDPOINT`](Self::DEFAULT_ENDPOINT).
    pub fn new() -> Self {
        Self {
            endpoint: std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|_| Self::DEFAULT_ENDPOINT.to_owned()),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rebalance: false,
            fired: false,
        }
    }

    /// The metadata service's base URL, e.g. `http://127.0.0.1:8080` in tests.
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// How often to ask (default 5 s; the notice comes two minutes ahead).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long one request may take (default 1 s).
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

    async fn token(&self, endpoint: &Endpoint) -> Result<String, String> {
        let response = request(
            endpoint,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)],
            self.timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!("token request answered {}", response.status));
        }
        Ok(String::from_utf8_lossy(&response.body).trim().to_owned())
    }

    async fn poll(&self, endpoint: &Endpoint, token: &str) -> Result<Poll, String> {
        let get = |path: &'static str| async move {
            request(
                endpoint,
                "GET",
                path,
                &[("X-aws-ec2-metadata-token", token)],
                self.timeout,
            )
            .await
            .map_err(|e| e.to_string())
        };
        let action = get("/latest/meta-data/spot/instance-action").await?;
        match action.status {
            200 => {
                let a: InstanceAction = serde_json::from_slice(&action.body)
                    .map_err(|e| format!("unreadable instance-action: {e}"))?;
                return Ok(Poll::Notice(InterruptSource::Notice {
                    from: "EC2 spot".into(),
                    detail: format!("{} at {}", a.action, a.time),
                }));
            }
            401 => return Ok(Poll::TokenExpired),
            404 => {}
            other => return Err(format!("instance-action answered {other}")),
        }
        if self.rebalance {
            let rebalance = get("/latest/meta-data/events/recommendations/rebalance").await?;
            match rebalance.status {
                200 => {
                    let r: Rebalance = serde_json::from_slice(&rebalance.body)
                        .map_err(|e| format!("unreadable rebalance recommendation: {e}"))?;
                    return Ok(Poll::Notice(InterruptSource::Notice {
                        from: "EC2 rebalance recommendation".into(),
                        detail: format!("issued at {}", r.notice_time),
                    }));
                }
                401 => return Ok(Poll::TokenExpired),
                404 => {}
                other => return Err(format!("rebalance recommendation answered {other}")),
            }
        }
        Ok(Poll::Nothing)
    }
}

#[async_trait]
impl StopSource for Ec2SpotNotices {
    async fn next(&mut self) -> Option<InterruptSource> {
        if self.fired {
            return None;
        }
        let endpoint = match Endpoint::parse(&self.endpoint) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                warn!(error = %e, "bad instance metadata endpoint: not polling for Spot notices");
                return None;
            }
        };
        let mut token = match self.token(&endpoint).await {
            Ok(token) => token,
            Err(e) => {
                info!(endpoint = %self.endpoint, error = %e, "no EC2 instance metadata service: not polling for Spot notices");
                return None;
            }
        };
        debug!(endpoint = %self.endpoint, interval = ?self.interval, "polling for EC2 Spot notices");
        loop {
            match self.poll(&endpoint, &token).await {
                Ok(Poll::Notice(notice)) => {
                    self.fired = true;
                    return Some(notice);
                }
                Ok(Poll::TokenExpired) => match self.token(&endpoint).await {
                    Ok(fresh) => {
                        token = fresh;
                        continue;
                    }
                    Err(e) => warn!(error = %e, "instance metadata token refresh failed"),
                },
                Ok(Poll::Nothing) => {}
                Err(e) => warn!(error = %e, "instance metadata poll failed"),
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
